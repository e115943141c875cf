"""The comparison notebook's logic: our models beside the report's numbers, and the IoU correction.

Per image, Dice D and Jaccard J satisfy D = 2J / (1 + J), i.e. J = D / (2 - D). J <= D always,
and because J = D / (2 - D) is convex, Jensen's inequality bounds the mean IoU of a set of
images by its mean Dice: mean(D) / (2 - mean(D)) <= mean(J) <= mean(D).
"""

from __future__ import annotations

import pandas as pd

REPORT = {  # what the report states for its test set (one run each)
    "model1_frozen": {"label": "Model 1 (frozen encoder)", "dice": 0.752, "iou": 0.2985},
    "model2_finetuned": {"label": "Model 2 (fine-tuned encoder)", "dice": 0.862, "iou": 0.2985},
}
COLUMNS = ("jaccard", "dice", "accuracy", "sensitivity", "specificity")


def iou_bounds_from_dice(mean_dice: float) -> tuple[float, float]:
    """The interval that the mean IoU must lie in, given the mean Dice over the same images."""
    return mean_dice / (2 - mean_dice), mean_dice


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per model: our macro metrics, the report's Dice and IoU, and the IoU range its Dice implies."""
    rows = []
    for name, res in results.items():
        ours = res["metrics"]["macro"]
        rep = REPORT[name]
        lo, hi = iou_bounds_from_dice(rep["dice"])
        rows.append({"model": rep["label"], **{f"our {k}": ours[k] for k in COLUMNS},
                     "report Dice": rep["dice"], "report IoU": rep["iou"],
                     "IoU implied by report Dice": f"{lo:.3f}-{hi:.3f}"})
    return pd.DataFrame(rows).set_index("model").round(4)


def iou_correction(results: dict[str, dict]) -> pd.DataFrame:
    """Does each mean IoU lie where its mean Dice says it must? The report's do not; ours do."""
    rows = []
    for name, res in results.items():
        rep = REPORT[name]
        for who, iou, dice in (("report", rep["iou"], rep["dice"]),
                               ("ours", res["metrics"]["macro"]["jaccard"], res["metrics"]["macro"]["dice"])):
            lo, hi = iou_bounds_from_dice(dice)
            rows.append({"model": rep["label"], "source": who, "mean Dice": round(dice, 4),
                         "mean IoU": round(iou, 4), "allowed IoU range": f"{lo:.4f}-{hi:.4f}",
                         "consistent": bool(lo - 1e-9 <= iou <= hi + 1e-9)})
    return pd.DataFrame(rows).set_index(["model", "source"])


def paired_ious(a: list[dict], b: list[dict]) -> tuple[list[float], list[float]]:
    """Per-image IoU of two models on the same test images, matched by id."""
    by_id = {r["id"]: r["jaccard"] for r in b}
    if set(by_id) != {r["id"] for r in a}:
        raise ValueError("the two models were scored on different test images")
    return [r["jaccard"] for r in a], [by_id[r["id"]] for r in a]


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of b - a over paired images, with a percentile bootstrap interval over images."""
    import numpy as np

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size == 0:
        raise ValueError("no paired images to compare")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean_difference": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "n_images": int(diff.size), "b_better": int((diff > 0).sum()), "a_better": int((diff < 0).sum())}
