"""The reproduction scorecard: each checkable claim of the report, its value there and in this run,
the rule that decides it, and a verdict.

Every row is computed from what the notebooks saved in the run folder: ``data_facts.json``
(notebook 01, :func:`save_data_facts`) and each model's ``summary.json``, ``metrics.json``,
``history.json`` and per-image rows (notebooks 02 and 03). A row whose evidence is not there yet says
which notebook makes it. The rules are fixed here, stated in docs/scorecard.md, and never depend on
the outcome.

Verdicts: ``holds``, ``differs``, ``impossible as reported`` (the report's own numbers contradict
each other), ``cannot be checked on this data`` (a number of the report's ISIC 2016 setting beside a
run on other data or under other settings; or a trend with too few epochs). Trends, orderings and the
impossible IoU are computed on any data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .compare import MODELS, Whole, iou_bounds_from_dice, paired_bootstrap, paired_ious, seed_jaccards
from .io import write_json
from .training import load_result

HOLDS, DIFFERS, IMPOSSIBLE, UNCHECKABLE = ("holds", "differs", "impossible as reported",
                                           "cannot be checked on this data")
VERDICTS = (HOLDS, DIFFERS, IMPOSSIBLE, UNCHECKABLE)
DATA_FACTS = "data_facts.json"  # in the run folder, written by notebook 01
M1, M2 = "model1_frozen", "model2_finetuned"

# the report's setting: its numbers can be set beside a run's only when the run shares it
REPORT_SETTING = {"image_size": 128, "epochs": 25, "lr": 0.001, "optimizer": "NAdam", "loss": "BCEWithLogitsLoss"}
LOSS_TOLERANCE = 0.10   # of the report's value
DICE_TOLERANCE = 0.02   # absolute, on the 0-1 scale
PEAK_TOLERANCE = 0.10   # intensity, on the 0-1 scale
TREND = 0.5             # |Spearman rank correlation with the epoch| for "rises" / "falls on the whole"
HIST_BINS, HIST_SMOOTH, PEAK_MIN = 50, 5, 0.10

RULES = {
    "count": "holds when the data has 900 training and 379 test images, each with a mask; differs for other "
             "counts; cannot be checked without a test split or on the synthetic set",
    "peaks": f"the pooled intensity histogram of the training images ({HIST_BINS} bins on 0-1, smoothed over "
             f"{HIST_SMOOTH} bins) has local maxima of at least {PEAK_MIN:.0%} of its highest; holds when there are "
             f"two or more and the two highest lie within {PEAK_TOLERANCE} of 0.3 and 0.6",
    "binary": "holds when the masks at the working size hold the values 0 and 1 and no other",
    "size": "holds when the images and the masks the models train on are 128x128",
    "decoder": "holds when Model 1's decoder has four ConvTranspose2d layers, each followed by Dropout(p=0.5) "
               "before the next, and the model's output is interpolated to its input's size",
    "losses": f"the last epoch's losses; holds when each of the report's values lies within this run's range over "
              f"seeds widened by {LOSS_TOLERANCE:.0%} of the report's value",
    "dice": f"the mean test Dice at the working size after the last epoch; holds when the report's value lies "
            f"within this run's range over seeds widened by {DICE_TOLERANCE}",
    "pair": "a mean IoU J and a mean Dice D over the same images satisfy D/(2-D) <= J <= D (per image "
            "J = D/(2-D), convex); impossible as reported when the report's pair breaks it",
    "peak4": f"in every seed the training loss is highest at epoch 4 and falls on the whole after it (Spearman "
             f"correlation with the epoch <= -{TREND} and the last below the peak)",
    "fluct5": f"in every seed the test loss both rises and falls between epochs 1 and 5, and falls on the whole "
              f"from epoch 5 to the last (Spearman <= -{TREND}, the last below epoch 5's)",
    "iou_const": "over the same images a mean IoU J allows a mean Dice of at most 2J/(1+J) (as J >= D/(2-D)): "
                 "0.4598 for J = 0.2985; a Dice above it at any epoch makes that IoU impossible as reported; this "
                 "run's per-epoch IoU is shown beside it",
    "rise": f"in every seed the test Dice rises on the whole (Spearman >= {TREND}, the last above the first); "
            f"on the report's setting its last value also lies within 0.05 of 0.7",
    "fall_every": "in every seed the loss is lower after every epoch than after the one before",
    "rise_m2": f"in every seed the test Dice rises on the whole (Spearman >= {TREND}, the last above the first)",
    "beats": "per image at the original size, Model 2's Jaccard minus Model 1's, seed k against seed k: holds "
             "when every seed's 95% bootstrap interval (10,000 resamples of the images) lies above 0",
    "fluctuates": "back-and-forth per epoch, (sum of |change| - |last - first|) / (epochs - 1), averaged over "
                  "seeds, of the training loss, the test loss and the test Dice: holds when Model 1's is the "
                  "larger for all three",
}

CLAIMS = [  # id, section, the claim, the report's value as text and as numbers, its rule
    ("1", "data", "900 training and 379 test images, each with a mask", "900 training, 379 test, each with a mask",
     {"train": 900, "test": 379}, "count"),
    ("2", "data", "the image intensity histogram is bimodal, with peaks near 0.3 and 0.6", "peaks near 0.3 and 0.6",
     [0.3, 0.6], "peaks"),
    ("3", "data", "the masks are binary: their histogram has two bars, at 0 and 1", "two bars, at 0 and 1", [0, 1],
     "binary"),
    ("4", "data", "images and masks are resized to 128x128", "128x128", 128, "size"),
    ("5", M1, "the decoder: four ConvTranspose2d layers, Dropout(0.5) after each, a final interpolation to the "
              "input size (128)", "4 ConvTranspose2d, each with Dropout(0.5); output interpolated to 128x128",
     {"conv_transpose": 4, "dropout_after_each": [0.5] * 4, "output": "the input's size"}, "decoder"),
    ("6", M1, "Model 1's final losses: train 0.4830, test 0.3972", "train 0.4830, test 0.3972",
     {"train": 0.4830, "test": 0.3972}, "losses"),
    ("7", M1, "Model 1's test IoU 0.2985 and Dice 0.7522", "IoU 0.2985, Dice 0.7522", {"iou": 0.2985, "dice": 0.7522},
     "pair"),
    ("7a", M1, "Model 1's test Dice 0.7522", "Dice 0.7522", 0.7522, "dice"),
    ("8", M1, "Model 1's training loss peaks at epoch 4 and falls after it", "highest at epoch 4, falling after",
     {"peak_epoch": 4}, "peak4"),
    ("9", M1, "Model 1's test loss fluctuates until epoch 5, then falls on the whole",
     "up and down to epoch 5, falling after", {"until_epoch": 5}, "fluct5"),
    ("10", M1, "the test IoU stays at 0.2985 after epoch 5", "IoU 0.2985 at every epoch from 5 on", 0.2985,
     "iou_const"),
    ("11", M1, "Model 1's test Dice rises over the epochs, to about 0.7", "rising, to about 0.7", 0.7, "rise"),
    ("12", M2, "Model 2's final losses: train 0.0927, test 0.1578", "train 0.0927, test 0.1578",
     {"train": 0.0927, "test": 0.1578}, "losses"),
    ("13", M2, "Model 2's test IoU 0.2985 and Dice 0.8620", "IoU 0.2985, Dice 0.8620", {"iou": 0.2985, "dice": 0.8620},
     "pair"),
    ("13a", M2, "Model 2's test Dice 0.8620", "Dice 0.8620", 0.8620, "dice"),
    ("14", M2, "Model 2's training loss falls at every epoch", "falls at every epoch", None, "fall_every"),
    ("15", M2, "Model 2's test loss falls at every epoch", "falls at every epoch", None, "fall_every"),
    ("16", M2, "Model 2's test Dice rises over the epochs", "rising", None, "rise_m2"),
    ("17", "comparison", "fine-tuning beats freezing: Model 2 above Model 1, per image, across seeds",
     "Model 2 better (Dice 0.862 against 0.752)", {"model2_dice": 0.862, "model1_dice": 0.752}, "beats"),
    ("18", "comparison", "Model 1 fluctuates more than Model 2 from epoch to epoch (losses and metrics)",
     "Model 1 fluctuates more", None, "fluctuates"),
]
SECTIONS = {"data": "01_data_exploration.ipynb", M1: "02_model1_frozen_encoder.ipynb",
            M2: "03_model2_finetuned.ipynb", "comparison": "05_comparison.ipynb"}
DATA_INDEPENDENT = ("4", "5", "7", "10", "13")  # their verdicts do not depend on the data (nbval checks them)


# ---- the data's facts (notebook 01) ---------------------------------------------------------------------

def histogram_peaks(counts, edges, smooth: int = HIST_SMOOTH, minimum: float = PEAK_MIN) -> list[float]:
    """Centres of the local maxima of a histogram smoothed by a moving average over ``smooth`` bins,
    each at least ``minimum`` of the highest, highest first."""
    counts = np.asarray(counts, dtype=float)
    s = np.convolve(counts, np.ones(smooth) / smooth, mode="same")
    centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    padded = np.concatenate([[-np.inf], s, [-np.inf]])
    peaks = [i for i in range(len(s)) if padded[i + 1] > padded[i] and padded[i + 1] >= padded[i + 2]
             and s[i] >= minimum * s.max()]
    return [round(float(centres[i]), 3) for i in sorted(peaks, key=lambda i: -s[i])]


def data_facts(d, image_size: int) -> dict:
    """What rows 1-4 need of a run's data (helpers.data.Data): counts, the pooled intensity histogram of
    the training images, the mask values, the working size."""
    import torch

    train_folder = len(d.train) + (len(d.val) if d.val is not None else 0)
    counts = torch.histc(d.train.images.float() / 255, bins=HIST_BINS, min=0, max=1)
    edges = np.linspace(0, 1, HIST_BINS + 1)
    masks = [ds.masks for ds in (d.train, d.val, d.test) if ds is not None]
    values = sorted({float(v) for m in masks for v in m.unique().tolist()})
    lesion = float(sum(m.float().sum() for m in masks) / sum(m.numel() for m in masks))
    return {"source": d.source, "label": d.label, "train_images": train_folder,
            "test_images": None if d.test is None else len(d.test), "masks_per_image": 1,
            "histogram": {"counts": [int(c) for c in counts.tolist()], "edges": [round(float(e), 4) for e in edges],
                          "images": len(d.train)},
            "peaks": histogram_peaks(counts.numpy(), edges), "mask_values": values, "lesion_pixels": round(lesion, 4),
            "image_size": int(image_size), "train_tensor_size": list(d.train.images.shape[-2:]),
            "mask_tensor_size": list(d.train.masks.shape[-2:])}


def save_data_facts(cfg, d) -> dict:
    """data_facts(d) written to the run folder, where the scorecard reads it. Returns it."""
    facts = data_facts(d, cfg.image_size)
    write_json(Path(cfg.run_path) / DATA_FACTS, facts)
    return facts


# ---- the run's evidence ---------------------------------------------------------------------------------

@dataclass
class Evidence:
    run: Path
    settings: dict
    data: dict | None
    models: dict = field(default_factory=dict)  # name -> load_result(...)


def load_evidence(run: str | Path) -> Evidence:
    run = Path(run)
    settings = _read(run / "settings.json") or {}
    models = {}
    for name in (M1, M2):
        if (run / name / "summary.json").is_file():
            models[name] = load_result(run, name)
    return Evidence(run, settings, _read(run / DATA_FACTS), models)


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _series(run: dict, what: str) -> list[float]:
    """One seed's per-epoch values: "train_loss", or the scored split's "loss", "dice", "iou"."""
    if what == "train_loss":
        return [r["train_loss"] for r in run["history"]]
    keys = [k for k in run["history"][0] if k.endswith(f"_{what}") and k != "train_loss"]
    return [r[keys[0]] for r in run["history"]]


def spearman(values) -> float:
    """Rank correlation of a series with its index (1 for a strictly rising series)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or np.all(v == v[0]):
        return 0.0
    ranks = pd.Series(v).rank().to_numpy()
    return float(np.corrcoef(np.arange(len(v)), ranks)[0, 1])


