"""The comparison notebook's logic: our models beside the report's numbers, and the IoU correction.

Per image, Dice D and Jaccard J satisfy D = 2J / (1 + J), i.e. J = D / (2 - D). J <= D always,
and because J = D / (2 - D) is convex, Jensen's inequality bounds the mean IoU of a set of
images by its mean Dice: mean(D) / (2 - mean(D)) <= mean(J) <= mean(D).
"""

from __future__ import annotations

import pandas as pd

from pathlib import Path

from .evaluate import TTA_NAMES, tta_label, tta_mode
from .training import load_result, mean_sd
from .progress import plural
from .recipe import LOSS_NAMES

MODELS = {  # run name -> label
    "model1_frozen": "Model 1 (frozen encoder)",
    "model2_finetuned": "Model 2 (fine-tuned encoder)",
    "model3_unet": "Model 3 (fine-tuned, U-Net decoder)",
}
SHORT = {"model1_frozen": "Model 1 (frozen)", "model2_finetuned": "Model 2 (fine-tuned)",
         "model3_unet": "Model 3 (U-Net decoder)"}
NOTEBOOK_OF = {  # run name -> the notebook that trains it
    "model1_frozen": "02_model1_frozen_encoder.ipynb",
    "model2_finetuned": "03_model2_finetuned.ipynb",
    "model3_unet": "04_model3_unet_decoder.ipynb",
}
REPORT = {  # what the report states for its test set (one run each, 128x128)
    "model1_frozen": {"dice": 0.752, "iou": 0.2985},
    "model2_finetuned": {"dice": 0.862, "iou": 0.2985},
}
PUBLISHED = [  # ISIC 2016 Part 1 test set (379 images), mean per-image metrics, with the conditions of each
    {"method": "ISIC 2016 challenge winner (Gutman et al. 2016, arXiv:1605.01397)",
     "jaccard": 0.843, "dice": 0.910, "accuracy": 0.953,
     "conditions": "ISIC 2016 test set, scored by the challenge at each image's original size"},
    {"method": "Yuan et al. 2017 (IEEE TMI, FCN with Jaccard-distance loss)", "jaccard": 0.847,
     "conditions": "ISIC 2016 test set, as the paper reports it"},
    {"method": "best published result known to this project (2023, a transformer model; paper not named here)",
     "jaccard": 0.877,
     "conditions": "ISIC 2016 test set, about 0.877 as published, images resized to 512x512 for the model"},
]
COLUMNS = ("jaccard", "dice", "accuracy", "sensitivity", "specificity")
CHALLENGE_COLUMNS = ("method", "jaccard", "dice", "accuracy", "conditions")


def available_results(run_dir: str | Path, log=print) -> dict[str, dict]:
    """What the model notebooks saved under ``run_dir``, for the models that have been run; one line
    per missing model, naming the notebook that makes it."""
    results = {}
    for name, label in MODELS.items():
        if (Path(run_dir) / name / "summary.json").is_file():
            results[name] = load_result(run_dir, name)
        elif log:
            log(f"{label}: no results in {Path(run_dir) / name} - run notebooks/{NOTEBOOK_OF[name]} to make them")
    if not results and log:
        log(f"no model results in {run_dir} yet: the tables and figures below stay empty")
    return results


def pair_scatter(results: dict[str, dict], a: str, b: str, note: str, path: str | Path, log=print):
    """The per-image IoU scatter of model ``a`` against ``b``, saved to ``path``; None (with one line,
    and an earlier run's figure at ``path`` removed) when one of the two has not been run."""
    from .plots import iou_scatter, save_figure

    if a not in results or b not in results:
        Path(path).unlink(missing_ok=True)
        log(f"{Path(path).name} not made: it needs {MODELS[a]} and {MODELS[b]}")
        return None
    fig = iou_scatter(*paired_ious(per_image_jaccard(results[a]), per_image_jaccard(results[b])),
                      SHORT[a], SHORT[b], note)
    save_figure(fig, path)
    return fig


def first_run(results: dict[str, dict]) -> dict | None:
    """The first seed's metrics of the first model that has been run (for its provenance)."""
    return next((res["runs"][0]["metrics"] for res in results.values()), None)


def iou_bounds_from_dice(mean_dice: float) -> tuple[float, float]:
    """The interval that the mean IoU must lie in, given the mean Dice over the same images."""
    return mean_dice / (2 - mean_dice), mean_dice


def _mean(result: dict, key: str, metric: str) -> float:
    return result["summary"][key][metric]["mean"]


