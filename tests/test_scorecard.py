"""The reproduction scorecard: each rule decides its verdict from the evidence, both ways, and says when
the report's numbers cannot be set beside this run's."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import scorecard
from helpers.model import build_model, decoder_facts
from helpers.scorecard import DIFFERS, HOLDS, IMPOSSIBLE, M1, M2, UNCHECKABLE, Evidence

ROOT = Path(__file__).resolve().parent.parent
ARCH = {"conv_transpose": 4, "dropout_after_each": [0.5] * 4, "input": [128, 128], "output": [128, 128]}


def _facts(source="isic2016", train=900, test=379, peaks=(0.31, 0.62), values=(0.0, 1.0), size=128):
    return {"source": source, "train_images": train, "test_images": test, "peaks": list(peaks),
            "mask_values": list(values), "lesion_pixels": 0.25, "image_size": size,
            "train_tensor_size": [size, size], "mask_tensor_size": [size, size]}


def _model(train_loss, test_loss, dice, per_image=None, weights="imagenet", optimizer="NAdam", seeds=(0,)):
    """One model's evidence as load_result returns it: the same per-epoch curves for every seed."""
    n = len(train_loss)
    runs = []
    for s in seeds:
        history = [{"epoch": e + 1, "train_loss": train_loss[e], "test_loss": test_loss[e], "test_dice": dice[e],
                    "test_iou": dice[e] / (2 - dice[e])} for e in range(n)]
        per = per_image or {f"ISIC_{i:07d}": 0.5 for i in range(20)}
        runs.append({"seed": s, "history": history, "original": [{"id": k, "jaccard": v} for k, v in per.items()],
                     "metrics": {"model": {"encoder_weights_used": weights}, "resolution": "128x128",
                                 "scored_split": "test", "architecture": ARCH,
                                 "training": {"optimizer": optimizer, "lr": 0.001, "loss": "BCEWithLogitsLoss"}}})
    final = {"per_seed": [dice[-1]] * len(seeds), "mean": dice[-1]}
    iou = dice[-1] / (2 - dice[-1])
    return {"runs": runs, "summary": {"macro": {"dice": final, "jaccard": {"per_seed": [iou] * len(seeds), "mean": iou}}}}


FALLING = [0.9 - 0.03 * e for e in range(25)]
RISING = [0.5 + 0.01 * e for e in range(25)]


def _row(ev, cid):
    found = {r["id"]: r for r in _rows(ev)}
    return found[cid]


def _rows(ev):
    original = scorecard.load_evidence
    scorecard.load_evidence = lambda run: ev
    try:
        return scorecard.rows("unused")
    finally:
        scorecard.load_evidence = original


def _evidence(data=None, **models):
    return Evidence(Path("."), {}, data if data is not None else _facts(), models)


def test_histogram_peaks_finds_both_modes_highest_first_and_one_in_a_unimodal_histogram():
    x = np.linspace(0, 1, 51)
    edges = x
    centres = (x[:-1] + x[1:]) / 2
    two = 2 * np.exp(-((centres - 0.3) / 0.05) ** 2) + np.exp(-((centres - 0.6) / 0.05) ** 2)
    assert scorecard.histogram_peaks(two * 1000, edges) == pytest.approx([0.3, 0.6], abs=0.02)
    one = np.exp(-((centres - 0.5) / 0.1) ** 2)
    assert scorecard.histogram_peaks(one * 1000, edges) == pytest.approx([0.5], abs=0.02)


def test_the_data_rows_decide_by_their_rules():
    assert _row(_evidence(_facts()), "1")["verdict"] == HOLDS
    assert _row(_evidence(_facts(train=800)), "1")["verdict"] == DIFFERS
    assert _row(_evidence(_facts(test=None, train=806)), "1")["verdict"] == UNCHECKABLE
    assert _row(_evidence(_facts(source="synthetic")), "1")["verdict"] == UNCHECKABLE
    assert _row(_evidence(_facts()), "2")["verdict"] == HOLDS
    assert _row(_evidence(_facts(peaks=(0.62, 0.31))), "2")["verdict"] == HOLDS  # the highest first
    assert _row(_evidence(_facts(peaks=(0.55, 0.78))), "2")["verdict"] == DIFFERS
    assert _row(_evidence(_facts(peaks=(0.45,))), "2")["verdict"] == DIFFERS
    assert _row(_evidence(_facts(source="synthetic")), "2")["verdict"] == UNCHECKABLE
    assert _row(_evidence(_facts()), "3")["verdict"] == HOLDS
    assert _row(_evidence(_facts(values=(0.0, 0.5, 1.0))), "3")["verdict"] == DIFFERS
    assert _row(_evidence(_facts()), "4")["verdict"] == HOLDS
    assert _row(_evidence(_facts(size=64)), "4")["verdict"] == DIFFERS


