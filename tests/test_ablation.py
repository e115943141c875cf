"""helpers.tools.ablation on a tiny training-only folder: variants over seeds, scored on held-out ids only."""

import json

import pytest

from helpers.tools import ablation
from helpers.errors import ProjectError


def test_variants_parse_from_presets_and_specs():
    assert ablation.parse_variant("full") == ("full", ablation.FULL)
    assert ablation.parse_variant("mine=augment:on,image_size:192") == ("mine", {"augment": "on", "image_size": 192})
    with pytest.raises(ProjectError, match="unknown variant"):
        ablation.parse_variant("nonesuch")
    with pytest.raises(ProjectError, match="unknown key 'colour'"):
        ablation.parse_variant("x=colour:red")


def test_a_rotation_needs_augmentation_on():
    assert ablation.augment_option({"augment": "on", "rotate": 0.0}) is True
    assert ablation.augment_option({"augment": "on", "rotate": 15.0}) == {"rotate": 15.0}
    assert ablation.augment_option({"augment": "off", "rotate": 0.0}) is False
    with pytest.raises(ProjectError, match="needs augment:on"):
        ablation.augment_option({"augment": "off", "rotate": 15.0})


@pytest.mark.parametrize("preset, recipe", [("full", "default"), ("strong-halflr", "strong")])
def test_the_presets_measured_for_the_named_recipes_train_what_the_main_job_trains(preset, recipe):
    from helpers.settings import RunConfig, model3_recipe

    cfg = RunConfig(epochs=25, m3_recipe=recipe)
    main = model3_recipe(cfg)
    as_keys = {"decoder": "unet", "image_size": main["image_size"], "epochs": main["epochs"],
               "augment": "on" if main["augment"] else "off", "loss": main["loss"], "schedule": main["schedule"],
               "encoder_lr": 1.0, "encoder_bn": main["encoder_bn"], "rotate": 0.0, "widths": "",
               "deep": main["deep_supervision"], "lr_factor": main["lr"] / cfg.lr}
    assert cfg.lr == 0.001  # the ablation's --lr default, so lr_factor times it is the main job's rate
    assert {**ablation.BASE, **ablation.VARIANTS[preset]} == as_keys
    assert main["select"] == "last"  # what the ablation keeps too


@pytest.mark.slow
def test_ablation_scores_each_variant_and_seed_on_the_validation_ids(train_only, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ablation, "EMA_DECAYS", (0.99, 0.995))  # two of the three: each is 3 more scorings a training
    out = tmp_path / "abl"
    args = ["--data-dir", str(train_only), "--encoder-weights", "none", "--seeds", "0", "1", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--quiet", "--variants",
            "plain=image_size:32,epochs:1", "recipe=image_size:32,epochs:2,augment:on,loss:bce_dice,schedule:cosine,encoder_bn:frozen,rotate:20,deep:0.5,lr_factor:0.5"]
    assert ablation.main(args) == 0
    printed = capsys.readouterr().out
    assert "| plain |" in printed and "| recipe |" in printed and "8 training / 2 validation images" in printed
    assert "batch size 16, learning rate 0.001 (times each variant's lr_factor)" in printed
    lines = {line.split(" | ")[0]: line for line in printed.splitlines() if line.startswith("| ")}
    assert "encoder_bn frozen" in lines["| recipe"] and "encoder_bn" not in lines["| plain"]  # named where changed
    assert "rotate 20.0" in lines["| recipe"] and "rotate" not in lines["| plain"]
    assert "deep 0.5" in lines["| recipe"] and "deep" not in lines["| plain"]
    settings = json.loads((out / "recipe" / "seed0" / "history.json").read_text())["settings"]
    assert settings["deep_supervision"] == 0.5 and settings["lr"] == 0.0005 and "lr_factor 0.5" in lines["| recipe"]
    plain = json.loads((out / "plain" / "seed0" / "history.json").read_text())["settings"]
    assert plain["deep_supervision"] == 0.0 and plain["lr"] == 0.001 and "lr_factor" not in lines["| plain"]
    assert "rotate=20.0" in settings["augment"] and "scale=[0.75, 1.25]" in settings["augment"]
    split = json.loads((out / "split.json").read_text())
    report = json.loads((out / "ablation-plain-recipe-seeds0+1.json").read_text())
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [("plain", 0), ("plain", 1), ("recipe", 0), ("recipe", 1)]
    for run in report["runs"]:
        scored = (out / run["variant"] / f"seed{run['seed']}" / "original" / "per_image.csv").read_text()
        assert sorted(line.split(",")[0] for line in scored.splitlines()[1:]) == split["validation_ids"]
        assert 0 <= run["val_jaccard"] <= 1 and run["train_seconds"] > 0
    rows = {r["variant"]: r for r in report["rows"]}
    row = rows["recipe"]
    assert row["recipe"]["loss"] == "bce_dice" and row["seeds"] == [0, 1] and row["val_jaccard"]["sd"] >= 0
    assert 0 <= row["val_jaccard_tta"]["mean"] <= 1 and 0 <= row["val_jaccard_dihedral"]["mean"] <= 1
    d4 = json.loads((out / "recipe" / "seed0" / "original_dihedral" / "summary.json").read_text())
    assert d4["tta_mode"] == "dihedral" and d4["macro"]["jaccard"] == pytest.approx(report["runs"][2]["val_jaccard_dihedral"])
    # free with the same trainings: a row per moving average of the weights, and the seeds as one ensemble
    assert list(rows) == [v for name in ("plain", "recipe") for v in
                          (name, *(f"{name} +ema{d}" for d in ablation.EMA_DECAYS), f"{name} ensemble")]
    assert rows["recipe +ema0.995"]["recipe"]["ema"] == 0.995 and "val_jaccard_best_epoch_working" not in rows["recipe +ema0.995"]
    ens = rows["recipe ensemble"]
    assert ens["ensemble"] and ens["seeds"] == [0, 1] and ens["val_jaccard"]["sd"] is None
    assert ens["train_seconds"]["mean"] == pytest.approx(sum(r["train_seconds"] for r in report["runs"][2:]))
    assert (out / "recipe" / "ensemble" / "original_tta" / "per_image.csv").is_file()
    assert "| recipe ensemble |" in printed and "0+1 (one ensemble)" in printed and "| recipe +ema0.99 |" in printed
    # a rerun reuses the finished trainings and their scores and gives the same table
    monkeypatch.setattr(ablation, "evaluate_checkpoint", lambda *a, **k: pytest.fail("a finished scoring was redone"))
    assert ablation.main(args) == 0
    assert json.loads((out / "ablation-plain-recipe-seeds0+1.json").read_text())["rows"] == report["rows"]
    # one seed of the same variants: a table of its own, the two-seed one kept
    assert ablation.main([*args[:5], "1", *args[7:]]) == 0
    one = json.loads((out / "ablation-plain-recipe-seeds1.json").read_text())
    assert [(r["variant"], r["seed"]) for r in one["runs"]] == [("plain", 1), ("recipe", 1)]
    assert json.loads((out / "ablation-plain-recipe-seeds0+1.json").read_text())["rows"] == report["rows"]


