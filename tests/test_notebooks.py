"""nbval over the four notebooks, and the headless pipeline, both on the tiny setting."""

import csv
import json
import math
import subprocess
import sys

import nbformat
import pytest
from PIL import Image

from helpers import reproduce
from helpers.experiment import RunConfig

from nbtiny import NOTEBOOKS, is_checked, parameterized_copies, tiny_parameters


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


def test_nbval_runs_all_four_notebooks(tmp_path):
    copies = parameterized_copies(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
         "-q", *map(str, copies)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    n_checked = sum(is_checked(c) for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells)
    assert n_checked >= 5 and " passed" in proc.stdout and "failed" not in proc.stdout


def _main_args(tmp_path, *extra):
    p = tiny_parameters(tmp_path)
    return ["--data", "synthetic", "--data-dir", p["DATA_DIR"], "--synthetic-train", "16", "--synthetic-test", "8",
            "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--encoder-weights", "none", "--runs-dir", str(tmp_path / "runs"), "--figures-dir", p["FIGURES_DIR"],
            "--cache-dir", p["CACHE_DIR"], *extra]


def test_headless_pipeline_writes_every_output(tmp_path, capsys):
    assert reproduce.main(_main_args(tmp_path, "--name", "t", "--seeds", "2", "--tta")) == 0
    out = capsys.readouterr().out
    assert "wall time per notebook" in out and "SYNTHETIC" in out and "2 seed(s)" in out
    run = tmp_path / "runs" / "t"
    for name in reproduce.FIGURES:
        with Image.open(tmp_path / "figures" / name) as img:
            img.verify()
            assert img.format == "PNG"
    results = json.loads((run / "results.json").read_text())
    assert results["data_source"].startswith("SYNTHETIC") and results["encoder_weights_used"] == "random"
    assert results["settings"]["EPOCHS"] == 1 and results["settings"]["SEEDS"] == 2 and results["device"] == "cpu"
    assert [r["comparison"] for r in results["paired_original_jaccard"]] == [
        "Model 2 (fine-tuned encoder) - Model 1 (frozen encoder)",
        "Model 3 (fine-tuned, U-Net decoder) - Model 2 (fine-tuned encoder)"]
    for pair in results["paired_original_jaccard"]:
        assert pair["ci_low"] <= pair["mean_difference"] <= pair["ci_high"] and pair["n_images"] == 8
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
            for csv_path, n_masks in ((folder / "per_image.csv", 0), (folder / "original" / "per_image.csv", 8)):
                with open(csv_path) as f:
                    rows = list(csv.DictReader(f))
                assert len(rows) == 8
                for r in rows:
                    j, d = float(r["jaccard"]), float(r["dice"])
                    assert d == pytest.approx(2 * j / (1 + j), abs=1e-9)
            assert len(list((folder / "original" / "masks").glob("ISIC_*_segmentation.png"))) == 8
            assert json.loads((folder / "original_tta" / "summary.json").read_text())["tta"] is True
    for name in reproduce.NOTEBOOKS:
        executed = nbformat.read(run / "notebooks" / name, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    html = (run / "report.html").read_text()
    assert "Model 3 (U-Net decoder)" in html and "data:image/png;base64" in html and "Gutman" in html

    # a finished run is never overwritten without --overwrite
    assert reproduce.main(_main_args(tmp_path, "--name", "t")) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_failing_notebook_is_named_and_kept(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        if path.name.startswith("02_"):
            nb.cells.insert(4, nbformat.v4.new_code_cell('raise RuntimeError("deliberate failure")'))
        nbformat.write(nb, notebooks / path.name)
    p = tiny_parameters(tmp_path)
    cfg = RunConfig(data="synthetic", data_dir=p["DATA_DIR"], synthetic_train=16, synthetic_test=8, image_size=64,
                    epochs=1, batch_size=8, device="cpu", encoder_weights=None, run_dir=str(tmp_path / "runs" / "b"),
                    figures_dir=p["FIGURES_DIR"], cache_dir=p["CACHE_DIR"], progress=False)
    with pytest.raises(reproduce.NotebookFailed) as err:
        reproduce.reproduce(cfg, html=False, log=lambda *a: None, notebooks_dir=notebooks)
    message = str(err.value)
    assert "02_model1_frozen_encoder.ipynb failed in cell 5" in message and "RuntimeError: deliberate failure" in message
    partial = tmp_path / "runs" / "b" / "notebooks" / "02_model1_frozen_encoder.ipynb"
    assert str(partial) in message and partial.is_file()
    executed = nbformat.read(partial, as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    assert not (tmp_path / "runs" / "b" / "notebooks" / "03_model2_finetuned.ipynb").exists()
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