def rises(v) -> bool:
    return len(v) >= 2 and spearman(v) >= TREND and v[-1] > v[0]


def falls_on_whole(v) -> bool:
    return len(v) >= 2 and spearman(v) <= -TREND and v[-1] < v[0]


def falls_every_epoch(v) -> bool:
    return len(v) >= 2 and all(b < a for a, b in zip(v, v[1:]))


def back_and_forth(v) -> float:
    """(sum of |change| - |last - first|) / (len - 1): 0 for a monotone series."""
    v = np.asarray(v, dtype=float)
    return float((np.abs(np.diff(v)).sum() - abs(v[-1] - v[0])) / (len(v) - 1))


def _unlike_report(ev: Evidence, name: str) -> str | None:
    """Why this run's numbers for ``name`` cannot be set beside the report's, or None when they can."""
    if ev.data and ev.data.get("source") == "synthetic":
        return "the synthetic demo set, not ISIC 2016"
    run = ev.models[name]["runs"][0]
    used = run["metrics"]["model"].get("encoder_weights_used", "")
    if used.startswith("random"):
        return "a random encoder; the report's is ImageNet-pretrained"
    training = run["metrics"].get("training") or {}
    have = {"image_size": int(run["metrics"]["resolution"].split("x")[0]), "epochs": len(run["history"]),
            "lr": training.get("lr"), "optimizer": training.get("optimizer"), "loss": training.get("loss")}
    for key, want in REPORT_SETTING.items():
        if have[key] is not None and have[key] != want:
            return f"{key.replace('_', ' ')} {have[key]}, the report's {want}"
    return None


