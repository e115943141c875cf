"""What the main job prints when something goes wrong: the project's own lines only - no kernel log,
no traceback, each warning once."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import pytest
import torch

from helpers import data, training
from helpers.tools import reproduce
from helpers.settings import RunConfig
from helpers.io import atomic_path, write_text

from conftest import main_args
from nbtiny import tiny_parameters


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_what_the_kernel_process_logs_goes_to_the_output_log_not_the_console(tmp_path, capfd):
    # the line jupyter_client's interrupt-before-shutdown makes ipykernel log on a busy machine, sent
    # through the same logger, and a write to the kernel process's own stderr descriptor
    nb = _notebook(tmp_path / "noisy.ipynb",
                   'get_ipython().kernel.log.error("KeyboardInterrupt caught in kernel (planted)")',
                   'import os; os.write(2, b"raw kernel stderr (planted)\\n"); print("printed by the cell")')
    log = tmp_path / "output.log"
    with open(log, "a", encoding="utf-8") as stream:
        reproduce.run_notebook(nb, tmp_path / "out.ipynb", {}, stream=stream)
    out, err = capfd.readouterr()
    assert "planted" not in out + err, out + err
    text = log.read_text()
    assert "KeyboardInterrupt caught in kernel (planted)" in text and "printed by the cell" in text


def test_the_encoder_weights_warning_is_said_once_in_the_projects_words(tmp_path, monkeypatch, capfd):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no network")))
    monkeypatch.setattr(reproduce, "run_notebook", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    args = main_args(tmp_path, "--name", "w")
    args[args.index("--encoder-weights") + 1] = "auto"
    assert reproduce.main(args) == 130
    out, err = capfd.readouterr()
    console = out + err
    assert console.count("RANDOM initialisation") == 1, console
    assert "warning: encoder_weights='auto': ImageNet weights unavailable" in out
    assert "UserWarning" not in console and "warnings.warn" not in console and ".py:" not in console
    assert "encoder weights: random (auto: ImageNet weights unavailable)" in out


def test_library_log_records_of_a_run_go_to_its_output_log(tmp_path, monkeypatch, capfd):
    """What nbclient and asyncio log when a run stops (seen on a busy machine after Ctrl-C) lands in the
    run's output log; the console keeps the project's one line."""
    import logging

    def interrupted(source, output, parameters, stream=None):
        logging.getLogger("papermill").error("Kernel died while waiting for execute reply. (planted)")
        logging.getLogger("asyncio").error("Task exception was never retrieved (planted)")
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "run_notebook", interrupted)
    assert reproduce.main(main_args(tmp_path, "--name", "logs")) == 130
    out, err = capfd.readouterr()
    assert "planted" not in out + err and err.splitlines() == [_hint(tmp_path / "runs" / "logs")], err
    text = reproduce.output_log(tmp_path / "runs" / "logs").read_text()
    assert "[papermill] ERROR | Kernel died while waiting for execute reply. (planted)" in text
    assert "[asyncio] ERROR | Task exception was never retrieved (planted)" in text


def test_a_dead_kernel_is_one_line(tmp_path, capsys):
    nb = _notebook(tmp_path / "03_dies.ipynb", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(reproduce.NotebookFailed) as err:
        reproduce.run_notebook(nb, tmp_path / "out" / "03_dies.ipynb", {})
    assert str(err.value).startswith("03_dies.ipynb: its kernel died (killed, or out of memory?)"), err.value
    assert str(err.value).endswith("rerun the same command to resume")


def _hint(run):
    return (f"interrupted: rerun the same command to resume {run} (finished trainings are reused, an interrupted one "
            "resumes after its last complete epoch)")


def test_a_full_disk_is_one_error_line_naming_the_run_folder(headless_run):
    full = headless_run.full_disk
    if full is None:
        pytest.skip("no small file system could be mounted here (it needs root; CI runs as root)")
    assert full.returncode == 1, full.stdout + full.stderr
    (line,) = full.stderr.splitlines()  # which write meets the full disk first depends on the timing
    assert line.startswith(f"error: {headless_run.run}: no space left on the device (02_model1_frozen_encoder.ipynb: "), line
    assert line.endswith("): free some space, then rerun the same command to resume"), line
    assert "Traceback" not in full.stdout and "01_data_exploration.ipynb: done" in full.stdout


def test_ctrl_c_during_a_training_prints_the_resume_hint_alone(headless_run):
    stopped = headless_run.interrupted
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert stopped.stderr.splitlines() == [_hint(headless_run.run)], stopped.stderr
    assert "Traceback" not in stopped.stdout and "rror" not in stopped.stdout, stopped.stdout


def test_the_rerun_resumes_the_interrupted_training_to_the_uninterrupted_result(headless_run, tmp_path):
    """After the full disk and Ctrl-C, the same command completes (conftest.headless_run): Model 1's first
    seed resumes after its saved epoch and ends exactly as an uninterrupted training of the same settings."""
    run = headless_run.run
    assert headless_run.err == "" and "unfinished run found" in headless_run.out
    log = reproduce.output_log(run).read_text()
    assert "resuming after epoch 1 of 2 (from last.pt)" in log, log[-3000:]
    folder = run / "model1_frozen" / "seed0"
    assert not (folder / "last.pt").exists()

    tiny = tiny_parameters(headless_run.root)
    cfg = RunConfig(data="synthetic", data_dir=tiny["DATA_DIR"], synthetic_train=16, synthetic_test=8, image_size=64,
                    epochs=2, batch_size=8, device="cpu", encoder_weights=None, run_dir=str(tmp_path / "ref"),
                    figures_dir=str(tmp_path / "figures"), cache_dir=tiny["CACHE_DIR"], progress=False)
    d = data.prepare_data(cfg, log=lambda *a: None)
    training.train_seeds(cfg, d, training.new_model(cfg, freeze_encoder=True), "model1_frozen")
    reference = tmp_path / "ref" / "model1_frozen" / "seed0"
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(json.loads((folder / "history.json").read_text())["history"]) == strip(
        json.loads((reference / "history.json").read_text())["history"])
    resumed = torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
    uninterrupted = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(v, uninterrupted[k]) for k, v in resumed.items())


def test_a_torch_save_on_a_full_disk_is_named_as_one(tmp_path, monkeypatch):
    """torch.save says a full disk as RuntimeError("... file write failed"); the file is named, as ENOSPC."""
    monkeypatch.setattr("helpers.io.disk_full", lambda folder: True)
    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "last.pt") as tmp:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "last.pt")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr("helpers.io.disk_full", lambda folder: False)
    with pytest.raises(RuntimeError, match="file write failed"):  # any other failure keeps its own message
        with atomic_path(tmp_path / "last.pt") as tmp:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    write_text(tmp_path / "ok.txt", "fine")
    assert (tmp_path / "ok.txt").read_text() == "fine"
