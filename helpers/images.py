"""Reading one image or mask file: a pixel limit, every common mode, the stored pixels, one named error.

Every reader of the project (``helpers.tools.data check``, the cache, evaluate, the main job) opens files
through :func:`open_image`. A file is read correctly, with a note when it had to be converted, or it
is refused with a :class:`~helpers.errors.DataError` that names it and says why:

- more pixels than ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS` unless raised): refused from the header
  alone, before anything is decoded. This replaces Pillow's own decompression-bomb guard, which would
  warn above 89.5 million pixels and fail with a traceback above twice that;
- not an image, truncated, or failing to decode: refused;
- images: RGB as it is; grey, 1-bit, palette (with transparency too), grey or RGB with alpha, CMYK,
  YCbCr, LAB and HSV converted to RGB; 16-bit grey scaled to 8 bits (value x 255 / 65535, never
  clipped); 32-bit float refused;
- masks: see :func:`read_mask`;
- EXIF orientation is never applied: the stored pixels are read, the array ISIC's masks were drawn
  on and that the ISIC scorer reads. A file whose Orientation tag is not 1 gets a note.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from .errors import DataError

# The largest dermoscopy photographs in the ISIC archive are about 30 million pixels (6700 x 4400;
# ISIC 2016's are at most 4288 x 2848, 12 million). 100 million leaves three times that and keeps one
# decoded RGB image near 300 MB, so reading on every core stays within a few GB.
DEFAULT_MAX_PIXELS = 100_000_000
MASK_THRESHOLD = 128  # 8-bit masks: value > 128 is lesion, as the ISIC scorer reads them
GREY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey (and 32-bit integer holding 16-bit values)

# Two things Pillow keeps process-wide: its own pixel guard (Image.MAX_IMAGE_PIXELS, which warns above
# 89.5 million pixels and fails above twice that) and the warnings it gives about damaged metadata,
# which would not name the file. Both are taken over only while this module reads a header or the
# EXIF block (or decodes an image the guard would stop, or one of another format than the ISIC
# layout's, whose decoders may warn too), under one lock, and given back at once:
# max_pixels replaces the guard for these reads alone, and the warnings become notes naming the file.
_PILLOW = threading.Lock()
PARALLEL_FORMATS = ("JPEG", "MPO", "PNG")  # decoded outside the lock: Pillow warns about nothing while decoding them


@contextlib.contextmanager
def _pillow_section(path: Path, notes: list[str]):
    """Yield Pillow's own pixel limit, with that limit lifted and its warnings recorded as notes."""
    with _PILLOW, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    notes += [f"{path.name}: {' '.join(str(w.message).split())}" for w in caught if issubclass(w.category, UserWarning)]
    for w in caught:  # others are not Pillow's: give them back
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    """Raise DataError naming ``path`` when an image of ``size`` (width, height) exceeds ``max_pixels``."""
    width, height = size
    if width * height > max_pixels:
        raise DataError(f"{path}: image is {width}x{height} ({width * height / 1e6:.1f} million pixels), above the "
                        f"limit of {max_pixels / 1e6:g} million (a guard against decompression bombs); pass "
                        f"--max-pixels {width * height} to read it")


def _unreadable(path: Path, exc: Exception) -> DataError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(f"{path}: unreadable or truncated image file ({reason})")


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """The decoded image of ``path`` (any mode, its file closed) and notes naming it: an EXIF
    orientation not applied, Pillow's warnings. DataError naming the file when it cannot be read."""
    path, notes = Path(path), []
    try:
        with _pillow_section(path, notes) as pillow_limit:
            img = Image.open(path)  # reads the header only
    except Exception as exc:  # Pillow's format plugins raise many types for a damaged file
        raise _unreadable(path, exc) from exc
    with img:
        check_pixels(path, img.size, max_pixels)
        guarded = pillow_limit is not None and img.width * img.height > pillow_limit
        alone = guarded or img.format not in PARALLEL_FORMATS
        try:
            with _pillow_section(path, notes) if alone else contextlib.nullcontext():
                img.load()  # decode now, so a truncated file fails here and not later
        except Exception as exc:
            raise _unreadable(path, exc) from exc
    try:
        with _pillow_section(path, notes):
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block does not hide the pixels, which are read as stored anyway
        orientation = 1
    if orientation not in (1, None):
        notes.append(f"{path.name}: EXIF orientation {orientation} not applied (the stored pixels are read, as "
                     "ISIC's masks and its scorer use them)")
    return img, notes


