"""Pictures for a person reviewing a model's output: each image with its lesion outlines, and a
contact sheet of the worst images.

The outlines use the colours of the notebooks' prediction figures: the prediction magenta and, when
there is a ground truth, the true outline green (drawn first, so where the two coincide the
prediction shows). An outline is the band of pixels within a few pixels of the mask's border, about
0.4% of the image's shorter side on each side (3 pixels at least).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .images import read_image
from .io import atomic_path

TRUE_RGB, PRED_RGB = (0, 224, 0), (255, 0, 255)  # plots.TRUE_COLOUR, plots.PRED_COLOUR
OVERLAY_SUFFIX = "_overlay.jpg"
SHEET_NAME = "worst.jpg"
JPEG_QUALITY = 90


def outline(mask: np.ndarray) -> np.ndarray:
    """bool H x W -> bool H x W: the pixels near the mask's border (empty for an empty or full mask)."""
    h, w = mask.shape
    size = max(3, int(round(min(h, w) * 0.004)) * 2 + 1)  # odd, as PIL's rank filters need
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(size)))
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(size)))
    return grown != shrunk


def overlay(image: Image.Image, pred: np.ndarray, truth: np.ndarray | None = None) -> Image.Image:
    """The RGB image with the true (green) and predicted (magenta) outlines painted over it."""
    arr = np.array(image.convert("RGB"))
    for mask, colour in ((truth, TRUE_RGB), (pred, PRED_RGB)):
        if mask is not None:
            arr[outline(mask)] = colour
    return Image.fromarray(arr)


def write_overlay(path: Path, image: Image.Image, pred: np.ndarray, truth: np.ndarray | None = None) -> Path:
    with atomic_path(path) as tmp:
        overlay(image, pred, truth).save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: thin lines keep their colour
    return path


def contact_sheet(path: Path, tiles: list[tuple[Path, str]], columns: int = 4, tile: int = 256,
                  title: str = "") -> Path:
    """One JPEG of the given overlay files, each scaled to fit ``tile`` x ``tile`` with its caption
    under it, ``columns`` to a row, under a title line."""
    font = ImageFont.load_default()
    line = 14
    rows = -(-len(tiles) // columns)
    head = line + 8 if title else 0
    sheet = Image.new("RGB", (columns * tile, head + rows * (tile + line + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    for n, (file, caption) in enumerate(tiles):
        img = read_image(file)[0]  # an overlay this module wrote
        img.thumbnail((tile, tile))
        x, y = (n % columns) * tile, head + (n // columns) * (tile + line + 6)
        sheet.paste(img, (x + (tile - img.width) // 2, y + (tile - img.height) // 2))
        draw.text((x + 4, y + tile + 2), caption, fill="black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return path