def _fmt(result: dict, key: str, metric: str) -> str:
    return mean_sd(result["summary"][key][metric])


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """Our macro metrics at the working resolution (mean ± sd over seeds) beside the report's."""
    rows = []
    for name, res in results.items():
        rep = REPORT.get(name, {})
        implied = iou_bounds_from_dice(rep["dice"]) if rep else None
        rows.append({"model": MODELS[name], "seeds": len(res["runs"]), **{f"our {k}": _fmt(res, "macro", k) for k in COLUMNS},
                     "report Dice": rep.get("dice", "-"), "report IoU": rep.get("iou", "-"),
                     "IoU implied by report Dice": f"{implied[0]:.3f}-{implied[1]:.3f}" if implied else "-"})
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["model"]).set_index("model")


def challenge_table(results: dict[str, dict]) -> pd.DataFrame:
    """Mean per-image metrics at each image's original size (the ISIC challenge's way) beside
    published ISIC 2016 results, each row with the conditions it was measured under. Ours are on
    this run's data: compare with the published rows only when that is the ISIC 2016 test set."""
    rows = []
    for name, res in results.items():
        src = res["summary"]["data_source"]
        split = res["summary"].get("scored_split", "test")
        conditions = _our_conditions(res)
        rows.append({"method": f"{MODELS[name]} - ours, {src}, {split} split", "jaccard": _fmt(res, "original", "jaccard"),
                     "dice": _fmt(res, "original", "dice"), "accuracy": _fmt(res, "original", "accuracy"),
                     "conditions": conditions})
        if "original_tta" in res["summary"]:
            mode = tta_of(res)
            rows.append({"method": f"{MODELS[name]} - ours with {tta_label(mode)}", "jaccard": _fmt(res, "original_tta", "jaccard"),
                         "dice": _fmt(res, "original_tta", "dice"), "accuracy": _fmt(res, "original_tta", "accuracy"),
                         "conditions": f"{conditions}; mean logits of {TTA_NAMES[mode][1]}"})
        rows += _ensemble_rows(name, res)
    rows += [{k: p.get(k, "-") for k in CHALLENGE_COLUMNS} for p in PUBLISHED]
    return pd.DataFrame(rows, columns=CHALLENGE_COLUMNS).set_index("method")


class Whole:
    """A table shown with every cell whole, in a notebook (HTML) and as text: pandas cuts cells at 50
    characters by default, which hides most of the challenge table's ``conditions``."""

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def _repr_html_(self) -> str:
        with pd.option_context("display.max_colwidth", None):
            return self.table.to_html(notebook=True)

    def __repr__(self) -> str:
        with pd.option_context("display.max_colwidth", None, "display.width", None):
            return repr(self.table)


def _ensemble_rows(name: str, result: dict) -> list[dict]:
    """The rows of a model's seeds scored as one ensemble (M3_ENSEMBLE), when they were: one number each."""
    ensemble, rows = result["summary"].get("ensemble"), []
    for key, what in (("original", ""), ("original_tta", f" with {tta_label(tta_of(result))}")):
        if ensemble and key in ensemble:
            seeds = "+".join(map(str, ensemble["seeds"]))
            rows.append({"method": f"{MODELS[name]} - ours, seeds {seeds} as one ensemble{what}",
                         **{k: f"{ensemble[key][k]:.4f}" for k in ("jaccard", "dice", "accuracy")},
                         "conditions": _our_conditions(result, ensemble=True)
                         + (f"; mean logits of {TTA_NAMES[tta_of(result)][1]}" if what else "")})
    return rows


def tta_of(result: dict) -> str:
    """The TTA mode of a model's ``original_tta`` scores: "flips" (also for runs saved before modes existed)."""
    return tta_mode((result["runs"][0]["metrics"].get("original_tta") or {}).get("tta", True)) or "flips"


