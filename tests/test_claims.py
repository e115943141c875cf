"""Numeric claims of README.md, measured by running the project's own code."""

import pytest

from helpers import experiment


@pytest.mark.slow
def test_model2_reaches_dice_085_on_the_synthetic_set(tmp_path):
    # The report's settings (128x128, 25 epochs, NAdam 0.001, batch 16), encoder from random init.
    cfg = experiment.RunConfig(data="synthetic", data_dir=str(tmp_path / "synthetic"), encoder_weights=None,
                               device="cpu", run_dir=str(tmp_path / "runs"), cache_dir=None, progress=False)
    d = experiment.prepare_data(cfg)
    assert (len(d.train), len(d.test)) == (240, 100)
    result = experiment.train_and_evaluate(cfg, d, experiment.new_model(cfg, freeze_encoder=False),
                                           "model2_finetuned")
    assert len(result["history"]) == 25
    assert result["metrics"]["macro"]["dice"] >= 0.85


@pytest.mark.long
def test_model3_beats_model2_on_original_size_jaccard_over_three_seeds(tmp_path):
    # Model 3 with its default recipe, as the main job trains it. Several minutes on 2 CPU cores, so not
    # part of `make test`: run it with `make test-long`.
    cfg = experiment.RunConfig(data="synthetic", data_dir=str(tmp_path / "synthetic"), encoder_weights=None,
                               device="cpu", seeds=3, run_dir=str(tmp_path / "runs"), cache_dir=None, progress=False)
    d = experiment.prepare_data(cfg)
    means = {}
    for name, decoder, recipe in (("model2_finetuned", "report", None),
                                  ("model3_unet", "unet", experiment.model3_recipe(cfg))):
        runs = experiment.train_seeds(cfg, d, experiment.new_model(cfg, freeze_encoder=False, decoder=decoder), name,
                                      recipe)
        means[name] = sum(r["metrics"]["original"]["macro"]["jaccard"] for r in runs) / len(runs)
    assert means["model3_unet"] > means["model2_finetuned"]
