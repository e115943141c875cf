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
        tables = sorted(run.glob("ablation-*.json"))
        if tables:  # an ablation: its own two files, the .md being what the .json makes
            assert sorted(p.name for p in run.iterdir()) == sorted(
                ["command.txt", tables[0].name, tables[0].with_suffix(".md").name]), run
            assert (run / "command.txt").read_text().startswith("python -m helpers.tools.ablation "), run
            made = published.ablation(json.loads(tables[0].read_text()))
            assert tables[0].with_suffix(".md").read_text().strip() == made, run
            assert "per_image" not in tables[0].read_text(), run
            continue
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


def _fake_recipe_run(root: Path, name: str, preset: str, epochs: int, per_seed: list, tta: str | None) -> None:
    (root / name).mkdir(parents=True)
    j = {"mean": sum(per_seed) / len(per_seed), "std": 0.001, "per_seed": per_seed}
    recipe = {"preset": preset, "epochs": epochs, "lr": 0.001, "image_size": 128, "augment": True, "loss": "bce_dice",
              "schedule": "cosine", "encoder_bn": "train", "deep_supervision": 0.0}
    m3 = {"seeds": [0, 1], "recipe": recipe, "original": {"jaccard": j}}
    if tta:
        m3["original_tta"] = {"jaccard": {**j, "mean": j["mean"] + 0.01}}
        m3["ensemble"] = {"original": {"jaccard": 0.5}, "original_tta": {"jaccard": 0.6}}
    (root / name / "results.json").write_text(json.dumps({"models": {"model3_unet": m3}, "settings": {"TTA": tta}}))


def test_the_recipes_table_puts_each_run_s_model_3_on_a_row(tmp_path):
    _fake_recipe_run(tmp_path, "a", "default", 25, [0.81, 0.83], None)
    _fake_recipe_run(tmp_path, "b", "strong", 50, [0.85, 0.87], "dihedral")
    made = published.render("<!-- published: a,b recipes -->\n<!-- /published -->", tmp_path).splitlines()
    assert made[3].startswith("| `default` | 25 epochs at lr 0.001, 128 px, augmentation, bce_dice, cosine")
    assert made[3].endswith("| 2 trainings of 25 epochs | 0.8100 / 0.8300 (seeds 0, 1) | 0.8200 ± 0.0010 | - | - | - |")
    assert made[4].endswith("| 2 trainings of 50 epochs; TTA: 8 passes an image | 0.8500 / 0.8700 (seeds 0, 1) "
                            "| 0.8600 ± 0.0010 | dihedral: 0.8700 ± 0.0010 | 0.5000 | 0.6000 (dihedral) |")
    with pytest.raises(SystemExit, match="takes one run"):
        published.render("<!-- published: a,b models -->\n<!-- /published -->", tmp_path)


def test_the_timings_table_is_the_run_s_notebook_seconds(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(
        {"notebook_seconds": {"01_data.ipynb": 10.4, "02_model1.ipynb": 3589.6}}))
    made = published.render("<!-- published: r timings -->\n<!-- /published -->", tmp_path).splitlines()
    assert made[1:4] == ["| 01 | 02 | all |", "| --- | --- | --- |", "| 10 s | 3590 s | 3600 s (1.0 h) |"]


def test_an_ablation_folder_publishes_the_ablation_s_own_table(tmp_path):
    from helpers.tools.ablation import table
    runs = [{"variant": "full", "seed": s, "recipe": {"decoder": "unet", "epochs": 25, "schedule": "cosine"}, "val_jaccard": v,
             "val_dice": v + 0.05, "train_seconds": 600.0} for s, v in ((0, 0.80), (1, 0.84))]
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "ablation-full-seeds0+1.json").write_text(json.dumps(
        {"header": "Model 3 ablation on x", "rows": table(runs), "runs": runs, "ensembles": []}))
    made = published.render("<!-- published: abl ablation -->\n<!-- /published -->", tmp_path).splitlines()
    assert made[1] == "Model 3 ablation on x"
    assert made[5].startswith("| full | decoder unet, epochs 25, schedule cosine | 2 | 0.820 ± 0.028 | - | - | 0.870 ± 0.028 | - | 10.0 ± 0.0 |")


def test_what_docs_say_of_the_ingredients_ablation_holds_in_its_committed_file():
    """docs/models.md reads the ingredients ablation in words; each point, checked on the committed numbers
    (mean validation Jaccard over the seeds; two seeds cannot tell apart less than SPREAD)."""
    SPREAD = 0.005
    rows = {r["variant"]: r for r in published.load("ablation-ingredients")["rows"]}
    j = {name: r["val_jaccard"]["mean"] for name, r in rows.items()}
    averages = lambda name: [j[f"{name} +ema{d}"] for d in ("0.99", "0.995", "0.998")]
    full = j["full"]
    assert full - j["report"] > 10 * SPREAD  # well above the report's recipe
    assert abs(full - j["report +ema0.998"]) < 0.01  # its moving average comes within 0.01 of full
    assert full - j["full-augment"] > SPREAD and max(averages("full-augment")) < full
    assert abs(full - j["full-dice"]) < SPREAD
    assert full - j["full-cosine"] > SPREAD and all(abs(a - full) < SPREAD for a in averages("full-cosine"))
    extras = [rows["full"]["val_jaccard_tta"]["mean"], rows["full"]["val_jaccard_dihedral"]["mean"], j["full ensemble"]]
    assert all(0 <= e - full < SPREAD for e in extras)
    assert sorted(rows["full"]["seeds"]) == [0, 1]
