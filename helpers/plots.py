"""One function per figure of the report: data in, matplotlib Figure out.

Every figure carries a footnote naming its data source and the encoder weights, so a figure
made on the synthetic demo set can never pass for an ISIC 2016 result. ``save_figure`` writes a
PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .io import atomic_path
from .progress import live_notebook

DPI = 110


class ReportFigure(Figure):
    """A matplotlib Figure whose text form is its title.

    A notebook shows a figure as its PNG image (matplotlib's inline support, ``%matplotlib inline``);
    the text form is what it shows where it cannot show the image (a terminal, a text diff), and it
    says which figure this is instead of matplotlib's ``<Figure size 700x420 with 1 Axes>``.
    """

    def __repr__(self) -> str:
        title = self.get_suptitle() or next((ax.get_title() for ax in self.axes if ax.get_title()), "untitled")
        return f"[figure: {' '.join(title.split())}]"


def provenance(data_source: str, encoder_weights: str | None = None) -> str:
    """Footnote text, e.g. 'data: synthetic demo set | encoder weights: random'."""
    text = f"data: {data_source}"
    return text + (f" | encoder weights: {encoder_weights}" if encoder_weights else "")


def _finish(fig: Figure, title: str, note: str) -> Figure:
    fig.suptitle(title, fontsize=12)
    fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=7 if len(note) > 70 else 8, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _np_image(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """3 x H x W (float [0,1] or uint8) -> H x W x 3 float for imshow."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    return arr / 255.0 if arr.dtype == np.uint8 else arr


def intensity_histograms(facts: dict, note: str) -> Figure:
    """Report Figure 1, from :func:`helpers.scorecard.data_facts`: left, one histogram of the intensity
    (0-1) of every pixel of every training image, all three channels pooled, with the peaks the
    scorecard finds (dashed) and the report's 0.3 and 0.6 (dotted); right, the histogram of the mask
    values (the share of pixels at each value)."""
    fig = ReportFigure(figsize=(11, 3.8))
    ax_img, ax_mask = fig.subplots(1, 2)
    counts, edges = np.asarray(facts["histogram"]["counts"], float), np.asarray(facts["histogram"]["edges"])
    ax_img.bar(edges[:-1], counts / counts.sum(), width=np.diff(edges), align="edge", color="0.55")
    for i, p in enumerate(facts["peaks"][:2]):
        ax_img.axvline(p, color="tab:red", linestyle="--", linewidth=1.2, label="peaks found" if i == 0 else None)
    for i, p in enumerate((0.3, 0.6)):
        ax_img.axvline(p, color="k", linestyle=":", linewidth=1.2, label="the report's peaks" if i == 0 else None)
    ax_img.set(title=f"Image intensities ({facts['histogram']['images']} training images, channels pooled)",
               xlabel="intensity (0-1)", ylabel="share of pixels", xlim=(0, 1))
    ax_img.legend(fontsize=8)
    values = facts["mask_values"]
    shares = [1 - facts["lesion_pixels"] if v == 0 else facts["lesion_pixels"] if v == 1 else np.nan for v in values]
    ax_mask.bar(values, shares, width=0.08, color="0.35")
    ax_mask.set(title="Mask values", xlabel="mask value", ylabel="share of pixels", xlim=(-0.25, 1.25),
                xticks=[0, 1])
    return _finish(fig, "Intensity histograms of the images and the masks", note)


def sample_grid(images: torch.Tensor, masks: torch.Tensor, ids: Sequence[str], note: str) -> Figure:
    """Report Figure 2: each sample image above its mask. images N x 3 x H x W, masks N x 1 x H x W."""
    n = len(images)
    fig = ReportFigure(figsize=(2.2 * n, 4.8))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_np_image(images[i]))
        axes[0, i].set_title(ids[i], fontsize=8)
        axes[1, i].imshow(masks[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return _finish(fig, "Sample images (top) and lesion masks (bottom)", note)


def loss_curves(histories: dict[str, list[dict]], note: str, title: str = "Training and test loss",
                objectives: dict[str, str] | None = None,
                others: dict[str, list[list[dict]]] | None = None) -> Figure:
    """Report Figures 3 and 6 (one model) or the comparison (several): loss per epoch.

    The scored split's loss is always the BCE with logits; ``objectives`` names, per model, a
    training loss that is not (e.g. "BCE + soft Dice"), which its training curve then says.
    ``others``: per model, the histories of its other seeds, drawn thin and faint behind it, so the
    spread over seeds shows beside the first seed's curves.
    """
    fig = ReportFigure(figsize=(7, 4.2))
    ax = fig.subplots()
    for i, (name, history) in enumerate(histories.items()):
        epochs = [row["epoch"] for row in history]
        colour = f"C{i}"
        prefix = f"{name}: " if len(histories) > 1 else ""
        objective = (objectives or {}).get(name)
        split = "test" if "test_loss" in history[0] else "val"
        extra = (others or {}).get(name) or []
        for k, other in enumerate(extra):
            label = f"{prefix}other seeds ({len(extra)})" if k == 0 else None
            for key, style in (("train_loss", "-"), (f"{split}_loss", "--")):
                ax.plot([row["epoch"] for row in other], [row[key] for row in other], style, color=colour, lw=0.9,
                        alpha=0.3, label=label if key == "train_loss" else None, zorder=1)
        ax.plot(epochs, [row["train_loss"] for row in history], "-o", ms=3, color=colour, zorder=2,
                label=f"{prefix}train" + (f" ({objective})" if objective else ""))
        ax.plot(epochs, [row[f"{split}_loss"] for row in history], "--s", ms=3, color=colour, zorder=2,
                label=f"{prefix}{'test' if split == 'test' else 'validation'}")
    if any((others or {}).values()):
        title += "\nfirst seed; faint: the other seeds"
    ax.set(xlabel="epoch", ylabel="loss per pixel (BCE with logits)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if len(histories) < 3 else 7)
    return _finish(fig, "", note)


def generalization(points: list[dict], note: str, title: str) -> Figure:
    """Mean Jaccard per data set (x) and model (colour), with its 95% interval over images as an
    error bar and each seed's mean as a faint dot. points: {"model", "data set", "mean", "ci_low",
    "ci_high", "per_seed"} each."""
    fig = ReportFigure(figsize=(8, 4.4))
    ax = fig.subplots()
    sets = list(dict.fromkeys(p["data set"] for p in points))
    models = list(dict.fromkeys(p["model"] for p in points))
    width = 0.8 / max(1, len(models))
    for m, model in enumerate(models):
        for p in (p for p in points if p["model"] == model):
            x = sets.index(p["data set"]) - 0.4 + width * (m + 0.5)
            ax.errorbar([x], [p["mean"]], yerr=[[p["mean"] - p["ci_low"]], [p["ci_high"] - p["mean"]]], fmt="o",
                        color=f"C{m}", capsize=4, ms=6, label=model if p["data set"] == sets[0] else None, zorder=2)
            ax.plot([x] * len(p["per_seed"]), p["per_seed"], "_", color=f"C{m}", ms=12, alpha=0.5, zorder=1)
    ax.set_xticks(range(len(sets)), [s.replace(": ", ":\n", 1) for s in sets], fontsize=8)
    ax.set(ylabel="mean Jaccard, original size", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=max(1, len(models)))
    return _finish(fig, "", note + " | bars: 95% bootstrap interval over images; ticks: each seed's mean")


def live_loss_curve(label: str, note: str, title: str, objective: str | None = None):
    """In a notebook a person watches (:func:`helpers.progress.live_notebook`), a function of a
    training's history that draws its loss curve in the running cell and redraws it in place after
    every epoch; None elsewhere, so headless runs hold only the saved figures."""
    if not live_notebook():
        return None
    from IPython.display import display

    handle = None

    def redraw(history: list[dict]) -> None:
        nonlocal handle
        fig = loss_curves({label: history}, note, title, {label: objective} if objective else None)
        if handle is None:
            handle = display(fig, display_id=True)
        else:
            handle.update(fig)
    return redraw


TRUE_COLOUR, PRED_COLOUR = "#00e000", "#ff00ff"  # outlines: green truth, magenta prediction


def outlines(ax, image: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor) -> None:
    """The image with the true (green) and predicted (magenta) lesion outlines drawn over it."""
    ax.imshow(_np_image(image))
    for m, colour, style in ((mask, TRUE_COLOUR, "-"), (pred, PRED_COLOUR, "--")):
        arr = m[0].float().cpu().numpy()
        if arr.min() < 0.5 <= arr.max():  # an empty or all-lesion mask has no outline
            ax.contour(arr, levels=[0.5], colors=colour, linewidths=1.4, linestyles=style)


def predictions(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor, ids: Sequence[str],
                ious: Sequence[float], title: str, note: str) -> Figure:
    """Report Figures 4/5/7/8: rows of image, true mask, predicted mask with the image's IoU (the
    report's columns), and a fourth column with both outlines over the image."""
    n = len(images)
    fig = ReportFigure(figsize=(10, 2.5 * n))
    axes = fig.subplots(n, 4, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_np_image(images[i]))
        axes[i, 0].set_title(f"{ids[i]}", fontsize=9)
        axes[i, 1].imshow(masks[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 1].set_title("true mask", fontsize=9)
        axes[i, 2].imshow(preds[i, 0].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 2].set_title(f"predicted, IoU {ious[i]:.3f}", fontsize=9)
        outlines(axes[i, 3], images[i], masks[i], preds[i])
        axes[i, 3].set_title("true (green), predicted (magenta)", fontsize=8)
    for ax in axes.ravel():  # frames stay visible, so an all-lesion or empty mask still shows
        ax.set_xticks([])
        ax.set_yticks([])
    return _finish(fig, title, note)


def iou_scatter(iou_a: Sequence[float], iou_b: Sequence[float], label_a: str, label_b: str, note: str) -> Figure:
    """Per-image IoU of model A (x) against model B (y), with the diagonal."""
    fig = ReportFigure(figsize=(5.2, 5.2))
    ax = fig.subplots()
    a, b = np.asarray(iou_a), np.asarray(iou_b)
    ax.scatter(a, b, s=14, alpha=0.7)
    ax.plot([0, 1], [0, 1], color="0.5", lw=1)
    better = int((b > a).sum())
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"{label_a} IoU", ylabel=f"{label_b} IoU", aspect="equal")
    ax.set_title(f"Per-image test IoU\n{label_b} better on {better} of {len(a)} images", fontsize=10)
    ax.grid(alpha=0.3)
    return _finish(fig, "", note)
