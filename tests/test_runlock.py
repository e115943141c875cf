"""Two runs at once: one run folder has one run at a time, and the shared preprocessing cache stays correct."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from helpers import cache
from helpers.tools import reproduce
from helpers.errors import ProjectError
from helpers.folders import DataWarning
from helpers.tools.runlock import RunFolderBusy, hold_run_folder, lock_path

from conftest import write_pair

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
HOLD = """import sys, time
from helpers.tools.runlock import hold_run_folder
with hold_run_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _kill_tree(proc):
    """SIGKILL a process and everything it started (a run's notebook kernels), as a power cut would."""
    import psutil  # installed with ipython

    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    proc.wait()


def test_a_run_folder_held_by_a_killed_process_is_free_again(tmp_path):
    run = tmp_path / "runs" / "default"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderBusy) as err:
            with hold_run_folder(run):
                pass
        message = str(err.value)
        assert message.startswith(f"{run} is in use by another run (pid {holder.pid}, started 20"), message
        assert message.endswith("); wait for it to finish or choose another NAME")
    finally:
        _kill_tree(holder)
    assert lock_path(run).is_file()  # the kernel dropped the lock; the file may stay and is taken over
    with hold_run_folder(run) as path:
        assert path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()},"):  # held, even against this process
            with hold_run_folder(run):
                pass
    assert not lock_path(run).exists() and (tmp_path / "runs").is_dir()
    with hold_run_folder(tmp_path / "new" / "x"):  # a runs folder it had to make is removed again when empty
        pass
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_second_reproduce_on_the_same_run_folder_refuses_at_once(tmp_path, capsys, monkeypatch):
    """Two `make reproduce` at once: the second names the folder and the first run's pid, within seconds;
    once the first is killed, the folder is free."""
    args = ["--data", "synthetic", "--data-dir", str(tmp_path / "synthetic"), "--synthetic-train", "16",
            "--synthetic-test", "8", "--image-size", "32", "--epochs", "1", "--device", "cpu", "--encoder-weights",
            "none", "--runs-dir", str(tmp_path / "runs"), "--figures-dir", str(tmp_path / "figures"), "--cache-dir",
            str(tmp_path / "cache"), "--no-html", "--name", "twice"]
    run = tmp_path / "runs" / "twice"
    first = subprocess.Popen([sys.executable, "-m", "helpers.tools.reproduce", *args], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (lock_path(run).is_file() and lock_path(run).read_text().startswith(f"{first.pid} ")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not take the lock"
            time.sleep(0.05)
        start = time.monotonic()
        assert reproduce.main(args) == 1
        assert time.monotonic() - start < 10
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run} is in use by another run (pid {first.pid}, started ") and err.count("\n") == 1
        assert err.endswith("); wait for it to finish or choose another NAME\n"), err
    finally:
        _kill_tree(first)

    def runs_now(cfg, **kwargs):  # the folder is free: reproduce itself is reached
        raise ProjectError(f"reached reproduce for {cfg.run_path}")

    monkeypatch.setattr(reproduce, "reproduce", runs_now)
    assert reproduce.main(args) == 1
    assert capsys.readouterr().err == f"error: reached reproduce for {run}\n"


BUILD = """import sys, time
from pathlib import Path
from helpers.cache import load_cached
root, cache_dir, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
load_cached(root, "train", 24, cache_dir=cache_dir, progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["two data folders", "one data folder"])
def test_two_processes_building_the_shared_cache_at_once_leave_it_correct(tmp_path, which):
    """Two runs on other data folders (or the same one) decode into data/cache at the same moment: each
    cache file is whole, equals a build by one process alone, and is reused afterwards; no temporary is left."""
    folders = [tmp_path / "a", tmp_path / "b"]
    for k, root in enumerate(folders):
        for i in range(24):
            write_pair(root, "train", i, size=(160, 120), seed=100 * k + i)
    roots = folders if which == "two data folders" else [folders[0]] * 2
    shared, go = tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(root), str(shared), str(tmp_path / f"ready{n}"), str(go)],
                              env=ENV, stderr=subprocess.PIPE, text=True) for n, root in enumerate(roots)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{n}").exists() for n in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start decoding now
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    files = sorted(shared.iterdir())
    assert len(files) == len(set(roots)) and not [f for f in files if f.name.startswith(".")], files
    mtimes = [f.stat().st_mtime_ns for f in files]
    for root in set(roots):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataWarning)  # "stale or damaged cache, rebuilding" would fail here
            reused = cache.load_cached(root, "train", 24, cache_dir=shared, progress=False)
        alone = cache.load_cached(root, "train", 24, cache_dir=None, progress=False)
        assert reused["ids"] == alone["ids"] and reused["sizes"] == alone["sizes"]
        assert reused["lesion"] == alone["lesion"]
        assert torch.equal(reused["images"], alone["images"]) and torch.equal(reused["masks"], alone["masks"])
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # reused, not rebuilt
