"""The numbers the comparison states, against cases whose answer is known: the IoU the report's Dice
allows, the bootstrap intervals, and the verdict over seeds."""

import numpy as np
import pytest

from helpers import compare


def test_iou_bounds_from_dice_worked_by_hand():
    # J = D / (2 - D) per image; a mean Dice D bounds the mean IoU to [D / (2 - D), D]
    assert compare.iou_bounds_from_dice(0.862) == pytest.approx((0.862 / 1.138, 0.862))
    assert compare.iou_bounds_from_dice(0.862)[0] == pytest.approx(0.75747, abs=1e-5)
    assert compare.iou_bounds_from_dice(0.752)[0] == pytest.approx(0.60256, abs=1e-5)
    assert compare.iou_bounds_from_dice(1.0) == (1.0, 1.0) and compare.iou_bounds_from_dice(0.0) == (0.0, 0.0)
    # the bounds are attained: every image at the same Dice gives the lower one, Dice 0 or 1 images the upper
    d = np.array([0.5, 0.5])
    assert np.mean(d / (2 - d)) == pytest.approx(compare.iou_bounds_from_dice(0.5)[0])
    d = np.array([0.0, 1.0])
    assert np.mean(d / (2 - d)) == pytest.approx(compare.iou_bounds_from_dice(0.5)[1])


def _summary(dice, iou):
    return {"summary": {"macro": {"dice": {"mean": dice, "std": 0.0, "per_seed": [dice]},
                                  "jaccard": {"mean": iou, "std": 0.0, "per_seed": [iou]}}}}


def test_iou_correction_flags_the_reports_pairs_and_passes_consistent_ones():
    table = compare.iou_correction({"model1_frozen": _summary(0.70, 0.60),     # 0.70 / 1.30 = 0.538 <= 0.60 <= 0.70
                                    "model2_finetuned": _summary(0.80, 0.50)})  # 0.80 / 1.20 = 0.667 > 0.50
    m1, m2 = compare.MODELS["model1_frozen"], compare.MODELS["model2_finetuned"]
    assert table.loc[(m1, "report"), "allowed IoU range"] == "0.6026-0.7520"
    assert table.loc[(m2, "report"), "allowed IoU range"] == "0.7575-0.8620"
    assert not table.loc[(m1, "report"), "consistent"] and not table.loc[(m2, "report"), "consistent"]
    assert table.loc[(m1, "ours"), "consistent"]
    assert not table.loc[(m2, "ours"), "consistent"]  # an impossible pair of ours is flagged too
    assert table.loc[(m2, "ours"), "allowed IoU range"] == "0.6667-0.8000"


def test_bootstrap_of_constant_values_is_that_value():
    assert compare.bootstrap_ci([0.4] * 30) == pytest.approx((0.4, 0.4))


def test_bootstrap_interval_has_the_width_the_normal_theory_gives():
    # 50 zeros and 50 ones: mean 0.5, standard error sqrt(0.25 / 100) = 0.05, so about 0.5 -/+ 0.098
    lo, hi = compare.bootstrap_ci([0.0] * 50 + [1.0] * 50, n_boot=20000)
    assert lo == pytest.approx(0.402, abs=0.012) and hi == pytest.approx(0.598, abs=0.012)
    lo90, hi90 = compare.bootstrap_ci([0.0] * 50 + [1.0] * 50, n_boot=20000, level=0.9)
    assert lo < lo90 < 0.5 < hi90 < hi


def test_bootstrap_interval_covers_the_true_mean_about_95_times_in_100():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        lo, hi = compare.bootstrap_ci(rng.normal(0.3, 0.1, 60), n_boot=1000, seed=trial)
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_paired_bootstrap_is_b_minus_a_image_by_image():
    a = [0.2, 0.5, 0.7, 0.4]
    r = compare.paired_bootstrap(a, [x + 0.1 for x in a])
    assert r["mean_difference"] == pytest.approx(0.1) and (r["ci_low"], r["ci_high"]) == pytest.approx((0.1, 0.1))
    assert (r["n_images"], r["b_better"], r["a_better"]) == (4, 4, 0)
    r = compare.paired_bootstrap([0.5, 0.5, 0.9], [0.6, 0.4, 0.9])
    assert r["mean_difference"] == pytest.approx(0.0) and (r["b_better"], r["a_better"]) == (1, 1)
    assert r["ci_low"] < 0 < r["ci_high"]
    with pytest.raises(ValueError):
        compare.paired_bootstrap([], [])


def _seeds(per_seed):
    """A result with per-image Jaccard at the original size for each seed: {seed: [values]}."""
    return {"runs": [{"seed": s, "original": [{"id": f"ISIC_{i:07d}", "jaccard": v} for i, v in enumerate(values)]}
                     for s, values in per_seed.items()]}


def _verdicts(results):
    table = compare.paired_by_seed(results, pairs=(("model1_frozen", "model2_finetuned"),))
    return set(table["holds across seeds"]), table


def test_the_verdict_over_seeds():
    rng = np.random.default_rng(0)
    base = {s: list(rng.uniform(0.3, 0.7, 40)) for s in (0, 1, 2)}
    better = {s: [v + 0.1 + rng.normal(0, 0.02) for v in values] for s, values in base.items()}
    m1, m2 = compare.MODELS["model1_frozen"], compare.MODELS["model2_finetuned"]

    verdict, table = _verdicts({"model1_frozen": _seeds(base), "model2_finetuned": _seeds(better)})
    assert verdict == {f"yes: {m2} better"} and len(table) == 3
    assert (table["mean_difference"] > 0.08).all() and (table["ci_low"] > 0).all()
    verdict, _ = _verdicts({"model1_frozen": _seeds(better), "model2_finetuned": _seeds(base)})
    assert verdict == {f"yes: {m1} better"}
    # one seed where the two are the same up to noise: the difference does not hold across seeds
    mixed = {**better, 2: [v + rng.normal(0, 0.05) for v in base[2]]}
    verdict, table = _verdicts({"model1_frozen": _seeds(base), "model2_finetuned": _seeds(mixed)})
    assert verdict == {"no: an interval includes 0 or the seeds disagree"}
    assert table.loc[(f"{m2} - {m1}", 2), "ci_low"] < 0 < table.loc[(f"{m2} - {m1}", 2), "ci_high"]
    # the seeds disagree in sign
    flipped = {**better, 1: [v - 0.1 for v in base[1]]}
    verdict, _ = _verdicts({"model1_frozen": _seeds(base), "model2_finetuned": _seeds(flipped)})
    assert verdict == {"no: an interval includes 0 or the seeds disagree"}
    verdict, _ = _verdicts({"model1_frozen": _seeds({0: base[0]}), "model2_finetuned": _seeds({0: better[0]})})
    assert verdict == {"one seed only"}


def test_seeds_are_paired_seed_k_with_seed_k():
    # model 2's seed 1 is better than model 1's seed 1 only: paired across seeds the sign would differ
    a = {0: [0.5] * 20, 1: [0.2] * 20}
    b = {0: [0.4] * 20, 1: [0.3] * 20}
    _, table = _verdicts({"model1_frozen": _seeds(a), "model2_finetuned": _seeds(b)})
    assert list(table["mean_difference"]) == pytest.approx([-0.1, 0.1])