def test_the_reported_iou_is_impossible_in_numbers_on_any_data():
    ev = _evidence()
    for cid, bounds in (("7", "0.6028-0.7522"), ("13", "0.7575-0.8620")):
        row = _row(ev, cid)
        assert row["verdict"] == IMPOSSIBLE and bounds in row["why"], row
    row = _row(ev, "10")
    assert row["verdict"] == IMPOSSIBLE and "at most 0.4598" in row["why"] and "0.7575-0.8620" in row["why"]


def test_final_losses_and_dice_hold_near_the_reports_and_differ_far_from_them():
    near = _model([0.9] * 24 + [0.47], [0.9] * 24 + [0.41], RISING[:24] + [0.76])
    far = _model([0.9] * 24 + [0.11], [0.9] * 24 + [0.43], RISING[:24] + [0.78])
    assert _row(_evidence(**{M1: near}), "6")["verdict"] == HOLDS
    assert _row(_evidence(**{M1: near}), "7a")["verdict"] == HOLDS
    assert _row(_evidence(**{M1: far}), "6")["verdict"] == DIFFERS
    assert _row(_evidence(**{M1: far}), "7a")["verdict"] == DIFFERS
    row = _row(_evidence(_facts(source="synthetic"), **{M1: near}), "6")
    assert row["verdict"] == UNCHECKABLE and "synthetic" in row["why"]
    random = _model([0.9] * 24 + [0.47], [0.9] * 24 + [0.41], RISING[:24] + [0.76], weights="random")
    assert "random encoder" in _row(_evidence(**{M1: random}), "6")["why"]
    adam = _model([0.9] * 24 + [0.47], [0.9] * 24 + [0.41], RISING[:24] + [0.76], optimizer="Adam")
    row = _row(_evidence(**{M1: adam}), "7a")
    assert row["verdict"] == UNCHECKABLE and "Adam" in row["why"]
    short = _model([0.9, 0.47], [0.9, 0.41], [0.7, 0.76])
    assert "epochs 2" in _row(_evidence(**{M1: short}), "6")["why"]


def test_model1_trends_follow_the_curves():
    peak4 = [0.5, 0.6, 0.7, 0.8] + [0.75 - 0.02 * e for e in range(21)]
    zigzag = [0.5, 0.6, 0.55, 0.65, 0.6] + [0.58 - 0.01 * e for e in range(20)]
    ev = _evidence(**{M1: _model(peak4, zigzag, RISING[:24] + [0.72])})
    assert [_row(ev, c)["verdict"] for c in ("8", "9", "11")] == [HOLDS, HOLDS, HOLDS]
    ev = _evidence(**{M1: _model(FALLING, FALLING, FALLING)})
    assert [_row(ev, c)["verdict"] for c in ("8", "9", "11")] == [DIFFERS, DIFFERS, DIFFERS]
    assert "highest at epoch 1" in _row(ev, "8")["this_run"]
    ev = _evidence(**{M1: _model(peak4, zigzag, RISING)})  # rises, but to 0.74 - within 0.05 of 0.7
    assert _row(ev, "11")["verdict"] == HOLDS
    ev = _evidence(**{M1: _model(peak4, zigzag, [0.8 + 0.005 * e for e in range(25)])})  # rises, to 0.92
    assert _row(ev, "11")["verdict"] == DIFFERS


def test_model2_falls_at_every_epoch_or_names_the_epoch_it_rose():
    bump = FALLING[:10] + [FALLING[9] + 0.01] + FALLING[11:]
    ev = _evidence(**{M2: _model(FALLING, bump, RISING)})
    assert _row(ev, "14")["verdict"] == HOLDS and _row(ev, "16")["verdict"] == HOLDS
    row = _row(ev, "15")
    assert row["verdict"] == DIFFERS and "rises at epoch 11" in row["this_run"]


def test_fine_tuning_beats_freezing_only_when_every_seeds_interval_is_above_zero():
    rng = np.random.default_rng(0)
    ids = [f"ISIC_{i:07d}" for i in range(60)]
    low = dict(zip(ids, rng.uniform(0.4, 0.6, 60)))
    high = {k: v + 0.1 for k, v in low.items()}
    m_low = _model(FALLING, FALLING, RISING, per_image=low, seeds=(0, 1))
    m_high = _model(FALLING, FALLING, RISING, per_image=high, seeds=(0, 1))
    assert _row(_evidence(**{M1: m_low, M2: m_high}), "17")["verdict"] == HOLDS
    assert _row(_evidence(**{M1: m_high, M2: m_low}), "17")["verdict"] == DIFFERS
    same = _model(FALLING, FALLING, RISING, per_image=low, seeds=(0, 1))
    assert _row(_evidence(**{M1: m_low, M2: same}), "17")["verdict"] == DIFFERS


