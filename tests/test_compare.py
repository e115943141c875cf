"""helpers.compare's challenge table: ours and the published ISIC 2016 results, each with its conditions."""

from helpers import compare


def _result(seeds=2, tta=False, **recipe):
    value = {"mean": 0.86, "std": 0.002, "per_seed": [0.86] * seeds}
    scores = {k: value for k in ("jaccard", "dice", "accuracy")}
    metrics = {"n_test": 161, "scored_split": "validation", "resolution": "128x128",
               "recipe": {"epochs": 50, "select": "last", "loss": "bce_lovasz", **recipe}}
    summary = {"data_source": "ISIC 2016 (real)", "scored_split": "validation", "original": scores,
               **({"original_tta": scores} if tta else {})}
    return {"summary": summary, "runs": [{"metrics": metrics}] * seeds}


def test_the_challenge_table_names_the_conditions_of_every_row():
    table = compare.challenge_table({"model3_unet": _result(tta=True)})
    assert list(table.columns) == ["jaccard", "dice", "accuracy", "conditions"]
    published = {p["jaccard"]: p["method"] for p in compare.PUBLISHED}
    assert {0.843, 0.877} <= set(published) and "winner" in published[0.843]
    best = table.loc[published[0.877]]
    assert best["jaccard"] == 0.877 and "512x512" in best["conditions"] and best["dice"] == "-"
    ours = table.iloc[0]
    assert ours["jaccard"] == "0.8600 ± 0.0020"
    assert "161 validation images" in ours["conditions"] and "128x128" in ours["conditions"]
    assert "2 seeds" in ours["conditions"] and "50 epochs, loss BCEWithLogitsLoss + Lovasz hinge" in ours["conditions"]
    assert "flips" in table.iloc[1]["conditions"]
    assert all(isinstance(c, str) and c for c in table["conditions"])
    assert "BatchNorm" not in ours["conditions"]
    frozen = compare.challenge_table({"model3_unet": _result(encoder_bn="frozen")}).iloc[0]["conditions"]
    assert frozen.endswith("Lovasz hinge, encoder BatchNorm statistics frozen")
    strong = compare.challenge_table({"model3_unet": _result(preset="strong", encoder_bn="frozen")}).iloc[0]
    assert "one seed" not in strong["conditions"] and "; recipe 'strong'; 50 epochs" in strong["conditions"]
    assert "deep supervision" not in strong["conditions"]
    deep = compare.challenge_table({"model3_unet": _result(preset="strong", encoder_bn="frozen", deep_supervision=0.5)})
    assert deep.iloc[0]["conditions"].endswith("statistics frozen, deep supervision (weight 0.5)")
    halved = compare.challenge_table({"model3_unet": _result(preset="strong", deep_supervision=0.5, lr=0.0005)})
    assert halved.iloc[0]["conditions"].endswith("deep supervision (weight 0.5), learning rate 0.0005")
    assert "recipe" not in compare.challenge_table({"model3_unet": _result(preset="default")}).iloc[0]["conditions"]
    one = compare.challenge_table({"model3_unet": _result(epochs=1)}).iloc[0]["conditions"]
    assert "; 1 epoch, loss" in one and "1 epochs" not in one


def test_the_challenge_table_without_results_still_shows_the_published_rows():
    table = compare.challenge_table({})
    assert len(table) == len(compare.PUBLISHED) and "conditions" in table.columns


def test_model3_seeds_scored_as_one_ensemble_reach_the_summary_and_the_challenge_table(tmp_path, train_only):
    import json

    import pytest

    from helpers import data, settings, training

    with pytest.raises(ValueError, match="needs seeds >= 2"):
        settings.RunConfig(m3_ensemble=True)
    c = settings.RunConfig(data="auto", data_dir=str(train_only), image_size=32, epochs=1, seeds=2, tta=True,
                             m3_ensemble=True, encoder_weights=None, run_dir=str(tmp_path / "run"),
                             cache_dir=str(tmp_path / "cache"), progress=False, device="cpu")
    d = data.prepare_data(c, log=lambda line: None)
    model = training.new_model(c, freeze_encoder=False, decoder="unet")
    training.train_seeds(c, d, model, "model3_unet", recipe=settings.model3_recipe(c))
    summary = json.loads((tmp_path / "run" / "model3_unet" / "summary.json").read_text())
    ensemble = summary["ensemble"]
    assert ensemble["seeds"] == [0, 1] and {"original", "original_tta"} <= set(ensemble)
    scored = (tmp_path / "run" / "model3_unet" / "ensemble" / "original" / "per_image.csv").read_text()
    assert sorted(line.split(",")[0] for line in scored.splitlines()[1:]) == sorted(d.val.ids)
    table = compare.challenge_table(compare.available_results(tmp_path / "run", log=None))
    rows = [m for m in table.index if "as one ensemble" in m]
    assert rows == ["Model 3 (fine-tuned, U-Net decoder) - ours, seeds 0+1 as one ensemble",
                    "Model 3 (fine-tuned, U-Net decoder) - ours, seeds 0+1 as one ensemble with flip TTA"]
    assert table.loc[rows[0], "jaccard"] == f"{ensemble['original']['jaccard']:.4f}"
    assert "one ensemble of 2 seeds" in table.loc[rows[0], "conditions"]


def test_the_notebook_shows_every_condition_whole_in_html_and_as_text():
    import html

    table = compare.challenge_table({"model3_unet": _result(tta=True, preset="strong", encoder_bn="frozen",
                                                            deep_supervision=0.5)})
    longest = max(table["conditions"], key=len)
    assert len(longest) > 150 and longest.endswith("the image and its two flips")
    assert html.escape(longest, quote=False) not in table._repr_html_()  # pandas alone cuts it
    shown = compare.Whole(table)
    assert all(html.escape(c, quote=False) in shown._repr_html_() for c in table["conditions"])
    assert 'class="dataframe"' in shown._repr_html_()
    assert all(c in repr(shown) for c in table["conditions"])
