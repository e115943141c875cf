"""Segmentation metrics with the ISIC challenge conventions.

Two steps: :func:`confusion` turns binary masks into per-image counts (TP, FP, FN, TN); the
metric functions are pure functions of those counts with an explicit reduction:

- ``"per_image"``: one value per image (a float64 tensor of shape N);
- ``"macro"``: the mean of the per-image values - the ISIC challenge headline;
- ``"micro"``: the metric of the counts summed over the dataset.

Conventions follow the official scorer (``isic-challenge-scoring``): 8-bit masks are positive
where the value is > 128, probabilities where they are >= 0.5 (logit >= 0); an image whose truth
and prediction are both empty scores 1.0 for Jaccard and Dice; sensitivity (specificity) is 1.0
when the truth has no positive (negative) pixel; threshold Jaccard is 0 below 0.65.
"""

from __future__ import annotations

import torch

from .images import MASK_THRESHOLD  # defined beside the mask reader, which imports no torch
THRESHOLD_JACCARD = 0.65
METRICS = ("accuracy", "sensitivity", "specificity", "jaccard", "threshold_jaccard", "dice")
REDUCTIONS = ("per_image", "macro", "micro")


def binarize_uint8(mask: torch.Tensor) -> torch.Tensor:
    """8-bit mask (any shape, values 0..255) -> bool, positive where value > 128."""
    return mask > MASK_THRESHOLD


def binarize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits -> bool at probability 0.5 (sigmoid(x) >= 0.5 exactly when x >= 0)."""
    return logits >= 0


def confusion(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image confusion counts.

    pred, truth: bool (or 0/1) tensors of shape N x ... (N images, any pixel shape).
    Returns an int64 tensor N x 4 with columns TP, FP, FN, TN.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != truth shape {tuple(truth.shape)}")
    p = pred.reshape(pred.shape[0], -1).bool()
    t = truth.reshape(truth.shape[0], -1).bool()
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    tn = (~p & ~t).sum(1)
    return torch.stack([tp, fp, fn, tn], dim=1).to(torch.int64)


def _reduce(num: torch.Tensor, den: torch.Tensor, empty: float, counts: torch.Tensor,
            reduction: str, fn) -> torch.Tensor:
    if reduction == "micro":
        return fn(counts.sum(0, keepdim=True), "per_image")[0]
    num, den = num.double(), den.double()
    per_image = torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, empty))
    if reduction == "per_image":
        return per_image
    if reduction == "macro":
        return per_image.mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _cols(counts: torch.Tensor):
    if counts.ndim != 2 or counts.shape[1] != 4:
        raise ValueError(f"counts must be N x 4 (TP, FP, FN, TN), got shape {tuple(counts.shape)}")
    return counts.unbind(1)


def jaccard(counts: torch.Tensor, reduction: str = "per_image") -> torch.Tensor:
    """TP / (TP + FP + FN); 1.0 when truth and prediction are both empty."""
    tp, fp, fn, _ = _cols(counts)
    return _reduce(tp, tp + fp + fn, 1.0, counts, reduction, jaccard)


def dice(counts: torch.Tensor, reduction: str = "per_image") -> torch.Tensor:
    """2 TP / (2 TP + FP + FN); 1.0 when truth and prediction are both empty."""
    tp, fp, fn, _ = _cols(counts)
    return _reduce(2 * tp, 2 * tp + fp + fn, 1.0, counts, reduction, dice)


def accuracy(counts: torch.Tensor, reduction: str = "per_image") -> torch.Tensor:
    """(TP + TN) / all pixels."""
    tp, fp, fn, tn = _cols(counts)
    return _reduce(tp + tn, tp + fp + fn + tn, 1.0, counts, reduction, accuracy)


def sensitivity(counts: torch.Tensor, reduction: str = "per_image") -> torch.Tensor:
    """TP / (TP + FN); 1.0 when the truth has no lesion pixel."""
    tp, _, fn, _ = _cols(counts)
    return _reduce(tp, tp + fn, 1.0, counts, reduction, sensitivity)


def specificity(counts: torch.Tensor, reduction: str = "per_image") -> torch.Tensor:
    """TN / (TN + FP); 1.0 when the truth has no background pixel."""
    _, fp, _, tn = _cols(counts)
    return _reduce(tn, tn + fp, 1.0, counts, reduction, specificity)


def threshold_jaccard(counts: torch.Tensor, reduction: str = "per_image",
                      threshold: float = THRESHOLD_JACCARD) -> torch.Tensor:
    """Jaccard where it is >= threshold, else 0 (the ISIC 2017+ ranking metric)."""
    if reduction == "micro":
        return threshold_jaccard(counts.sum(0, keepdim=True), "per_image", threshold)[0]
    j = jaccard(counts, "per_image")
    per_image = torch.where(j >= threshold, j, torch.zeros_like(j))
    if reduction == "per_image":
        return per_image
    if reduction == "macro":
        return per_image.mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


FUNCTIONS = {
    "accuracy": accuracy,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "jaccard": jaccard,
    "threshold_jaccard": threshold_jaccard,
    "dice": dice,
}


def all_metrics(counts: torch.Tensor, reduction: str = "macro") -> dict[str, float] | dict[str, torch.Tensor]:
    """Every metric of :data:`METRICS` for ``counts``: floats for macro/micro, tensors per image."""
    out = {name: FUNCTIONS[name](counts, reduction) for name in METRICS}
    if reduction == "per_image":
        return out
    return {name: float(value) for name, value in out.items()}


def image_blind_baselines(train_masks: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Macro Jaccard on ``truth`` of the predictions a model that ignores its image can make: all
    background, all lesion, and the prior (each pixel lesion where at least half of ``train_masks``
    are). A trained model must beat all three; one that does not has learnt nothing from the images.

    train_masks, truth: 0/1 or bool tensors N x 1 x S x S (the same S)."""
    truth = truth.bool()
    prior = (train_masks.float().mean(0, keepdim=True) >= 0.5).expand_as(truth)
    guesses = {"all background": torch.zeros_like(truth), "all lesion": torch.ones_like(truth), "prior": prior}
    return {name: float(jaccard(confusion(g, truth), "macro")) for name, g in guesses.items()}


def per_image_rows(ids: list[str], sizes, counts: torch.Tensor) -> list[dict]:
    """One dict per image: id, height, width (original size) and every metric of :data:`METRICS`."""
    per = all_metrics(counts, "per_image")
    return [{"id": ids[i], "height": int(sizes[i][0]), "width": int(sizes[i][1]),
             **{name: float(per[name][i]) for name in METRICS}} for i in range(len(ids))]
