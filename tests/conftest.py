import contextlib
import json
import os
import secrets
import shutil
import signal
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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, for them and the processes they start
    # (two torch processes with two threads each on two cores slow each other about tenfold).
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from helpers.folders import SPLITS


SLOW_FIXTURES = {"headless_run"}  # a test that reads the tiny main job's run is part of the slow suite


def pytest_configure(config):
    """One garbage collection, not pytest's five, before it reports the exceptions raised in finalizers at
    the end of the session: each pass walks a worker's whole heap (torch, notebooks' outputs, hypothesis),
    about 0.7 s, and the first pass is the one that finds them."""
    try:
        from _pytest.unraisableexception import gc_collect_iterations_key
    except ImportError:  # another pytest: its own number of passes
        return
    config.stash[gc_collect_iterations_key] = 1


@pytest.hookimpl(wrapper=True)  # a wrapper: before pytest-xdist reads the groups and `-m` deselects
def pytest_collection_modifyitems(config, items):
    """Mark slow every test that uses the tiny main job (`make test-fast` leaves them out), and keep them
    on one pytest-xdist worker, so that the job runs once per `make test`."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("headless_run"))
    # the tiny main job's group first: it is the longest chain of the suite, so one worker starts on it at once
    items.sort(key=lambda item: not SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
    return (yield)


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


def write_tiny_isic(root: Path) -> Path:
    """An ISIC 2016 layout with 6 train and 4 test images of varied sizes in ``root``."""
    for i in range(6):
        write_pair(root, "train", i, size=(40 + 4 * i, 30 + 2 * i))
    for i in range(6, 10):
        write_pair(root, "test", i, size=(48, 36))
    return root


@pytest.fixture
def tiny_isic(tmp_path):
    """An ISIC 2016 layout with 6 train and 4 test images of varied sizes."""
    return write_tiny_isic(tmp_path / "isic")


@pytest.fixture
def train_only(tmp_path):
    """A folder with the ISIC training split only (10 images), like a clinic's own set."""
    root = tmp_path / "clinic"
    for i in range(10):
        write_pair(root, "train", i, size=(40, 30))
    return root