def _fmt_range(values: list[float], digits: int = 4) -> str:
    return f"{values[0]:.{digits}f}" if len(values) == 1 else f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _seeds(res: dict) -> str:
    seeds = [r["seed"] for r in res["runs"]]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _split(res: dict) -> str:
    return res["runs"][0]["metrics"].get("scored_split", "test")


# ---- one function per rule: (this run's value as text, its numbers, verdict, why) ------------------------

def _count(ev, report):
    f = ev.data
    text = (f"{f['train_images']} training and {f['test_images']} test images" if f["test_images"] is not None
            else f"{f['train_images']} training images, no test split") + "; each image with its mask"
    value = {"train": f["train_images"], "test": f["test_images"]}
    if f["source"] == "synthetic":
        return text, value, UNCHECKABLE, "the synthetic demo set, not ISIC 2016"
    if f["test_images"] is None:
        return text, value, UNCHECKABLE, "the folder has no test split"
    same = value == report
    return text, value, HOLDS if same else DIFFERS, "the same counts" if same else "other counts than the report's"


def _peaks(ev, report):
    peaks = ev.data["peaks"]
    text = "peaks at " + ", ".join(f"{p:.2f}" for p in peaks) if peaks else "no peak"
    if ev.data["source"] == "synthetic":
        return text, peaks, UNCHECKABLE, "the synthetic demo set, not ISIC 2016"
    top = sorted(peaks[:2])
    ok = len(top) == 2 and all(abs(p - r) <= PEAK_TOLERANCE for p, r in zip(top, report))
    why = (f"the two highest at {top[0]:.2f} and {top[1]:.2f}" if len(top) == 2 else "one peak: not bimodal")
    return text, peaks, HOLDS if ok else DIFFERS, why


