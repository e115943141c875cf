"""The numbers README.md and docs/ publish are made from the committed results files, and a stale one fails."""

import json
import shutil
from pathlib import Path

import pytest

from helpers.tools import published

ROOT = Path(__file__).resolve().parent.parent


def test_every_published_block_is_what_the_committed_results_make():
    assert published.main(["--check"]) == 0


def test_the_results_folders_hold_numbers_and_the_command_only():
    runs = sorted(p for p in (ROOT / "results").iterdir() if p.is_dir())
    assert runs, "no committed results"
    for run in runs:
        assert sorted(p.name for p in run.iterdir()) == ["command.txt", "results.json"], run
        assert (run / "command.txt").read_text().startswith("make reproduce ")
        text = (run / "results.json").read_text()
        assert "per_image" not in text and len(text) < 200_000, run
        assert json.loads(text)["scorecard"], run


def _fake_results(root: Path, dice: float) -> None:
    (root / "r").mkdir(parents=True)
    spread = {"mean": dice, "std": 0.01, "per_seed": [dice - 0.01, dice + 0.01]}
    model = {"seeds": [0, 1], "macro": {"dice": spread}, "original": {"jaccard": spread, "dice": spread}}
    (root / "r" / "results.json").write_text(json.dumps({"models": {"model2_finetuned": model}}))


def test_a_hand_edited_or_stale_number_is_found(tmp_path):
    _fake_results(tmp_path, 0.8)
    page = "before\n<!-- published: r models -->\nold\n<!-- /published -->\nafter\n"
    made = published.render(page, tmp_path)
    assert "| Model 2, fine-tuned | 0, 1 | 0.800 ± 0.010 | 0.800 ± 0.010 | 0.800 ± 0.010 | - | 0.862 |" in made
    assert made.startswith("before\n") and made.endswith("after\n")
    assert published.render(made, tmp_path) == made
    assert published.render(made.replace("0.800 ± 0.010 | 0.800", "0.810 ± 0.010 | 0.800", 1), tmp_path) == made
    shutil.rmtree(tmp_path / "r")
    _fake_results(tmp_path, 0.7)  # the run made again: the page is stale
    assert published.render(made, tmp_path) != made


def test_a_block_naming_a_missing_run_or_table_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match="results.json: missing"):
        published.render("<!-- published: nothing models -->\n<!-- /published -->", tmp_path)
    _fake_results(tmp_path, 0.8)
    with pytest.raises(SystemExit, match="table 'nonsense'"):
        published.render("<!-- published: r nonsense -->\n<!-- /published -->", tmp_path)