def _our_conditions(result: dict, ensemble: bool = False) -> str:
    """How one of our models was measured: the scored split, the working size, the seeds, the recipe."""
    first = result["runs"][0]["metrics"]
    recipe = first.get("recipe") or {}
    seeds = len(result["runs"])
    spread = (f"one ensemble of {seeds} seeds (their mean probability)" if ensemble else
              f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed")
    text = (f"{first.get('n_test', '?')} {first.get('scored_split', 'test')} images, the model at "
            f"{first.get('resolution', '?')}, scored at each image's original size; {spread}")
    if recipe.get("preset") not in (None, "default"):
        text += f"; recipe {recipe['preset']!r}"
    if recipe.get("epochs"):
        text += f"; {plural(recipe['epochs'], 'epoch')}"
    if recipe.get("loss") in LOSS_NAMES:
        text += f", loss {LOSS_NAMES[recipe['loss']]}"
    if recipe.get("select") not in (None, "last"):
        text += f", weights: {recipe['select']}"
    if recipe.get("encoder_bn") == "frozen":
        text += ", encoder BatchNorm statistics frozen"
    if recipe.get("deep_supervision"):
        text += f", deep supervision (weight {recipe['deep_supervision']:g})"
    if recipe.get("lr") is not None:
        text += f", learning rate {recipe['lr']:g}"
    return text


def _iou_row(model: str, who: str, iou: float, dice: float) -> dict:
    lo, hi = iou_bounds_from_dice(dice)
    return {"model": model, "source": who, "mean Dice": round(dice, 4), "mean IoU": round(iou, 4),
            "allowed IoU range": f"{lo:.4f}-{hi:.4f}", "consistent": bool(lo - 1e-9 <= iou <= hi + 1e-9)}


def report_iou_bounds() -> pd.DataFrame:
    """The report's (Dice, IoU) pairs against the IoU range their Dice allows: neither pair is possible."""
    rows = [_iou_row(MODELS[name], "report", rep["iou"], rep["dice"]) for name, rep in REPORT.items()]
    return pd.DataFrame(rows).set_index(["model", "source"])


def iou_correction(results: dict[str, dict]) -> pd.DataFrame:
    """Does each mean IoU lie where its mean Dice says it must? The report's do not; ours do."""
    rows = []
    for name, res in results.items():
        if name in REPORT:
            rows.append(_iou_row(MODELS[name], "report", REPORT[name]["iou"], REPORT[name]["dice"]))
        rows.append(_iou_row(MODELS[name], "ours", _mean(res, "macro", "jaccard"), _mean(res, "macro", "dice")))
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["model", "source"]).set_index(["model", "source"])


def per_image_jaccard(result: dict, key: str = "original") -> dict[str, float]:
    """Per-image Jaccard averaged over seeds (key "original" or "per_image" for 128x128)."""
    ids = [r["id"] for r in result["runs"][0][key]]
    table = [{r["id"]: r["jaccard"] for r in run[key]} for run in result["runs"]]
    return {i: sum(t[i] for t in table) / len(table) for i in ids}


def paired_ious(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[float]]:
    """Per-image IoU of two models on the same test images, matched by id."""
    if set(a) != set(b):
        raise ValueError("the two models were scored on different test images")
    ids = sorted(a)
    return [a[i] for i in ids], [b[i] for i in ids]


def paired_table(results: dict[str, dict], pairs=(("model1_frozen", "model2_finetuned"),
                                                   ("model2_finetuned", "model3_unet"))) -> pd.DataFrame:
    """Paired per-image comparisons at the original size: mean Jaccard difference, bootstrap 95% CI."""
    rows = []
    for a, b in pairs:
        if a in results and b in results:
            ja, jb = paired_ious(per_image_jaccard(results[a]), per_image_jaccard(results[b]))
            rows.append({"comparison": f"{MODELS[b]} - {MODELS[a]}", **paired_bootstrap(ja, jb)})
    if not rows:
        return pd.DataFrame(columns=["mean_difference", "ci_low", "ci_high", "n_images", "b_better", "a_better"],
                            index=pd.Index([], name="comparison"))
    return pd.DataFrame(rows).set_index("comparison").round(4)


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of b - a over paired images, with a percentile bootstrap interval over images."""
    import numpy as np

    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size == 0:
        raise ValueError("no paired images to compare")
    lo, hi = bootstrap_ci(diff, n_boot, seed, level)
    return {"mean_difference": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "n_images": int(diff.size), "b_better": int((diff > 0).sum()), "a_better": int((diff < 0).sum())}


def seed_spread(results: dict[str, dict], metric: str = "jaccard") -> pd.DataFrame:
    """Each model's mean per-image ``metric`` at the original size, seed by seed, beside its mean,
    sd and range over seeds: the spread a rerun can move a number by."""
    rows = []
    for name, res in results.items():
        v = res["summary"]["original"][metric]
        row = {"model": MODELS[name], "seeds": len(v["per_seed"])}
        row.update({f"seed {s}": round(x, 4) for s, x in zip(res["summary"]["seeds"], v["per_seed"])})
        row.update({"mean ± sd": mean_sd(v), "range": f"{min(v['per_seed']):.4f}-{max(v['per_seed']):.4f}"})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame(columns=["model"]).set_index("model")


PAIRS = (("model1_frozen", "model2_finetuned"), ("model2_finetuned", "model3_unet"))


def seed_jaccards(result: dict) -> dict[int, dict[str, float]]:
    """{seed: {image id: Jaccard at the original size}} of one model's result."""
    return {run["seed"]: {r["id"]: r["jaccard"] for r in run["original"]} for run in result["runs"]}


