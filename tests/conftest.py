import contextlib
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
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


def external_folders(root: Path, n: int = 5, seed: int = 7) -> dict:
    """Two external test sets from the synthetic generator (another seed than the demo set's), in two
    layouts: "ph2", PH2-like BMP files with their masks <id>_lesion.bmp in one folder, and "clinic",
    an images/ folder of JPEGs with a masks/ folder of PNGs of the same names."""
    from helpers.folders import list_split
    from helpers.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root / "generated", n_train=1, n_test=n, seed=seed, source_size=(96, 72), progress=False)
    ph2, clinic = root / "PH2-like", root / "clinic"
    for folder in (ph2, clinic / "images", clinic / "masks"):
        folder.mkdir(parents=True)
    for k, sample in enumerate(list_split(root / "generated", "test"), 1):
        with Image.open(sample.image) as img, Image.open(sample.mask) as mask:
            img.convert("RGB").save(ph2 / f"IMD{k:03d}.bmp")
            mask.convert("L").save(ph2 / f"IMD{k:03d}_lesion.bmp")
            img.convert("RGB").save(clinic / "images" / f"case-{k}.jpg", quality=92)
            mask.convert("L").save(clinic / "masks" / f"case-{k}.png")
    return {"ph2": ph2, "clinic": clinic}


@pytest.fixture(scope="session")
def headless_run(tmp_path_factory):
    """One tiny `python -m helpers.reproduce` (2 seeds, TTA, two external test sets: PH2-like, named "PH2",
    and the images/ + masks/ folder "clinic") as a user runs it, in its own process: its folder ``root``,
    run folder ``run``, the external folders and what it printed (``out``, ``err``), for the tests that read it."""
    root = tmp_path_factory.mktemp("headless")
    external = external_folders(root / "external")
    args = main_args(root, "--name", "t", "--seeds", "2", "--tta", "--external",
                     f"PH2={external['ph2']},{external['clinic']}")
    proc = subprocess.run([sys.executable, "-m", "helpers.reproduce", *args], capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(root=root, run=root / "runs" / "t", out=proc.stdout, err=proc.stderr, args=args,
                           external=external)


def lab_api(base, token, path, method="GET"):
    """(status, JSON body) of one request to a JupyterLab server's REST API."""
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        return r.status, (json.loads(body) if body else None)


@contextlib.contextmanager
def running_lab(work: Path, jupyter_dir: Path, env_extra: dict | None = None):
    """`python -m helpers.lab` (what `make lab` runs) on 127.0.0.1 with a token and working copies in
    ``work``; Jupyter's runtime and config folders under ``jupyter_dir``, its log in jupyter_dir/lab.log.
    Yields (base URL, token)."""
    from helpers import paths

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(jupyter_dir / "runtime"),
           "JUPYTER_CONFIG_DIR": str(jupyter_dir / "config"), **(env_extra or {})}
    env.pop("MPLBACKEND", None)  # as in a person's shell: the kernel chooses its own backend
    jupyter_dir.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with open(jupyter_dir / "lab.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.lab", "--work-dir", str(work), "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=paths.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    lab_api(base, token, "/api/status")
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        proc.kill()
                        raise RuntimeError("JupyterLab did not start: " + (jupyter_dir / "lab.log").read_text()[-3000:])
                    time.sleep(0.5)
            yield base, token
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