TINY_SIZE = 32  # the working size of the shared tiny checkpoint


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """Trained once per test run: tiny_isic's layout, a 1-epoch checkpoint ("fit") and a copy whose head
    bias puts the median test logit at 0, so its masks mix lesion and background ("mixed";
    image_size recorded in its settings)."""
    from helpers.cache import load_dataset
    from helpers.evaluate import predict_logits
    from helpers.model import build_model
    from helpers.train import fit, load_checkpoint, save_run

    base = tmp_path_factory.mktemp("trained")
    root = write_tiny_isic(base / "isic")
    train = load_dataset(root, "train", TINY_SIZE, progress=False)
    test = load_dataset(root, "test", TINY_SIZE, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(build_model(False, encoder_weights=None), train, test, epochs=1, batch_size=4, seed=0, device="cpu",
            out_dir=base / "fit", progress=False, log=None)
        model, ckpt = load_checkpoint(base / "fit" / "checkpoint.pt")
        model.head.bias.data -= predict_logits(model, test.images).median()
    finally:
        torch.set_num_threads(threads)
    save_run(base / "mixed", model, {**ckpt["settings"], "image_size": TINY_SIZE}, ckpt["history"])
    return base


@pytest.fixture
def runs(trained_tiny, tmp_path):
    """A copy of :func:`trained_tiny` for one test to change as it likes: {"root", "fit", "mixed"}."""
    shutil.copytree(trained_tiny, tmp_path / "trained")
    base = tmp_path / "trained"
    return {"root": base / "isic", "fit": base / "fit" / "checkpoint.pt", "mixed": base / "mixed" / "checkpoint.pt"}


def main_args(tmp_path, *extra):
    """`python -m helpers.tools.reproduce` options for the tiny setting (nbtiny.tiny_parameters) under ``tmp_path``."""
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


RUNS_DISK_MB = 24  # the run folder's disk at first: room for notebook 01's output, not for Model 1's last.pt


def mount_small_disk(folder: Path, mb: int) -> bool:
    """Mount a tmpfs of ``mb`` MB on ``folder``; False where that cannot be done (it needs root: CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


# Imported at start-up by every Python process of the interrupted run (as ``sitecustomize``, through
# PYTHONPATH): when a training is about to put its second last.pt in place of the first (``marker``, after
# its first epoch), the process waits 5 s, so that the watcher sees the marker however busy the machine
# is: a tiny epoch lasts a fraction of a second. (An audit hook: os.replace is audited before it acts.)
HOLD = """import os, sys, time
_marker, _seen = os.environ["HOLD_AFTER"], []
def _hold(event, args):
    if event == "os.rename" and os.path.abspath(os.fspath(args[1])) == _marker:
        _seen.append(True)
        if len(_seen) == 2:
            time.sleep(5)
sys.addaudithook(_hold)
"""


def interrupt_when(command: list[str], marker: Path, env: dict) -> subprocess.CompletedProcess:
    """Run ``command``; once ``marker`` exists, send SIGINT to its process group, as Ctrl-C in a terminal does.
    The process that writes ``marker`` holds still for 5 s before it replaces it (:data:`HOLD`)."""
    hook = marker.parents[4] / "hold-after-marker"  # beside the runs folder, outside it
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOLD)
    env = {**env, "HOLD_AFTER": str(marker), "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))}
    # Ctrl-C as in a terminal, where SIGINT is never ignored: a test run started in the background (`&` in
    # a non-interactive shell) passes SIGINT on ignored, and the run would go on to the end.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="session")
def headless_run(tmp_path_factory):
    """One tiny `python -m helpers.tools.reproduce` (2 epochs, 2 seeds, TTA, two external test sets: PH2-like,
    named "PH2", and the images/ + masks/ folder "clinic"), run as a person may meet it: first with the
    run folder on a disk too small for it (``full_disk``: where a tmpfs can be mounted, else None), then
    the same command again after the disk has grown, stopped by Ctrl-C while Model 1 trains
    (``interrupted``), then again, to the end (``out``, ``err``). Its folder ``root``, run folder ``run``
    and the external folders are kept for the tests that read them."""
    root = tmp_path_factory.mktemp("headless")
    external = external_folders(root / "external")
    args = main_args(root, "--name", "t", "--seeds", "2", "--tta", "--external",
                     f"PH2={external['ph2']},{external['clinic']}")
    args[args.index("--epochs") + 1] = "2"
    (root / "runs").mkdir()
    command = [sys.executable, "-m", "helpers.tools.reproduce", *args]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    mounted = mount_small_disk(root / "runs", RUNS_DISK_MB)
    try:
        full_disk = None
        if mounted:
            full_disk = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
            subprocess.run(["mount", "-o", "remount,size=1000m", str(root / "runs")], check=True)
        interrupted = interrupt_when(command, root / "runs" / "t" / "model1_frozen" / "seed0" / "last.pt", env)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield SimpleNamespace(root=root, run=root / "runs" / "t", out=proc.stdout, err=proc.stderr, args=args,
                              external=external, full_disk=full_disk, interrupted=interrupted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root / "runs")])


def lab_api(base, token, path, method="GET"):
    """(status, JSON body) of one request to a JupyterLab server's REST API."""
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        return r.status, (json.loads(body) if body else None)


@contextlib.contextmanager
def running_lab(work: Path, jupyter_dir: Path, env_extra: dict | None = None):
    """`python -m helpers.tools.lab` (what `make lab` runs) on 127.0.0.1 with a token and working copies in
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
            [sys.executable, "-m", "helpers.tools.lab", "--work-dir", str(work), "--no-browser", "--ServerApp.ip=127.0.0.1",
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
