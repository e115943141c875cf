"""Training the models for each seed, and what comes of it: each run trained, scored at the working and
the original size, and saved (metrics.json, per-image CSVs, checkpoints); the summary over seeds; the
external sets and the ensemble scored; and the tables and figures of the runs that the notebooks show.
The training loop itself is :func:`helpers.train.fit`.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import metrics
from .errors import DataError
from .io import read_csv, write_csv, write_json
from .evaluate import evaluate_checkpoint, evaluate_samples, tta_label, tta_mode
from .external import ExternalSet
from .model import SegmentationModel, build_model, decoder_facts, parameter_counts
from .plots import live_loss_curve
from .settings import RunConfig
from .train import evaluate, fit, make_loader, resolve_device
from .data import Data


def new_model(cfg: RunConfig, freeze_encoder: bool, decoder: str = "report") -> SegmentationModel:
    """build_model with the run's encoder weights; prints which weights were really used."""
    torch.manual_seed(cfg.seed)
    model = build_model(freeze_encoder, encoder_weights=cfg.encoder_weights, decoder=decoder,
                        progress=cfg.progress)
    counts = parameter_counts(model)
    print(f"model: MobileNetV2 encoder ({'frozen' if freeze_encoder else 'fine-tuned'}, weights: "
          f"{model.config['encoder_weights_used']}), {decoder} decoder; {counts['trainable']:,} trainable / "
          f"{counts['frozen']:,} frozen parameters")
    return model


def environment() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": version("torchvision"), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


REPORT_RECIPE = {"augment": False, "loss": "bce", "schedule": "constant", "select": "last", "encoder_bn": "train",
                 "deep_supervision": 0.0}


def scorings(cfg: RunConfig) -> tuple:
    """(folder, TTA mode) of each scoring at the original size: "original", and with cfg.tta "original_tta"."""
    mode = tta_mode(cfg.tta)
    return (("original", False),) + ((("original_tta", mode),) if mode else ())