def _grey_levels(path: Path, img: Image.Image) -> np.ndarray:
    """The values of a 16-bit (or 32-bit integer) grey image as int64; DataError outside 0-65535."""
    arr = np.asarray(img).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{path}: {img.mode} image with values {arr.min()} to {arr.max()}, outside the 16-bit "
                        "range 0-65535: save it as an 8-bit or 16-bit image")
    return arr


def _to_8bit(levels: np.ndarray) -> np.ndarray:
    """16-bit levels 0-65535 -> 8-bit 0-255, rounded (65535 -> 255, 32768 -> 128)."""
    return ((levels * 255 + 32767) // 65535).astype(np.uint8)


def _mode_name(img: Image.Image) -> str:
    return "1-bit" if img.mode == "1" else img.mode


def _refuse_float(path: Path, img: Image.Image) -> None:
    if img.mode == "F":
        raise DataError(f"{path}: 32-bit floating-point image: save it as an 8-bit or 16-bit image")


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """RGB image and notes about what was converted (see the module docstring)."""
    path = Path(path)
    img, notes = open_image(path, max_pixels)
    if img.mode == "RGB":
        return img, notes
    _refuse_float(path, img)
    if img.mode in GREY16:
        notes.append(f"{path.name}: 16-bit {img.mode} image scaled to 8 bits and converted to RGB")
        return Image.fromarray(_to_8bit(_grey_levels(path, img))).convert("RGB"), notes
    rgb, detail = _as_rgb(path, img)
    notes.append(f"{path.name}: {_mode_name(img)} image converted to RGB{detail}")
    return rgb, notes


def _as_rgb(path: Path, img: Image.Image) -> tuple[Image.Image, str]:
    """An 8-bit image of any other mode as RGB, and what was lost: " (alpha dropped)" or the like."""
    alpha = "A" in img.mode or "transparency" in img.info
    try:  # a palette with transparency goes through RGBA, as Pillow asks
        rgb = (img.convert("RGBA") if img.mode == "P" and alpha else img).convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: {img.mode} image cannot be converted to RGB ({exc})") from exc
    return rgb, " (alpha dropped)" if alpha else " (no colour profile applied)" if img.mode == "CMYK" else ""


def read_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str], bool]:
    """Binary mask (bool H x W), notes, and whether it was not strictly 0/255 (nor 0/1).

    Lesion is value > 128 (the ISIC scorer's rule), except in a 0/1 mask (largest value 1), where it
    is value 1, and in a palette mask, where it is any non-zero palette index whatever its colour. A
    16-bit mask whose values are at most 255 is read as 8-bit levels; one with larger values is
    scaled to 8 bits first. Other modes (RGB, with alpha, CMYK) are converted to grayscale.
    """
    path = Path(path)
    img, notes = open_image(path, max_pixels)
    _refuse_float(path, img)
    if img.mode in ("P", "PA"):
        notes.append(f"{path.name}: palette mask read by index (non-zero index is lesion)")
        index = np.asarray(img)
        return (index[..., 0] if index.ndim == 3 else index) > 0, notes, False
    if img.mode in GREY16:
        arr = _grey_levels(path, img)
        wide = arr.size and arr.max() > 255
        notes.append(f"{path.name}: 16-bit {img.mode} mask " + ("scaled to 8 bits" if wide else "of 8-bit values"))
        arr = _to_8bit(arr) if wide else arr.astype(np.uint8)
    elif img.mode in ("L", "1"):
        arr = np.asarray(img.convert("L"))
    else:  # through RGB, which every mode Pillow reads converts to
        notes.append(f"{path.name}: {_mode_name(img)} mask converted to grayscale")
        arr = np.asarray(_as_rgb(path, img)[0].convert("L"))
    if arr.size and arr.max() == 1:  # 0/1 mask: "> 128" would read it as all background
        return arr > 0, notes, False
    non_binary = bool(np.any((arr != 0) & (arr != 255)))
    return arr > MASK_THRESHOLD, notes, non_binary