def paired_by_seed(results: dict[str, dict], pairs=PAIRS) -> pd.DataFrame:
    """The paired per-image comparison (original size, bootstrap 95% interval over images) seed by
    seed: model b's seed k against model a's seed k, and the verdict over the seeds: a difference
    holds when every seed's interval lies on the same side of 0."""
    rows = []
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        ja, jb = seed_jaccards(results[a]), seed_jaccards(results[b])
        per_seed = [{"seed": s, **paired_bootstrap(*paired_ious(ja[s], jb[s]))} for s in ja if s in jb]
        above = all(r["ci_low"] > 0 for r in per_seed)
        below = all(r["ci_high"] < 0 for r in per_seed)
        verdict = (f"yes: {MODELS[b]} better" if above else f"yes: {MODELS[a]} better" if below else
                   "no: an interval includes 0 or the seeds disagree")
        for r in per_seed:
            rows.append({"comparison": f"{MODELS[b]} - {MODELS[a]}", **r,
                         "holds across seeds": verdict if len(per_seed) > 1 else "one seed only"})
    if not rows:
        return pd.DataFrame(columns=["comparison", "seed", "mean_difference", "ci_low", "ci_high",
                                     "holds across seeds"]).set_index(["comparison", "seed"])
    return pd.DataFrame(rows).set_index(["comparison", "seed"]).round(4)


def bootstrap_ci(values: list[float], n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval over the items of the mean of ``values``."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    means = v[np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _seed_mean_per_image(tables: list[list[dict]], metric: str) -> list[float]:
    """Per image (matched by id), the mean over seeds of ``metric``."""
    by_id = [{r["id"]: r[metric] for r in t} for t in tables]
    if any(set(t) != set(by_id[0]) for t in by_id):
        raise ValueError("the seeds were scored on different images")
    return [sum(t[i] for t in by_id) / len(by_id) for i in sorted(by_id[0])]


def generalization_points(results: dict[str, dict], metric: str = "jaccard") -> list[dict]:
    """Per model: the in-domain scored split and each external test set at the original size, with
    the mean over seeds, the sd over seeds, each seed's mean, and a bootstrap 95% interval over
    images of the per-image values averaged over seeds."""
    points = []
    for name, res in results.items():
        split = res["summary"].get("scored_split", "test")
        sets = [(f"in-domain: {res['summary']['data_source']}, {split} split", f"in-domain ({split} split)", "-",
                 [run["original"] for run in res["runs"]], res["summary"]["original"][metric])]
        for slug, ext in ((res.get("external") or {}).get("results") or {}).items():
            layout = next(s["layout"] for s in res["external"]["sets"] if s["slug"] == slug)
            sets.append((f"external: {ext['name']}", f"external: {ext['name']}", layout, ext["per_image"],
                         ext["macro"][metric]))
        for label, short, layout, tables, summary in sets:
            values = _seed_mean_per_image(tables, metric)
            lo, hi = bootstrap_ci(values)
            points.append({"model": MODELS[name], "data set": label, "short": short, "layout": layout, "images": len(values),
                           "mean": summary["mean"], "sd over seeds": summary["std"], "per_seed": summary["per_seed"],
                           "ci_low": lo, "ci_high": hi})
    return points


def generalization_table(results: dict[str, dict], metric: str = "jaccard") -> pd.DataFrame:
    """In-domain against each external test set, per model (original size): mean ± sd over seeds,
    the 95% interval over images, and the change from the model's in-domain mean."""
    rows, home = [], {}
    for p in generalization_points(results, metric):
        home.setdefault(p["model"], p["mean"])
        rows.append({"model": p["model"], "data set": p["data set"], "layout": p["layout"], "images": p["images"],
                     "seeds": len(p["per_seed"]),
                     f"{metric} mean ± sd": f"{p['mean']:.4f} ± {p['sd over seeds']:.4f}" if len(p["per_seed"]) > 1
                     else f"{p['mean']:.4f}",
                     "95% interval (images)": f"{p['ci_low']:.4f}-{p['ci_high']:.4f}",
                     "change from in-domain": "-" if p["data set"].startswith("in-domain") else
                     f"{p['mean'] - home[p['model']]:+.4f}"})
    if not rows:
        return pd.DataFrame(columns=["model", "data set"]).set_index(["model", "data set"])
    return pd.DataFrame(rows).set_index(["model", "data set"])


def generalization_figure(results: dict[str, dict], note: str, path: str | Path):
    """fig15: the generalization table as a figure, saved to ``path``."""
    from .plots import generalization, save_figure

    points = generalization_points(results)
    externals = sorted({p["data set"] for p in points if not p["data set"].startswith("in-domain")})
    title = ("Jaccard in-domain and on external test sets" if externals else
             "Jaccard in-domain (no external test set was given: EXTERNAL is empty)")
    short = {v: SHORT[k] for k, v in MODELS.items()}
    fig = generalization([{**p, "model": short[p["model"]], "data set": p["short"]} for p in points], note, title)
    save_figure(fig, path)
    return fig