def _binary(ev, report):
    values = ev.data["mask_values"]
    text = f"values {', '.join(f'{v:g}' for v in values)}; {ev.data['lesion_pixels']:.1%} of the pixels are lesion"
    ok = values == [0.0, 1.0]
    return text, values, HOLDS if ok else DIFFERS, "two values, 0 and 1" if ok else "other values than 0 and 1"


def _size(ev, report):
    sizes = {ev.data["image_size"], *ev.data["train_tensor_size"], *ev.data["mask_tensor_size"]}
    value = ev.data["image_size"]
    ok = sizes == {report}
    return f"{value}x{value}", value, HOLDS if ok else DIFFERS, "as the report" if ok else f"this run trains at {value}"


def _decoder(ev, report):
    arch = ev.models[M1]["runs"][0]["metrics"].get("architecture")
    if not arch:
        return "not recorded", None, UNCHECKABLE, "this run's metrics.json predates the record of the architecture"
    drops = arch["dropout_after_each"]
    text = (f"{arch['conv_transpose']} ConvTranspose2d, each followed by Dropout"
            f"({', '.join('none' if p is None else f'{p:g}' for p in drops)}); output "
            f"{arch['output'][0]}x{arch['output'][1]} for input {arch['input'][0]}x{arch['input'][1]}")
    ok = arch["conv_transpose"] == 4 and drops == [0.5] * 4 and arch["output"] == arch["input"]
    return text, arch, HOLDS if ok else DIFFERS, "as the report describes" if ok else "another decoder"