def test_a_folder_without_a_training_split_is_one_error_line(tmp_path, capsys):
    assert ablation.main(["--data-dir", str(tmp_path), "--encoder-weights", "none", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no ISIC 2016 training split" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_weights_file_named_relatively_reuses_the_trainings_made_with_its_absolute_path(train_only, tmp_path,
                                                                                           monkeypatch):
    import torch
    from torchvision.models import mobilenet_v2

    monkeypatch.setattr(ablation, "EMA_DECAYS", (0.99,))  # one moving average: fewer scorings, the same reuse
    weights = tmp_path / "w" / "encoder.pth"
    weights.parent.mkdir()
    torch.save(mobilenet_v2(weights=None).state_dict(), weights)
    args = ["--data-dir", str(train_only), "--seeds", "0", "--out", str(tmp_path / "abl"), "--cache-dir",
            str(tmp_path / "cache"), "--quiet", "--variants", "plain=image_size:32,epochs:1"]
    assert ablation.main(["--encoder-weights", str(weights), *args]) == 0
    first = json.loads((tmp_path / "abl" / "ablation-plain-seeds0.json").read_text())["runs"][0]
    monkeypatch.chdir(weights.parent)
    assert ablation.main(["--encoder-weights", "encoder.pth", *args]) == 0  # no "other settings" error
    again = json.loads((tmp_path / "abl" / "ablation-plain-seeds0.json").read_text())["runs"][0]
    assert again["train_seconds"] == first["train_seconds"] and again["weights"] == "file:encoder.pth"


def test_a_scoring_is_reused_only_for_the_same_ids_and_a_checkpoint_older_than_it(tmp_path):
    import os

    from helpers.io import write_csv, write_json

    ckpt, folder = tmp_path / "checkpoint.pt", tmp_path / "original"
    ckpt.write_bytes(b"weights")
    write_csv(folder / "per_image.csv", [{"id": "ISIC_0000001", "jaccard": 0.5}, {"id": "ISIC_0000002", "jaccard": 0.7}])
    write_json(folder / "summary.json", {"macro": {"jaccard": 0.6, "dice": 0.7}, "checkpoint": str(ckpt)})
    os.utime(ckpt, (1, 1))
    assert ablation._scored(folder, [ckpt], ["ISIC_0000002", "ISIC_0000001"])["macro"]["jaccard"] == 0.6
    assert ablation._scored(folder, [ckpt], ["ISIC_0000001"]) is None  # other ids
    other = tmp_path / "seed1.pt"
    other.write_bytes(b"weights")
    os.utime(other, (1, 1))
    assert ablation._scored(folder, [ckpt, other], ["ISIC_0000001", "ISIC_0000002"]) is None  # another ensemble
    os.utime(ckpt, None)
    os.utime(folder / "summary.json", (1, 1))
    assert ablation._scored(folder, [ckpt], ["ISIC_0000001", "ISIC_0000002"]) is None  # retrained since