def test_the_model_that_goes_back_and_forth_fluctuates_more():
    assert scorecard.back_and_forth([3, 2, 1]) == 0
    assert scorecard.back_and_forth([1, 2, 1]) == 1
    zig = [0.5 + (0.05 if e % 2 else 0) - 0.005 * e for e in range(25)]
    jumpy, smooth = _model(zig, zig, [1 - v for v in zig]), _model(FALLING, FALLING, RISING)
    assert _row(_evidence(**{M1: jumpy, M2: smooth}), "18")["verdict"] == HOLDS
    assert _row(_evidence(**{M1: smooth, M2: jumpy}), "18")["verdict"] == DIFFERS


def test_a_missing_notebook_is_named_and_every_claim_keeps_its_row():
    ev = Evidence(Path("."), {}, None, {})
    found = _rows(ev)
    assert [r["id"] for r in found] == [c[0] for c in scorecard.CLAIMS]
    assert _row(ev, "1")["why"] == "not measured: run 01_data_exploration.ipynb"
    assert _row(ev, "12")["why"] == "not measured: run 03_model2_finetuned.ipynb"
    assert _row(ev, "7")["verdict"] == IMPOSSIBLE  # the report's own numbers need no run
    assert "impossible as reported" in scorecard.tally(found) and "not measured yet" in scorecard.tally(found)


def test_the_decoder_row_reads_the_model_that_trained():
    torch.manual_seed(0)
    model = build_model(freeze_encoder=True, encoder_weights=None)
    facts = decoder_facts(model, 64)
    assert facts["conv_transpose"] == 4 and facts["dropout_after_each"] == [0.5] * 4
    assert facts["output"] == facts["input"] == [64, 64] and model.training
    m1 = _model(FALLING, FALLING, RISING)
    m1["runs"][0]["metrics"]["architecture"] = facts
    assert _row(_evidence(**{M1: m1}), "5")["verdict"] == HOLDS
    for layer in model.decoder.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.2
    m1["runs"][0]["metrics"]["architecture"] = decoder_facts(model, 64)
    row = _row(_evidence(**{M1: m1}), "5")
    assert row["verdict"] == DIFFERS and "Dropout(0.2, 0.2, 0.2, 0.2)" in row["this_run"]


def test_every_rule_is_stated_in_the_docs_as_the_code_applies_it():
    text = " ".join((ROOT / "docs" / "scorecard.md").read_text().split()).lower()
    for name, rule in scorecard.RULES.items():
        assert rule.lower() in text, name
    for cid, _, claim, *_ in scorecard.CLAIMS:
        assert f"| {cid} | {claim} |".lower() in text, cid


def test_the_tiny_runs_results_hold_every_claim_with_its_values_rule_and_verdict(headless_run):
    """results.json of the tiny main job (synthetic set, 2 epochs, 2 seeds): every claim is there; the rows
    that compare with the report's ISIC numbers cannot be checked on it, the report's IoU is impossible,
    and each row's numbers are this run's own."""
    import json

    results = json.loads((headless_run.run / "results.json").read_text())
    found = {r["id"]: r for r in results["scorecard"]}
    assert list(found) == [c[0] for c in scorecard.CLAIMS]
    for r in found.values():
        assert r["claim"] and r["report"] and r["this_run"] and r["rule"] and r["why"], r
        assert r["verdict"] in scorecard.VERDICTS, r
    assert {c: found[c]["verdict"] for c in ("1", "2", "6", "7a", "12", "13a")} == dict.fromkeys(
        ("1", "2", "6", "7a", "12", "13a"), UNCHECKABLE)
    assert [found[c]["verdict"] for c in ("7", "10", "13")] == [IMPOSSIBLE] * 3
    assert found["3"]["verdict"] == HOLDS and found["5"]["verdict"] == HOLDS
    assert found["4"]["run_value"] == 64 and found["4"]["verdict"] == DIFFERS
    history = json.loads((headless_run.run / M2 / "seed1" / "history.json").read_text())["history"]
    assert found["12"]["run_value"]["train"][1] == history[-1]["train_loss"]
    assert "2 epochs" in found["14"]["why"] and found["14"]["verdict"] == UNCHECKABLE
    assert len(found["17"]["run_value"]) == 2 and found["17"]["verdict"] in (HOLDS, DIFFERS)