def _losses(ev, report, name):
    res = ev.models[name]
    train = [r["history"][-1]["train_loss"] for r in res["runs"]]
    test = [_series(r, "loss")[-1] for r in res["runs"]]
    text = f"train {_fmt_range(train)}, {_split(res)} {_fmt_range(test)} ({_seeds(res)})"
    value = {"train": train, "test": test}
    unlike = _unlike_report(ev, name)
    if unlike:
        return text, value, UNCHECKABLE, unlike
    ok = {k: min(v) - LOSS_TOLERANCE * report[k] <= report[k] <= max(v) + LOSS_TOLERANCE * report[k]
          for k, v in (("train", train), ("test", test))}
    why = "; ".join(f"the report's {k} {report[k]:.4f} {'within' if good else 'outside'} this run's range"
                    for k, good in ok.items())
    return text, value, HOLDS if all(ok.values()) else DIFFERS, why


def _pair(ev, report, name):
    lo, hi = iou_bounds_from_dice(report["dice"])
    why = (f"Dice {report['dice']:.4f} needs a mean IoU in {lo:.4f}-{hi:.4f}; the report's {report['iou']:.4f} "
           f"lies {'inside' if lo <= report['iou'] <= hi else 'outside'} it")
    verdict = HOLDS if lo <= report["iou"] <= hi else IMPOSSIBLE
    if name not in ev.models:
        return "not run yet", None, verdict, why
    res = ev.models[name]
    iou, dice = (res["summary"]["macro"][k]["mean"] for k in ("jaccard", "dice"))
    rlo, rhi = iou_bounds_from_dice(dice)
    text = f"IoU {iou:.4f}, Dice {dice:.4f} (mean over {_seeds(res)}): IoU inside its bounds {rlo:.3f}-{rhi:.3f}" \
        if rlo - 1e-9 <= iou <= rhi + 1e-9 else f"IoU {iou:.4f}, Dice {dice:.4f}: IoU outside its bounds"
    return text, {"iou": iou, "dice": dice}, verdict, why


def _dice(ev, report, name):
    res = ev.models[name]
    dice = res["summary"]["macro"]["dice"]["per_seed"]
    text = f"{_fmt_range(dice)} ({_split(res)} split, {_seeds(res)})"
    unlike = _unlike_report(ev, name)
    if unlike:
        return text, dice, UNCHECKABLE, unlike
    ok = min(dice) - DICE_TOLERANCE <= report <= max(dice) + DICE_TOLERANCE
    return text, dice, HOLDS if ok else DIFFERS, f"the report's {report:.4f} {'within' if ok else 'outside'} the range"


def _few_epochs(res, need: int) -> str | None:
    n = len(res["runs"][0]["history"])
    return f"{n} epochs: a trend needs {need} or more" if n < need else None


def _per_seed(res, test) -> tuple[list[bool], str]:
    ok = [test(r) for r in res["runs"]]
    return ok, f"{sum(ok)} of {len(ok)} seeds"


def _peak4(ev, report):
    res = ev.models[M1]
    peaks = [int(np.argmax(_series(r, "train_loss"))) + 1 for r in res["runs"]]
    text = f"highest at epoch {', '.join(map(str, peaks))} ({_seeds(res)})"
    few = _few_epochs(res, report["peak_epoch"] + 2)
    if few:
        return text, peaks, UNCHECKABLE, few

    def test(r):
        v = _series(r, "train_loss")
        p = int(np.argmax(v))
        return p + 1 == report["peak_epoch"] and falls_on_whole(v[p:])
    ok, n = _per_seed(res, test)
    return text, peaks, HOLDS if all(ok) else DIFFERS, f"{n} as the report"


