"""nbval over the five notebooks, the notebooks one by one in numbered order, and the headless pipeline, all on the tiny setting."""

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.tools import reproduce
from helpers.errors import ProjectError
from helpers.folders import list_split
from helpers.settings import RunConfig

from conftest import main_args
from nbtiny import NOTEBOOKS, ROOT, figure_names, is_checked, parameterized_copies, tiny_injection, tiny_parameters


def test_notebooks_are_committed_thin():
    assert [p.name for p in NOTEBOOKS] == list(reproduce.NOTEBOOKS)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown"
        assert nb.cells[1].metadata.get("tags") == ["parameters"]
        assert nb.metadata.kernelspec.name == "python3"
        checked = [c for c in nb.cells if is_checked(c)]
        assert checked, f"{path.name} has no nbval-checked cell"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert "def " not in cell.source and "class " not in cell.source, path.name
                assert bool(cell.outputs) == is_checked(cell), f"{path.name}: only checked cells keep outputs"


@pytest.mark.slow
def test_nbval_runs_all_five_notebooks(tmp_path):
    copies = parameterized_copies(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "-q", *map(str, copies)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    n_checked = sum(is_checked(c) for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells)
    assert n_checked >= 5 and " passed" in proc.stdout and "failed" not in proc.stdout


def _main_args(tmp_path, *extra):
    return main_args(tmp_path, *extra)


def test_headless_pipeline_writes_every_output(headless_run, capsys):
    tmp_path, out, err = headless_run.root, headless_run.out, headless_run.err
    assert "wall time per notebook" in out and "SYNTHETIC" in out and "2 seed(s)" in out
    # the decisions, one line per notebook and the summary: no kernel warning, no third-party noise
    assert err == "", err
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines if ".ipynb: done in" in line] == list(reproduce.NOTEBOOKS)
    # interrupted in 02 before, this rerun takes 01 as it was executed then
    assert "01_data_exploration.ipynb: done in an earlier run (" in out and "02_model1_frozen_encoder.ipynb: done in an earlier" not in out
    assert len(lines) == len(reproduce.NOTEBOOKS) + 9, out  # + the synthetic set, the data decision, 2 external sets, the resume line, 4 summary lines
    run = tmp_path / "runs" / "t"
    log = reproduce.output_log(run).read_text()
    assert "epoch  2/2  train loss" in log and "==> 05_comparison.ipynb" in log  # what the notebooks printed

    # every figure is an image in the executed notebooks, and in report.html
    assert sum(len(figure_names(p)) for p in NOTEBOOKS) == len(reproduce.FIGURES)
    for path in NOTEBOOKS:
        executed = run / "notebooks" / path.name
        nb = nbformat.read(executed, as_version=4)
        pngs = [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if "image/png" in o.get("data", {})]
        assert len(pngs) == len(figure_names(path)), path.name
        for data in pngs:
            with Image.open(io.BytesIO(base64.b64decode(data))) as img:
                assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert "<Figure size" not in executed.read_text()
    html = (run / "report.html").read_text()
    embedded = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == len(reproduce.FIGURES)
    for data in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            img.load()
            assert img.width > 100 and img.height > 100
    assert "<Figure size" not in html
    for name in reproduce.FIGURES:
        with Image.open(tmp_path / "figures" / name) as img:
            img.verify()
            assert img.format == "PNG"
    results = json.loads((run / "results.json").read_text())
    assert results["data_source"].startswith("SYNTHETIC") and results["encoder_weights_used"] == "random"
    assert results["settings"]["EPOCHS"] == 2 and results["settings"]["SEEDS"] == 2 and results["device"] == "cpu"
    assert [r["comparison"] for r in results["paired_original_jaccard"]] == [
        "Model 2 (fine-tuned encoder) - Model 1 (frozen encoder)",
        "Model 3 (fine-tuned, U-Net decoder) - Model 2 (fine-tuned encoder)"]
    # the paired comparison is b - a image by image, from the per-image files of the two models
    per_image = {m: {} for m in reproduce.MODELS}
    for m in reproduce.MODELS:
        for seed in (0, 1):
            with open(run / m / f"seed{seed}" / "original" / "per_image.csv") as f:
                for r in csv.DictReader(f):
                    per_image[m].setdefault(r["id"], []).append(float(r["jaccard"]))
    for pair, (a, b) in zip(results["paired_original_jaccard"], zip(reproduce.MODELS, reproduce.MODELS[1:])):
        diff = [sum(per_image[b][i]) / 2 - sum(per_image[a][i]) / 2 for i in per_image[a]]
        assert pair["n_images"] == len(diff) == 8
        assert pair["mean_difference"] == pytest.approx(sum(diff) / 8, abs=1e-4)
        assert (pair["b_better"], pair["a_better"]) == (sum(x > 0 for x in diff), sum(x < 0 for x in diff))
    for model in reproduce.MODELS:
        summary = results["models"][model]
        assert summary["seeds"] == [0, 1]
        for key in ("macro", "original", "original_tta"):
            for metric, v in summary[key].items():
                assert len(v["per_seed"]) == 2 and all(math.isfinite(x) and 0 <= x <= 1 for x in v["per_seed"])
                assert v["mean"] == pytest.approx(sum(v["per_seed"]) / 2)
        for seed in (0, 1):
            folder = run / model / f"seed{seed}"
            assert (folder / "checkpoint.pt").is_file()
            with open(folder / "per_image.csv") as f:
                assert len(list(csv.DictReader(f))) == 8
            # each image's Jaccard at the original size is that of its saved mask against its truth file
            with open(folder / "original" / "per_image.csv") as f:
                rows = {r["id"]: r for r in csv.DictReader(f)}
            truths = {s.id: s.mask for s in list_split(tmp_path / "synthetic", "test")}
            assert sorted(rows) == sorted(truths) and len(rows) == 8
            for ident, truth_file in truths.items():
                pred = np.asarray(Image.open(folder / "original" / "masks" / f"{ident}_segmentation.png")) > 128
                truth = np.asarray(Image.open(truth_file).convert("L")) > 128  # read as the ISIC scorer does
                assert pred.shape == truth.shape
                union = (pred | truth).sum()
                assert float(rows[ident]["jaccard"]) == pytest.approx((pred & truth).sum() / union if union else 1.0)
            assert json.loads((folder / "original_tta" / "summary.json").read_text())["tta"] is True
    for name in reproduce.NOTEBOOKS:
        executed = nbformat.read(run / "notebooks" / name, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "Model 3 (U-Net decoder)" in html and "Gutman" in html
    # the challenge table's conditions are shown whole (pandas would cut them at 50 characters)
    from helpers import compare
    conditions = compare.challenge_table(compare.available_results(run, log=None))["conditions"]
    executed = nbformat.read(run / "notebooks" / "05_comparison.ipynb", as_version=4)
    shown = "".join(o["data"]["text/html"] for c in executed.cells if c.cell_type == "code" for o in c.outputs
                    if "text/html" in o.get("data", {}))
    assert max(map(len, conditions)) > 100
    for text in conditions:
        assert escape(text, quote=False) in shown and escape(text, quote=False) in html, text

    # a finished run is never overwritten without --overwrite
    assert reproduce.main(_main_args(tmp_path, "--name", "t")) == 1
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_failing_notebook_is_named_and_kept(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        if path.name.startswith("01_"):
            nb.cells.insert(3, nbformat.v4.new_code_cell('raise RuntimeError("deliberate failure")'))
        nbformat.write(nb, notebooks / path.name)
    p = tiny_parameters(tmp_path)
    cfg = RunConfig(data="synthetic", data_dir=p["DATA_DIR"], synthetic_train=16, synthetic_test=8, image_size=64,
                    epochs=1, batch_size=8, device="cpu", encoder_weights=None, run_dir=str(tmp_path / "runs" / "b"),
                    figures_dir=p["FIGURES_DIR"], cache_dir=p["CACHE_DIR"], progress=False)
    with pytest.raises(reproduce.NotebookFailed) as err:
        reproduce.reproduce(cfg, html=False, log=lambda *a: None, notebooks_dir=notebooks)
    message = str(err.value)
    assert "01_data_exploration.ipynb failed in cell 4" in message and "RuntimeError: deliberate failure" in message
    partial = tmp_path / "runs" / "b" / "notebooks" / "01_data_exploration.ipynb"
    assert str(partial) in message and partial.is_file()
    executed = nbformat.read(partial, as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    assert not (tmp_path / "runs" / "b" / "notebooks" / "02_model1_frozen_encoder.ipynb").exists()
    assert not (tmp_path / "runs" / "b" / "results.json").exists()


def test_missing_encoder_weights_file_fails_before_any_notebook(tmp_path, capsys):
    args = _main_args(tmp_path, "--name", "w")
    args[args.index("--encoder-weights") + 1] = str(tmp_path / "missing.pth")
    assert reproduce.main(args) == 1
    assert "missing.pth: encoder weights file not found" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "w" / "notebooks").exists()


def test_asking_for_absent_isic_data_fails_at_once(tmp_path, capsys):
    args = _main_args(tmp_path, "--name", "x")
    args[args.index("--data") + 1] = "isic2016"
    args[args.index("--data-dir") + 1] = str(tmp_path / "no-isic")
    assert reproduce.main(args) == 1
    err = capsys.readouterr().err
    assert "make data" in err and "no-isic" in err
    assert not (tmp_path / "runs" / "x").exists()


def _with_fake_notebooks(monkeypatch, fake_notebook, tmp_path, run) -> RunConfig:
    """The main job's notebooks replaced by ``fake_notebook`` (and results.json by {}); the tiny settings
    with their run folder at ``run``."""
    monkeypatch.setattr(reproduce, "run_notebook", fake_notebook)
    monkeypatch.setattr(reproduce, "collect_results", lambda *a: {})
    p = tiny_parameters(tmp_path)
    return RunConfig(data="synthetic", data_dir=p["DATA_DIR"], synthetic_train=16, synthetic_test=8, image_size=64,
                     epochs=1, batch_size=8, device="cpu", encoder_weights=None, run_dir=str(run),
                     figures_dir=p["FIGURES_DIR"], cache_dir=p["CACHE_DIR"], progress=False)


def test_overwrite_moves_the_old_run_aside_and_never_resumes_it(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "o"
    (run / "model2_finetuned" / "seed0").mkdir(parents=True)
    (run / "model2_finetuned" / "seed0" / "last.pt").write_bytes(b"an earlier run's state")
    (run / "results.json").write_text("{}")
    seen = []

    def fake_notebook(source, output, parameters, stream=None):
        seen.append((source.name, sorted(p.name for p in run.rglob("*"))))
        return 0.0

    cfg = _with_fake_notebooks(monkeypatch, fake_notebook, tmp_path, run)
    with pytest.raises(ProjectError, match="holds a finished run: pass --overwrite"):
        reproduce.reproduce(cfg, html=False, log=lambda *a: None)
    lines = []
    reproduce.reproduce(cfg, overwrite=True, html=False, log=lines.append)
    (backup,) = tmp_path.joinpath("runs").glob("o.replaced-*")
    assert (backup / "model2_finetuned" / "seed0" / "last.pt").read_bytes() == b"an earlier run's state"
    assert (backup / "results.json").is_file() and any(f"moved the earlier {run} to {backup}" in x for x in lines)
    # the notebooks start from an empty folder: nothing in it but the new run's output log and settings
    assert [name for name, _ in seen] == list(reproduce.NOTEBOOKS)
    assert all(files == ["notebooks", "output.log", "settings.json"] or files[:2] == ["finished.json", "notebooks"]
               for _, files in seen), seen
    # an unfinished run folder (no results.json) is kept and resumed, not moved
    (run / "results.json").unlink()
    lines.clear()
    reproduce.reproduce(cfg, html=False, log=lines.append)
    assert any("unfinished run found" in x for x in lines) and len(list(tmp_path.joinpath("runs").iterdir())) == 2


def test_a_resumed_run_does_not_execute_again_the_notebooks_that_finished(tmp_path, monkeypatch):
    """Interrupted in 03, the rerun reuses 01 and 02 as they were executed; a damaged executed copy, another
    setting or another notebook source runs that notebook again, and every notebook after it."""
    run = tmp_path / "runs" / "r"
    ran, stop = [], {"at": "03_model2_finetuned.ipynb"}

    def fake_notebook(source, output, parameters, stream=None):
        if source.name == stop.get("at"):
            raise KeyboardInterrupt
        ran.append(source.name)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"executed {source.name}")
        return 2.0

    cfg = _with_fake_notebooks(monkeypatch, fake_notebook, tmp_path, run)
    with pytest.raises(KeyboardInterrupt):
        reproduce.reproduce(cfg, html=False, log=lambda *a: None)
    assert ran == list(reproduce.NOTEBOOKS[:2])
    ran.clear(), stop.clear()
    lines = []
    reproduce.reproduce(cfg, html=False, log=lines.append)
    assert ran == list(reproduce.NOTEBOOKS[2:])
    assert [x for x in lines if "done in" in x][:3] == [
        "01_data_exploration.ipynb: done in an earlier run (2 s), not run again",
        "02_model1_frozen_encoder.ipynb: done in an earlier run (2 s), not run again",
        "03_model2_finetuned.ipynb: done in 2 s"]
    # unfinished again, with 02's executed copy damaged: 02 and everything after it run again
    (run / "results.json").unlink()
    (run / "notebooks" / reproduce.NOTEBOOKS[1]).write_text("half a notebook")
    ran.clear()
    reproduce.reproduce(cfg, html=False, log=lambda *a: None)
    assert ran == list(reproduce.NOTEBOOKS[1:])
    # another setting: every notebook runs again
    (run / "results.json").unlink()
    ran.clear()
    reproduce.reproduce(RunConfig(**{**cfg.__dict__, "tta": "flips"}), html=False, log=lambda *a: None)
    assert ran == list(reproduce.NOTEBOOKS)
    (run / "notebooks" / reproduce.FINISHED).write_text("{not json")  # an unreadable record: everything runs
    (run / "results.json").unlink()
    ran.clear()
    reproduce.reproduce(RunConfig(**{**cfg.__dict__, "tta": "flips"}), html=False, log=lambda *a: None)
    assert ran == list(reproduce.NOTEBOOKS)


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "reproduce", interrupted)
    assert reproduce.main(_main_args(tmp_path, "--name", "c")) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: rerun the same command to resume") and err.count("\n") == 1
    assert str(tmp_path / "runs" / "c") in err and "Traceback" not in err


def test_the_comparison_runs_with_a_model_missing(headless_run, tmp_path):
    """The comparison (05) run before Model 3's notebook (04) has run, as a JupyterLab user may: it says what is
    missing and which notebook makes it, and makes the figures it can. (Each notebook in its own kernel in
    numbered order: the nbval test.)"""
    run = tmp_path / "run"
    shutil.copytree(headless_run.run, run, ignore=shutil.ignore_patterns("model3_unet", "*.pt", "masks"))
    text = lambda nb: " ".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    settings = RunConfig(run_dir=str(run), figures_dir=str(tmp_path)).write(tmp_path / "settings.json")
    reproduce.run_notebook(NOTEBOOKS[4], tmp_path / "05.ipynb", {"RUN_DIR": str(run), "SETTINGS": str(settings)})
    early = text(nbformat.read(tmp_path / "05.ipynb", as_version=4))
    assert "Model 3 (fine-tuned, U-Net decoder): no results in" in early and "04_model3_unet_decoder.ipynb" in early
    assert not (tmp_path / "fig14_iou_scatter_model3.png").exists()
    assert (tmp_path / "fig13_iou_scatter.png").is_file()


def test_relative_paths_on_the_command_line_are_taken_from_where_it_runs(tmp_path, monkeypatch):
    """The notebooks run in notebooks/, so a relative weights file or data folder is made absolute first."""
    seen = {}
    monkeypatch.setattr(reproduce, "reproduce", lambda cfg, **kw: seen.setdefault("cfg", cfg) and 1 / 0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError):
        reproduce.main(["--encoder-weights", "weights/w.pth", "--data-dir", "my-data", "--name", "rel"])
    assert seen["cfg"].encoder_weights == str(tmp_path / "weights" / "w.pth")
    assert seen["cfg"].data_dir == str(tmp_path / "my-data")


def test_the_notebooks_defaults_are_the_run_configs():
    """Opened in JupyterLab, a notebook runs with the same settings as `make reproduce` does by default."""
    import ast

    import papermill as pm

    defaults = reproduce.notebook_parameters(RunConfig())
    for path in NOTEBOOKS:
        declared = pm.inspect_notebook(str(path))
        assert ast.literal_eval(declared["SETTINGS"]["default"]) is None  # no file: RunConfig's defaults
        for name, spec in declared.items():
            if name in ("RUN_DIR", "SETTINGS"):  # the notebooks write to runs/interactive, make to runs/<NAME>
                continue
            assert ast.literal_eval(spec["default"]) == defaults[name], f"{path.name}: {name}"
    assert {k for k in pm.inspect_notebook(str(NOTEBOOKS[3])) if k.startswith("M3_")} == {"M3_RECIPE", "M3_EPOCHS"}


def test_each_parameters_cell_fits_a_screen_holds_what_its_notebook_uses_and_the_headless_run_sets_it():
    import papermill as pm

    passed = reproduce.notebook_parameters(RunConfig())
    for path, most in zip(NOTEBOOKS, (10, 10, 10, 12, 10)):
        nb = nbformat.read(path, as_version=4)
        declared = pm.inspect_notebook(str(path))
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        lines = [line for line in cell.source.splitlines() if line.strip()]
        assert len(lines) <= most and len(lines) == len(declared), f"{path.name}: {len(lines)} lines"
        (config,) = [c for c in nb.cells if c.cell_type == "code" and "RunConfig.load(" in c.source]
        assert len(config.source.strip().splitlines()) == 1, f"{path.name}: the config cell is not one line"
        rest = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and c is not cell)
        for name, spec in declared.items():
            assert re.search(rf"\b{name}\b", rest), f"{path.name}: {name} is declared but never used"
            assert spec["help"], f"{path.name}: {name} has no comment"
        assert set(declared) <= set(passed), f"{path.name}: the headless run does not set {set(declared) - set(passed)}"
    assert set(pm.inspect_notebook(str(NOTEBOOKS[4]))) == {"SETTINGS", "RUN_DIR"}  # the comparison trains nothing
    assert "EPOCHS" not in pm.inspect_notebook(str(NOTEBOOKS[0]))


