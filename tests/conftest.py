import os
import struct
import subprocess
import sys
import zlib
from types import SimpleNamespace

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


def main_args(tmp_path, *extra):
    """`python -m helpers.reproduce` options for the tiny setting (nbtiny.tiny_parameters) under ``tmp_path``."""
    from nbtiny import tiny_parameters

    p = tiny_parameters(tmp_path)
    return ["--data", "synthetic", "--data-dir", p["DATA_DIR"], "--synthetic-train", "16", "--synthetic-test", "8",
            "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--encoder-weights", "none", "--runs-dir", str(tmp_path / "runs"), "--figures-dir", p["FIGURES_DIR"],
            "--cache-dir", p["CACHE_DIR"], *extra]


@pytest.fixture(scope="session")
def headless_run(tmp_path_factory):
    """One tiny `python -m helpers.reproduce` (2 seeds, TTA) as a user runs it, in its own process: its
    folder ``root``, run folder ``run`` and what it printed (``out``, ``err``), for the tests that read it."""
    root = tmp_path_factory.mktemp("headless")
    args = main_args(root, "--name", "t", "--seeds", "2", "--tta")
    proc = subprocess.run([sys.executable, "-m", "helpers.reproduce", *args], capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(root=root, run=root / "runs" / "t", out=proc.stdout, err=proc.stderr, args=args)
