"""helpers.images, the one place every reader opens files: the pixel limit, odd modes, the stored pixels."""

import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from helpers import folders, images
from helpers.errors import DataError
from helpers.folders import SPLITS, Sample

from conftest import png_claiming


def _read(reader, path, **kwargs):
    """reader(path) with every warning from Pillow or the readers turned into a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)  # Pillow's DecompressionBombWarning is one
        return reader(path, **kwargs)


def test_a_decompression_bomb_size_is_refused_by_name_from_its_header(tmp_path):
    path = tmp_path / "ISIC_0000001.png"
    path.write_bytes(png_claiming(20000, 13000))  # 260 million pixels: Pillow itself would raise DecompressionBombError
    for reader in (images.read_image, images.read_mask):
        with pytest.raises(DataError) as err:
            _read(reader, path)
        assert str(err.value) == (f"{path}: image is 20000x13000 (260.0 million pixels), above the limit of 100 "
                                  "million (a guard against decompression bombs); pass --max-pixels 260000000 to read it")
    path.write_bytes(png_claiming(3000, 2000))
    with pytest.raises(DataError, match="pass --max-pixels 6000000 to read it"):
        _read(images.read_mask, path, max_pixels=5_999_999)
    lesion, notes, _ = _read(images.read_mask, path, max_pixels=6_000_000)  # the limit raised: it is read
    assert lesion.shape == (2000, 3000) and not lesion.any() and notes == []


def test_pillows_own_guard_is_replaced_for_these_reads_only_and_given_back(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow: a warning above 500 pixels, an error above 1000
    warn, fail = tmp_path / "warn.png", tmp_path / "fail.jpg"
    Image.new("RGB", (30, 20), (10, 20, 30)).save(warn)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(fail)
    for path in (warn, fail):
        img, notes = _read(images.read_image, path)
        assert np.asarray(img).shape[:2] == img.size[::-1] and notes == []
    with pytest.raises(DataError, match=r"fail.jpg: image is 40x30 \(0.0 million pixels\), above the limit of 0.001"):
        _read(images.read_image, fail, max_pixels=1000)
    with ThreadPoolExecutor(8) as pool:  # many readers at once, as the cache and the check read
        assert all(np.asarray(img).shape == (30, 40, 3) for img, _ in pool.map(images.read_image, [fail] * 64))
    assert Image.MAX_IMAGE_PIXELS == 500
    with pytest.warns(Image.DecompressionBombWarning):  # everyone else still gets Pillow's guard
        Image.open(warn)


def _png16(path, arr, colour_type):
    """A 16-bit PNG written by hand (Pillow writes no 16-bit RGB): colour_type 0 grey, 2 RGB."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


LEVELS16 = np.array([[0, 1000, 32768, 65535]] * 3, np.uint16)  # a 16-bit ramp; clipping would give 0, 255, 255, 255


def _palette_with_transparency():
    img = Image.fromarray(np.array([[0, 1, 2, 1]] * 3, np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 40, 40, 30, 200, 30])
    return img