def test_a_parameter_the_headless_run_does_not_set_is_refused(tmp_path):
    nb = nbformat.read(NOTEBOOKS[4], as_version=4)
    nb.cells[1].source += "\nNEW_KNOB = 3          # a parameter nobody passes"
    nbformat.write(nb, tmp_path / "05.ipynb")
    with pytest.raises(ProjectError, match=r"05.ipynb: the parameters cell declares NEW_KNOB"):
        reproduce.run_notebook(tmp_path / "05.ipynb", tmp_path / "out.ipynb", {"RUN_DIR": "r", "SETTINGS": None})
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.slow
def test_a_reader_swaps_nadam_for_adam_in_notebook_03_and_the_run_says_adam(tmp_path):
    """The edit a person makes in JupyterLab - NAdam to Adam in the training cell - run as papermill runs
    it: the run's saved settings name Adam, and its checkpoints and results are its own."""
    import papermill as pm

    nb = nbformat.read(NOTEBOOKS[2], as_version=4)
    (cell,) = [c for c in nb.cells if "torch.optim.NAdam(" in c.source]
    cell.source = cell.source.replace("torch.optim.NAdam(", "torch.optim.Adam(")
    nbformat.write(nb, tmp_path / NOTEBOOKS[2].name)
    params = tiny_injection(tmp_path, tmp_path / NOTEBOOKS[2].name)
    pm.execute_notebook(str(tmp_path / NOTEBOOKS[2].name), str(tmp_path / "executed.ipynb"), parameters=params,
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS[2].parent))
    run = Path(params["RUN_DIR"]) / "model2_finetuned"
    saved = json.loads((run / "seed0" / "history.json").read_text())["settings"]
    assert (saved["optimizer"], saved["lr"], saved["loss"]) == ("Adam", 0.001, "BCEWithLogitsLoss")
    assert "amsgrad=False" in saved["optimizer_settings"]  # Adam's own settings, not NAdam's momentum_decay
    assert json.loads((run / "seed0" / "metrics.json").read_text())["training"]["optimizer"] == "Adam"
    assert json.loads((run / "summary.json").read_text())["training"]["optimizer"] == "Adam"
    assert torch.load(run / "seed0" / "checkpoint.pt", weights_only=True)["settings"]["optimizer"] == "Adam"