def _fluct5(ev, report):
    res, k = ev.models[M1], report["until_epoch"]
    few = _few_epochs(res, k + 2)

    def early(v):
        d = np.diff(v[:k])
        return bool((d > 0).any() and (d < 0).any())
    flags = [(early(v), falls_on_whole(v[k - 1:])) for v in (_series(r, "loss") for r in res["runs"])]
    text = "; ".join(f"seed {r['seed']}: {'up and down' if a else 'one way'} to epoch {k}, "
                     f"{'falls' if b else 'does not fall'} after" for r, (a, b) in zip(res["runs"], flags)) \
        if not few else f"{len(res['runs'][0]['history'])} epochs"
    if few:
        return text, None, UNCHECKABLE, few
    ok = [a and b for a, b in flags]
    return text, [list(f) for f in flags], HOLDS if all(ok) else DIFFERS, f"{sum(ok)} of {len(ok)} seeds as the report"


def _iou_const(ev, report):
    top = 2 * report / (1 + report)
    lo1, hi1 = iou_bounds_from_dice(0.7522)
    lo2, hi2 = iou_bounds_from_dice(0.8620)
    why = (f"an IoU of {report} allows a Dice of at most {top:.4f}; the report's final Dice 0.7522 and 0.8620 lie "
           f"above it (they need an IoU of {lo1:.4f}-{hi1:.4f} and {lo2:.4f}-{hi2:.4f})")
    if M1 not in ev.models:
        return "not run yet", None, IMPOSSIBLE, why
    res = ev.models[M1]
    v = [x for r in res["runs"] for x in _series(r, "iou")[4:]] or [x for r in res["runs"] for x in _series(r, "iou")]
    return (f"Model 1's {_split(res)} IoU {_fmt_range(v)} over epochs {'5 on' if len(res['runs'][0]['history']) > 4 else 'all'} "
            f"({_seeds(res)})", v, IMPOSSIBLE, why)


def _rise(ev, report, name, level: float | None):
    res = ev.models[name]
    dice = [_series(r, "dice") for r in res["runs"]]
    text = "; ".join(f"seed {r['seed']}: {v[0]:.3f} to {v[-1]:.3f} (Spearman {spearman(v):+.2f})"
                     for r, v in zip(res["runs"], dice))
    few = _few_epochs(res, 3)
    if few:
        return text, None, UNCHECKABLE, few
    ok = [rises(v) for v in dice]
    why = f"rises in {sum(ok)} of {len(ok)} seeds"
    unlike = _unlike_report(ev, name)
    if level is not None and not unlike:
        near = all(abs(v[-1] - level) <= 0.05 for v in dice)
        ok.append(near)
        why += f"; last value {'within' if near else 'not within'} 0.05 of {level}"
    elif level is not None:
        why += f"; the level ({level}) is not compared: {unlike}"
    return text, [v[-1] for v in dice], HOLDS if all(ok) else DIFFERS, why


def _fall_every(ev, report, name, what):
    res = ev.models[name]
    series = [_series(r, what) for r in res["runs"]]
    rises_at = [[i + 2 for i, (a, b) in enumerate(zip(v, v[1:])) if b >= a] for v in series]
    text = "; ".join(f"seed {r['seed']}: " + (f"rises at epoch {', '.join(map(str, e))}" if e else "falls every epoch")
                     for r, e in zip(res["runs"], rises_at))
    few = _few_epochs(res, 3)
    if few:
        return text, None, UNCHECKABLE, few
    ok = [falls_every_epoch(v) for v in series]
    return text, rises_at, HOLDS if all(ok) else DIFFERS, f"{sum(ok)} of {len(ok)} seeds fall at every epoch"


def _beats(ev, report):
    ja, jb = seed_jaccards(ev.models[M1]), seed_jaccards(ev.models[M2])
    per_seed = [{"seed": s, **paired_bootstrap(*paired_ious(ja[s], jb[s]))} for s in ja if s in jb]
    text = "; ".join(f"seed {r['seed']}: {r['mean_difference']:+.3f} ({r['ci_low']:+.3f} to {r['ci_high']:+.3f}), "
                     f"better on {r['b_better']} of {r['n_images']} images" for r in per_seed)
    ok = bool(per_seed) and all(r["ci_low"] > 0 for r in per_seed)
    why = (f"every seed's interval above 0 ({len(per_seed)} seeds)" if ok else
           "an interval includes or lies below 0")
    return text, per_seed, HOLDS if ok else DIFFERS, why