IMAGE_CASES = {  # name: (write it to path, expected RGB array, a note that must be given or None)
    "16-bit grey PNG": (lambda p: Image.fromarray(LEVELS16).save(p),
                        np.repeat(np.array([[0, 4, 128, 255]] * 3, np.uint8)[..., None], 3, -1),
                        "16-bit I;16 image scaled to 8 bits and converted to RGB"),
    "16-bit RGB PNG": (lambda p: _png16(p, np.stack([LEVELS16] * 3, -1), 2),
                       np.repeat(np.array([[0, 3, 128, 255]] * 3, np.uint8)[..., None], 3, -1), None),
    "CMYK JPEG": (lambda p: Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(p, format="JPEG"),
                  None, "CMYK image converted to RGB (no colour profile applied)"),
    "palette with transparency": (lambda p: _palette_with_transparency().save(p, transparency=b"\0\x80"),
                                  np.array([[[0, 0, 0], [200, 40, 40], [30, 200, 30], [200, 40, 40]]] * 3, np.uint8),
                                  "P image converted to RGB (alpha dropped)"),
    "grey with alpha (LA)": (lambda p: Image.new("LA", (4, 3), (90, 10)).save(p),
                             np.full((3, 4, 3), 90, np.uint8), "LA image converted to RGB (alpha dropped)"),
    "1-bit": (lambda p: Image.fromarray(np.array([[True, False, True, False]] * 3)).save(p),
              np.repeat(np.array([[255, 0, 255, 0]] * 3, np.uint8)[..., None], 3, -1), "1-bit image converted to RGB"),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_odd_image_modes_are_read_correctly_with_a_note(tmp_path, case):
    write, expected, note = IMAGE_CASES[case]
    path = tmp_path / "ISIC_0000001.png"
    write(path)
    img, notes = _read(images.read_image, path)
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (3, 4, 3)
    if expected is not None:
        assert np.array_equal(arr, expected), arr[0]
    else:  # CMYK (0, 255, 255, 0) is red
        assert (arr[..., 0] > 230).all() and (arr[..., 1:] < 30).all(), arr[0]
    assert notes == ([f"ISIC_0000001.png: {note}"] if note else [])


MASK_CASES = {  # name: (write a mask whose lesion is the right half, its note or None)
    "16-bit 0/65535": (lambda p, half: Image.fromarray(half.astype(np.uint16) * 65535).save(p),
                       "16-bit I;16 mask scaled to 8 bits"),
    "16-bit 0/255": (lambda p, half: Image.fromarray(half.astype(np.uint16) * 255).save(p),
                     "16-bit I;16 mask of 8-bit values"),
    "16-bit 0/1": (lambda p, half: Image.fromarray(half.astype(np.uint16)).save(p), "16-bit I;16 mask of 8-bit values"),
    "1-bit": (lambda p, half: Image.fromarray(half).save(p), None),
    "grey with alpha (LA)": (lambda p, half: Image.fromarray(np.stack([half * np.uint8(255), np.full(half.shape, 7, np.uint8)],
                                                                      -1), mode="LA").save(p),
                             "LA mask converted to grayscale"),
    "palette with transparency": (lambda p, half: _palette_mask(half).save(p, transparency=0),
                                  "palette mask read by index (non-zero index is lesion)"),
}


def _palette_mask(half):
    img = Image.fromarray(half.astype(np.uint8), mode="P")
    img.putpalette([255, 255, 255, 90, 0, 0])  # lesion darker than background: read by index, not by luminance
    return img


@pytest.mark.parametrize("case", MASK_CASES)
def test_odd_mask_modes_are_read_as_the_same_binary_mask(tmp_path, case):
    write, note = MASK_CASES[case]
    half = np.zeros((6, 8), bool)
    half[:, 4:] = True
    path = tmp_path / "ISIC_0000001_Segmentation.png"
    write(path, half)
    lesion, notes, non_binary = _read(images.read_mask, path)
    assert np.array_equal(lesion, half) and not non_binary
    assert notes == ([f"ISIC_0000001_Segmentation.png: {note}"] if note else [])


@pytest.mark.parametrize("case", ["32-bit float", "32-bit integer beyond 16 bits"])
def test_images_of_more_than_16_bits_are_refused_by_name(tmp_path, case):
    path = tmp_path / "IMD001.tif"
    if case == "32-bit float":
        Image.fromarray(np.full((3, 4), 0.5, np.float32)).save(path)
        expected = f"{path}: 32-bit floating-point image: save it as an 8-bit or 16-bit image"
    else:
        Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
        expected = f"{path}: I image with values 0 to 70000, outside the 16-bit range 0-65535"
    for reader in (images.read_image, images.read_mask):
        with pytest.raises(DataError) as err:
            _read(reader, path)
        assert str(err.value).startswith(expected)


@pytest.mark.parametrize("damage", ["truncated PNG", "empty file", "no permission"])
def test_damaged_or_unreadable_files_are_refused_by_name(tmp_path, damage):
    import os

    path = tmp_path / "ISIC_0000001.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
    if damage == "truncated PNG":
        path.write_bytes(path.read_bytes()[:2000])
    elif damage == "empty file":
        path.write_bytes(b"")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file without read permission")
        path.chmod(0)
    for reader in (images.read_image, images.read_mask):
        with pytest.raises(DataError, match=rf"^{path}: unreadable or truncated image file \(.+\)$"):
            _read(reader, path)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_exif_orientation_is_not_applied_so_image_and_mask_stay_aligned(tiny_isic, fmt):
    """A camera's Orientation tag says how to turn the picture for display; ISIC's masks are drawn on the
    stored pixels (and its scorer reads them as stored), so the stored pixels are what is read."""
    image_dir, mask_dir = (tiny_isic / name for name in SPLITS["train"])
    stored = np.full((34, 48, 3), (220, 170, 150), np.uint8)
    stored[:, :16] = (60, 30, 20)  # a dark lesion along the left edge of the stored pixels
    lesion = np.zeros((34, 48), np.uint8)
    lesion[:, :16] = 255  # its mask, drawn on the stored pixels
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "turn 90 degrees clockwise to display"
    (image_dir / "ISIC_0000002.jpg").unlink()
    path = image_dir / f"ISIC_0000002.{fmt}"
    Image.fromarray(stored).save(path, exif=exif, **({"quality": 95} if fmt == "jpg" else {}))
    Image.fromarray(lesion).save(mask_dir / "ISIC_0000002_Segmentation.png")
    assert ImageOps.exif_transpose(Image.open(path)).size == (34, 48)  # displayed, it would stand 48 px high

    r = folders.load_sample(Sample("ISIC_0000002", path, mask_dir / "ISIC_0000002_Segmentation.png"), None)
    assert r["size"] == (34, 48) and r["mask"].shape == (34, 48)
    if fmt == "png":
        assert np.array_equal(r["image"], stored)
    else:
        assert np.array_equal(r["image"], np.asarray(Image.open(path).convert("RGB")))  # as stored, not turned
        assert np.abs(r["image"].astype(int) - stored).max() < 40
    assert (r["mask"][:, :16] == 1).all() and r["mask"][:, 16:].sum() == 0
    assert r["notes"] == [f"ISIC_0000002.{fmt}: EXIF orientation 6 not applied (the stored pixels are read, as ISIC's "
                          "masks and its scorer use them)"]
    report = folders.check_dataset(tiny_isic, progress=False)
    assert not report["problems"] and any("EXIF orientation 6 not applied" in n for n in report["notes"])


def test_a_mask_drawn_on_the_turned_image_is_refused_and_the_orientation_named(tmp_path):
    image, mask = tmp_path / "ISIC_0000001.jpg", tmp_path / "ISIC_0000001_Segmentation.png"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.new("RGB", (48, 34), (200, 150, 130)).save(image, exif=exif)
    Image.new("L", (34, 48), 255).save(mask)  # drawn on the image as displayed, turned upright
    with pytest.raises(DataError) as err:
        folders.load_sample(Sample("ISIC_0000001", image, mask), None)
    assert str(err.value) == (f"{mask}: mask is 34x48 but its image ISIC_0000001.jpg is 48x34; the image's EXIF "
                              "orientation is not applied (the stored pixels are read): its mask must match them")