def train_and_evaluate(cfg: RunConfig, d: Data, model: SegmentationModel, name: str, seed: int | None = None,
                       recipe: dict | None = None, *, loss_fn: torch.nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Train ``model`` for one seed, score it and save everything.

    loss_fn, optimizer: the training loss and the optimizer (the notebooks of Models 1 and 2 build the
    report's, ``nn.BCEWithLogitsLoss()`` and ``torch.optim.NAdam(model.parameters(), lr=LR)``); None:
    the recipe's (:func:`helpers.train.fit`). Their names and the optimizer's settings are saved in
    history.json and metrics.json ("training"), and a rerun with another optimizer does not reuse this one's run.

    recipe: None for the report's (Models 1 and 2), or :func:`model3_recipe`'s dict. The report's
    protocol scores ``d.scored`` (the test split, else the validation split) after every epoch and
    keeps the last epoch. With ``select="best"`` the validation split is scored after every epoch,
    the best epoch's weights are kept, and ``d.scored`` is scored once at the end (when that is the
    validation split itself, metrics.json says the score is optimistic: it chose the epoch).

    Writes ``run_dir/name/seed<seed>/``: history.json, checkpoint.pt, per_image.csv (metrics per
    scored image at the working resolution, as the report measured), ``original/`` (masks,
    per_image.csv and summary.json at each image's original size, as the ISIC challenge scores;
    ``original_tta/`` too when cfg.tta) and metrics.json (all of it with settings, data source,
    split, weights and versions). Returns {"seed", "history", "per_image", "original", "metrics", "probs"}.
    """
    seed = cfg.seed if seed is None else seed
    recipe = {**REPORT_RECIPE, "epochs": cfg.epochs, "lr": cfg.lr, **(recipe or {})}
    out = cfg.run_path / name / f"seed{seed}"
    if recipe["select"] == "best" and d.val is None:
        raise DataError(f"{d.root}: choosing the best epoch needs a validation split, and this run has none: set "
                        "VAL_FRACTION (e.g. 0.2) or keep the last epoch (the recipe's select='last')")
    per_epoch, per_epoch_name = (d.val, "validation") if recipe["select"] == "best" else (d.scored, d.scored_name)
    label = f"{MODEL_LABELS.get(name, name)}, seed {seed}"
    live = live_loss_curve(label, d.label, f"{label}: loss per epoch (live)",
                           OBJECTIVES.get(recipe["loss"])) if cfg.progress else None
    history = fit(model, d.train, per_epoch, epochs=recipe["epochs"], batch_size=cfg.batch_size, lr=recipe["lr"],
                  seed=seed, device=cfg.device, out_dir=out, progress=cfg.progress, eval_split=per_epoch_name,
                  select=recipe["select"], augment=recipe["augment"], loss=recipe["loss"], schedule=recipe["schedule"],
                  encoder_bn=recipe["encoder_bn"], deep_supervision=recipe["deep_supervision"], label=label,
                  on_epoch=live, loss_fn=loss_fn, optimizer=optimizer)
    dev = resolve_device(cfg.device)
    ev = evaluate(model, make_loader(d.scored, cfg.batch_size, False, None, dev), dev, keep_probs=True)
    rows = metrics.per_image_rows(ev["ids"], d.scored.sizes, ev["counts"])
    write_csv(out / "per_image.csv", rows)
    size = int(d.train.images.shape[-1])
    saved = json.loads((out / "history.json").read_text())
    summary = {"name": name, "seed": seed, "data_source": d.label, "data_dir": str(d.root), "model": model.config,
               "config": asdict(cfg), "recipe": recipe, "resolution": f"{size}x{size}",
               "training": {k: saved["settings"].get(k) for k in TRAINING_KEYS},
               "scored_split": d.scored_name, "selected_epoch": saved.get("selected_epoch", len(history)),
               "selected_on_scored_split": recipe["select"] == "best" and d.scored_name == "validation",
               "macro": metrics.all_metrics(ev["counts"], "macro"),
               "micro": metrics.all_metrics(ev["counts"], "micro"),
               "test_loss": ev["loss"], "n_test": len(rows), "architecture": decoder_facts(model, size),
               "environment": environment()}
    split_folder, ids = ("test", None) if d.test is not None else ("train", list(d.scored.ids))
    for key, tta in scorings(cfg):
        challenge = evaluate_checkpoint(out / "checkpoint.pt", d.root, split_folder, out / key,
                                        batch_size=cfg.batch_size, device=cfg.device, tta=tta,
                                        progress=cfg.progress, ids=ids, max_pixels=cfg.max_pixels)
        summary[key] = {"macro": challenge["macro"], "micro": challenge["micro"], "tta": tta}
    write_json(out / "metrics.json", summary)
    return {"seed": seed, "history": history, "per_image": rows, "original": read_csv(out / "original" / "per_image.csv"),
            "metrics": summary, "probs": ev["probs"]}


TRAINING_KEYS = ("optimizer", "lr", "optimizer_settings", "loss", "epochs", "batch_size")  # metrics.json "training"


def save_seed_summary(cfg: RunConfig, d: Data, name: str, runs: list[dict], recipe: dict | None = None) -> dict:
    """Write ``run_dir/name/summary.json`` for the seeds in ``runs`` (:func:`train_and_evaluate`'s results): the mean
    and spread of every metric and, with ``recipe["ensemble"]``, the seeds scored as one ensemble
    (:func:`score_ensemble`). Returns it."""
    summary = seed_summary([r["metrics"] for r in runs])
    if (recipe or {}).get("ensemble"):
        summary["ensemble"] = score_ensemble(cfg, d, name, [r["seed"] for r in runs])
    write_json(cfg.run_path / name / "summary.json", summary)
    return summary


def train_seeds(cfg: RunConfig, d: Data, model: SegmentationModel, name: str, recipe: dict | None = None) -> list[dict]:
    """:func:`train_and_evaluate` for seeds cfg.seed .. cfg.seed + cfg.seeds - 1.

    ``model`` is trained for the first seed; each further seed gets a fresh model of the same
    kind, initialised under that seed. Writes ``run_dir/name/summary.json`` (mean and spread; with
    ``recipe["ensemble"]``, also the seeds scored as one ensemble: :func:`score_ensemble`).
    """
    runs = [train_and_evaluate(cfg, d, model, name, cfg.seed, recipe)]
    for seed in range(cfg.seed + 1, cfg.seed + cfg.seeds):
        torch.manual_seed(seed)
        fresh = build_model(model.config["freeze_encoder"], encoder_weights=cfg.encoder_weights,
                            decoder=model.config["decoder"], progress=False)
        runs.append(train_and_evaluate(cfg, d, fresh, name, seed, recipe))
    save_seed_summary(cfg, d, name, runs, recipe)
    return runs


EXTERNAL_JSON = "external.json"


def score_external(cfg: RunConfig, name: str, runs: list[dict], sets: list[ExternalSet]) -> pd.DataFrame | None:
    """Every seed of model ``name`` scores every external set once, at each image's original size.

    Writes ``run_dir/name/seed<k>/external/<set>/`` (masks, per_image.csv, summary.json) and
    ``run_dir/name/external.json`` (the sets, and per set the macro metrics per seed and their mean
    and sd); returns the table the notebook shows (None, with the file removed, without sets)."""
    record_path = cfg.run_path / name / EXTERNAL_JSON
    if not sets:
        record_path.unlink(missing_ok=True)
        print("no external test set to score (EXTERNAL is empty)")
        return None
    record = {"sets": [s.record() for s in sets], "results": {}}
    for s in sets:
        per_seed = []
        for run in runs:
            folder = cfg.run_path / name / f"seed{run['seed']}"
            source = {"data_dir": str(s.root), "split": None, "data_source": f"external test set {s.name}",
                      "images_dir": str(s.root), "layout": s.layout, "pairing": s.detail}
            summary = evaluate_samples(folder / "checkpoint.pt", list(s.samples), source, folder / "external" / s.slug,
                                       batch_size=cfg.batch_size, device=cfg.device, progress=cfg.progress,
                                       max_pixels=cfg.max_pixels)
            per_seed.append({"seed": run["seed"], "macro": summary["macro"], "micro": summary["micro"]})
        record["results"][s.slug] = {"name": s.name, "per_seed": per_seed, **seed_summary_of(per_seed)}
    write_json(record_path, record)
    rows = []
    for s in sets:
        res = record["results"][s.slug]
        rows.append({"external test set": s.name, "layout": s.layout, "images": len(s.samples),
                     **{f"{k} (original size)": mean_sd(res["macro"][k]) for k in ("jaccard", "dice")}})
    in_domain = seed_summary([r["metrics"] for r in runs])["original"]
    rows.append({"external test set": f"in-domain: {runs[0]['metrics']['data_source']}, "
                                      f"{runs[0]['metrics']['scored_split']} split", "layout": "-",
                 "images": len(runs[0]["original"]),
                 **{f"{k} (original size)": mean_sd(in_domain[k]) for k in ("jaccard", "dice")}})
    return pd.DataFrame(rows).set_index("external test set")


def spread(values: list[float]) -> dict:
    """{"mean", "std" (sample sd; 0 for one value), "per_seed"} of one metric over seeds."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": values}


def seed_summary_of(per_seed: list[dict]) -> dict:
    """{"macro": {metric: spread}} of per-seed {"macro": {...}} entries."""
    return {"macro": {k: spread([m["macro"][k] for m in per_seed]) for k in metrics.METRICS}}


def score_ensemble(cfg: RunConfig, d: Data, name: str, seeds: list[int]) -> dict:
    """The seeds' checkpoints scored as one model at each image's original size: the mean of their
    probabilities, binarised at 0.5 (:func:`helpers.evaluate.ensemble_masks`), with TTA too
    when cfg.tta. Writes ``run_dir/name/ensemble/original[_tta]/``; returns {"seeds", "original": macro
    metrics, ["original_tta": ...]} and prints one line."""
    folder = cfg.run_path / name
    split_folder, ids = ("test", None) if d.test is not None else ("train", list(d.scored.ids))
    out = {"seeds": seeds}
    for key, tta in scorings(cfg):
        scored = evaluate_checkpoint([folder / f"seed{s}" / "checkpoint.pt" for s in seeds], d.root, split_folder,
                                     folder / "ensemble" / key, batch_size=cfg.batch_size, device=cfg.device, tta=tta,
                                     progress=cfg.progress, ids=ids, max_pixels=cfg.max_pixels)
        out[key] = scored["macro"]
    print(f"{MODEL_LABELS.get(name, name)}: seeds {'+'.join(map(str, seeds))} as one ensemble: Jaccard "
          f"{out['original']['jaccard']:.4f} at the original size"
          + (f", {out['original_tta']['jaccard']:.4f} with {tta_label(cfg.tta)}" if "original_tta" in out else ""))
    return out


def seed_summary(per_seed: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of every macro metric, per resolution."""
    out = {"seeds": [m["seed"] for m in per_seed], "name": per_seed[0]["name"],
           "data_source": per_seed[0]["data_source"], "model": per_seed[0]["model"],
           "scored_split": per_seed[0].get("scored_split", "test"), "recipe": per_seed[0].get("recipe"),
           "training": per_seed[0].get("training")}
    for key in ("macro", "original", "original_tta"):
        if key not in per_seed[0]:
            continue
        values = {k: [(m[key] if key == "macro" else m[key]["macro"])[k] for m in per_seed] for k in metrics.METRICS}
        out[key] = {k: spread(v) for k, v in values.items()}
    return out


def mean_sd(v: dict) -> str:
    """"mean ± sd" of one :func:`seed_summary` entry; the mean alone for a single seed."""
    return f"{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if len(v["per_seed"]) > 1 else "")


def seed_table(runs: list[dict]) -> pd.DataFrame:
    """Mean (and spread over seeds) of every metric at the working and the original resolution."""
    s = seed_summary([r["metrics"] for r in runs])
    cols = {"macro": f"{runs[0]['metrics']['resolution']} (report)", "original": "original size (ISIC)",
            "original_tta": "original size, TTA"}
    table = {}
    for key, label in cols.items():
        if key in s:
            table[label] = {k: mean_sd(v) for k, v in s[key].items()}
    return pd.DataFrame(table)


MODEL_LABELS = {"model1_frozen": "Model 1", "model2_finetuned": "Model 2", "model3_unet": "Model 3"}
# training losses other than the report's BCE, as figures name them
OBJECTIVES = {"bce_dice": "BCE + soft Dice", "bce_lovasz": "BCE + Lovasz hinge"}


def loss_figure(runs: dict[str, dict | list[dict]], note: str, title: str):
    """Loss curves per model ({label: run, or the runs of all its seeds}): the first seed drawn in
    full, the other seeds faint behind it; each training curve names its loss when it is not the
    report's BCE (Model 3's recipe may add soft Dice)."""
    from .plots import loss_curves

    runs = {label: r if isinstance(r, list) else [r] for label, r in runs.items()}
    objectives = {label: OBJECTIVES.get((r[0]["metrics"].get("recipe") or {}).get("loss")) for label, r in runs.items()}
    others = {label: [run["history"] for run in r[1:]] for label, r in runs.items()}
    return loss_curves({label: r[0]["history"] for label, r in runs.items()}, note, title, objectives, others)


def ranked(rows: list[dict], n: int, best: bool) -> list[int]:
    """Indices of the n best (highest IoU) or worst test images; ties broken by id."""
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["jaccard"] if best else rows[i]["jaccard"], rows[i]["id"]))
    return order[:n]


def load_result(run_dir: str | Path, name: str) -> dict:
    """What a model notebook saved: summary.json over seeds, and per seed its metrics, history,
    per-image rows at the working resolution and at the original size."""
    folder = Path(run_dir) / name
    if not (folder / "summary.json").is_file():
        raise DataError(f"{folder / 'summary.json'}: missing - run the notebook that trains '{name}' first")
    summary = json.loads((folder / "summary.json").read_text())
    runs = []
    for seed in summary["seeds"]:
        sub = folder / f"seed{seed}"
        runs.append({"seed": seed, "metrics": json.loads((sub / "metrics.json").read_text()),
                     "history": json.loads((sub / "history.json").read_text())["history"],
                     "per_image": read_csv(sub / "per_image.csv"),
                     "original": read_csv(sub / "original" / "per_image.csv")})
    external = None
    if (folder / EXTERNAL_JSON).is_file():
        external = json.loads((folder / EXTERNAL_JSON).read_text())
        for slug, res in external["results"].items():
            res["per_image"] = [read_csv(folder / f"seed{seed}" / "external" / slug / "per_image.csv")
                                for seed in summary["seeds"]]
    return {"summary": summary, "runs": runs, "external": external}


def baselines(d: Data) -> dict[str, float]:
    """Macro Jaccard on the scored split, at the working size, of the image-blind predictions
    (:func:`helpers.metrics.image_blind_baselines`): facts of the data alone."""
    return {k: round(v, 4) for k, v in metrics.image_blind_baselines(d.train.masks, d.scored.masks).items()}


def against_baselines(d: Data, runs: list[dict], margin: float = 0.05) -> pd.DataFrame:
    """Each seed's macro Jaccard on the scored split (working size) beside the best image-blind
    baseline, and whether it beats it by ``margin``: a model that does not has not learnt from the images."""
    blind = baselines(d)
    name, best = max(blind.items(), key=lambda kv: kv[1])
    rows = [{"seed": r["seed"], "Jaccard": round(r["metrics"]["macro"]["jaccard"], 4),
             "best image-blind baseline": f"{best:.4f} ({name})",
             f"beats it by {margin}": r["metrics"]["macro"]["jaccard"] >= best + margin} for r in runs]
    return pd.DataFrame(rows).set_index("seed")


def prediction_figure(d: Data, result: dict, best: bool, title: str, note: str, n: int = 4):
    """Best (or worst) n scored images (test, else validation) by IoU: image, true mask, predicted mask (at probability 0.5)."""
    from .plots import predictions

    idx = ranked(result["per_image"], n, best)
    preds = (result["probs"][idx].float() >= 0.5).float()
    ds = d.scored
    return predictions(ds.images[idx], ds.masks[idx], preds, [ds.ids[i] for i in idx],
                       [result["per_image"][i]["jaccard"] for i in idx], title, note)
