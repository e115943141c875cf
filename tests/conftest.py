import os
import struct
import zlib

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from PIL import Image

from helpers.folders import SPLITS


def write_pair(root, split, index, size=(40, 30), seed=None):
    """Write ISIC_<index> image (JPEG) and mask (0/255 PNG) of size (w, h) into split's folders."""
    rng = np.random.default_rng(index if seed is None else seed)
    w, h = size
    img_dir, mask_dir = (root / name for name in SPLITS[split])
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.15, 0.35) * min(w, h)
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2).astype(np.uint8) * 255
    img = np.full((h, w, 3), (220, 170, 150), np.uint8)
    img[mask > 0] = (90, 50, 30)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    ident = f"ISIC_{index:07d}"
    Image.fromarray(img).save(img_dir / f"{ident}.jpg", quality=92)
    Image.fromarray(mask).save(mask_dir / f"{ident}_Segmentation.png")
    return img_dir / f"{ident}.jpg", mask_dir / f"{ident}_Segmentation.png"


def png_claiming(width, height):
    """A small PNG file whose header claims width x height 8-bit grey pixels (a decompression-bomb size
    costs nothing to write); its image data is one row of zeros, which Pillow reads as a black image."""
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


@pytest.fixture
def tiny_isic(tmp_path):
    """An ISIC 2016 layout with 6 train and 4 test images of varied sizes."""
    root = tmp_path / "isic"
    for i in range(6):
        write_pair(root, "train", i, size=(40 + 4 * i, 30 + 2 * i))
    for i in range(6, 10):
        write_pair(root, "test", i, size=(48, 36))
    return root


@pytest.fixture
def train_only(tmp_path):
    """A folder with the ISIC training split only (10 images), like a clinic's own set."""
    root = tmp_path / "clinic"
    for i in range(10):
        write_pair(root, "train", i, size=(40, 30))
    return root