def _fluctuates(ev, report):
    few = _few_epochs(ev.models[M1], 3) or _few_epochs(ev.models[M2], 3)
    value = {}
    for name in (M1, M2):
        runs = ev.models[name]["runs"]
        value[name] = {what: float(np.mean([back_and_forth(_series(r, what)) for r in runs]))
                       for what in ("train_loss", "loss", "dice")}
    labels = {"train_loss": "train loss", "loss": "test loss", "dice": "test Dice"}
    text = "; ".join(f"{labels[w]} {value[M1][w]:.4f} against {value[M2][w]:.4f}" for w in labels)
    if few:
        return text, value, UNCHECKABLE, few
    more = [w for w in labels if value[M1][w] > value[M2][w]]
    ok = len(more) == len(labels)
    return text, value, HOLDS if ok else DIFFERS, f"Model 1 the larger for {len(more)} of 3"


CHECKS = {
    "count": (("data",), _count), "peaks": (("data",), _peaks), "binary": (("data",), _binary),
    "size": (("data",), _size), "decoder": ((M1,), _decoder), "iou_const": ((), _iou_const),
    "peak4": ((M1,), _peak4), "fluct5": ((M1,), _fluct5), "beats": ((M1, M2), _beats),
    "fluctuates": ((M1, M2), _fluctuates),
}


def _check(ev: Evidence, cid: str, section: str, rule: str, report):
    if rule == "pair":
        return _pair(ev, report, section)
    model_rules = {"losses": _losses, "dice": _dice}
    needs = ("data",) if section == "data" else (section,) if rule in model_rules or rule in (
        "rise", "rise_m2", "fall_every") else CHECKS[rule][0]
    for need in needs:
        if need == "data" and ev.data is None:
            return None, None, None, f"not measured: run {SECTIONS['data']}"
        if need in MODELS and need not in ev.models:
            return None, None, None, f"not measured: run {SECTIONS[need]}"
    if rule in model_rules:
        return model_rules[rule](ev, report, section)
    if rule in ("rise", "rise_m2"):
        return _rise(ev, report, section, report if rule == "rise" else None)
    if rule == "fall_every":
        return _fall_every(ev, report, section, "train_loss" if cid == "14" else "loss")
    return CHECKS[rule][1](ev, report)


def rows(run: str | Path, sections=None) -> list[dict]:
    """The scorecard of the run folder ``run``: one dict per claim (id, section, claim, report,
    report_value, this_run, run_value, rule, verdict, why). A claim whose evidence is missing has verdict
    None and says which notebook to run."""
    ev = load_evidence(run)
    out = []
    for cid, section, claim, report_text, report, rule in CLAIMS:
        if sections and section not in sections:
            continue
        text, value, verdict, why = _check(ev, cid, section, rule, report)
        out.append({"id": cid, "section": section, "claim": claim, "report": report_text,
                    "report_value": report, "this_run": text, "run_value": value, "rule": RULES[rule],
                    "verdict": verdict, "why": why})
    return out


def table(found: list[dict], ids=None, columns=("claim", "report", "this_run", "verdict", "why")) -> Whole:
    """Rows of :func:`rows` as a table, every cell whole (a notebook's view); ``ids`` picks rows."""
    picked = [r for r in found if ids is None or r["id"] in ids]
    frame = pd.DataFrame([{c: r[c] for c in ("id", *columns)} for r in picked], columns=["id", *columns])
    return Whole(frame.set_index("id").rename(columns={"this_run": "this run"}))


def tally(found: list[dict]) -> str:
    """One line: how many claims hold, differ, are impossible as reported, or cannot be checked."""
    counts = {v: sum(r["verdict"] == v for r in found) for v in VERDICTS}
    missing = sum(r["verdict"] is None for r in found)
    parts = [f"{n} {v}" for v, n in counts.items() if n] + ([f"{missing} not measured yet"] if missing else [])
    return f"{len(found)} claims: " + ", ".join(parts)
