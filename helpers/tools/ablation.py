"""Model 3's recipe, one ingredient at a time: validation Jaccard per variant over seeds, and its cost.

    python -m helpers.tools.ablation --data-dir ROOT --encoder-weights W [--variants report full ...]
                               [--seeds 0 1] [--val-fraction 0.2] [--split-seed 0] [--out runs/ablation]

Every variant trains on the training ids of one seeded validation split (:mod:`helpers.splits`) and is
scored on the held-out ids only, at each image's original size (:mod:`helpers.evaluate`); a test
split, when the folder has one, is never read. A variant is a recipe (see :data:`VARIANTS`, or
``name=key:value,key:value`` on the command line with the keys of :data:`BASE`). Each training keeps
the last epoch's weights; the history gives, for free, what choosing the best validation epoch would
have scored (an optimistic number, since it is chosen on the same images).

Four more scores come free with the same trainings (no training of their own): each training is also
scored with flip and with dihedral test-time augmentation (TTA); it keeps moving averages of its weights
(:data:`EMA_DECAYS`, updated after every step, which does not change the training itself), each
scored as a row ``<variant> +ema<decay>``; and the seeds of a variant are scored together as one
ensemble (the mean of their probabilities), a row ``<variant> ensemble``: one number over the seeds,
with no spread.

Writes ``OUT/<variant>/seed<k>/`` (the training, resumable and reused like any other, with its
scores in ``original/``, ``original_tta/``, ``original_dihedral/`` and ``ema<decay>/``), ``OUT/<variant>/ensemble/`` and
``OUT/ablation-<variants>-seeds<seeds>.json`` and ``.md`` (the table, e.g. ``ablation-full-full-50ep-seeds0+1.md``);
prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..cache import TensorSegmentation, load_dataset
from ..errors import ProjectError
from ..evaluate import evaluate_checkpoint
from ..data import subset
from ..folders import SPLITS, list_split
from ..io import atomic_path, read_csv, write_json, write_text
from ..model import build_model, weights_argument
from ..splits import holdout, split_record, write_split
from ..train import fit

# Model 3 trained with the report's recipe; every variant changes some of these
BASE = {"decoder": "unet", "image_size": 128, "epochs": 25, "augment": "off", "loss": "bce", "schedule": "constant",
        "encoder_lr": 1.0, "encoder_bn": "train", "rotate": 0.0,
        "widths": "",  # widths: the decoder's four channel widths, e.g. 192-128-64-32 ("": the decoder's own)
        "deep": 0.0,  # deep: the weight of deep supervision's auxiliary losses (0: off)
        "lr_factor": 1.0}  # lr_factor: the peak learning rate as a fraction of --lr
FULL = {"augment": "on", "loss": "bce_dice", "schedule": "cosine"}
VARIANTS = {
    "model2": {"decoder": "report"},  # Model 2 (the report's decoder and recipe), for reference
    "report": {},  # Model 3 with the report's recipe
    "full": FULL,
    "full-augment": {**FULL, "augment": "off"},
    "full-dice": {**FULL, "loss": "bce"},
    "full-cosine": {**FULL, "schedule": "constant"},
    "full@192": {**FULL, "image_size": 192},
    "full@256": {**FULL, "image_size": 256},
    "full-40ep": {**FULL, "epochs": 40},
    "full-50ep": {**FULL, "epochs": 50},
    "full-15ep": {**FULL, "epochs": 15},
    "full-lovasz": {**FULL, "loss": "bce_lovasz"},
    "full-enc0.1": {**FULL, "encoder_lr": 0.1},  # the encoder at a tenth of the decoder's learning rate
    "full-bnfrozen": {**FULL, "encoder_bn": "frozen"},  # the encoder's BatchNorm keeps its saved statistics
    "full-bnfrozen-50ep": {**FULL, "encoder_bn": "frozen", "epochs": 50},
    "full-bnfrozen@192": {**FULL, "encoder_bn": "frozen", "image_size": 192},
    "full-bnfrozen-100ep": {**FULL, "encoder_bn": "frozen", "epochs": 100},
    "full-bnfrozen-rot45": {**FULL, "encoder_bn": "frozen", "rotate": 45.0},  # and any angle up to 45 degrees
    "full-bnfrozen-wide": {**FULL, "encoder_bn": "frozen", "widths": "192-128-64-32"},  # twice the U-Net's widths
    "full-bnfrozen-deep": {**FULL, "encoder_bn": "frozen", "deep": 0.5},  # deep supervision at strides 16, 8, 4
    "strong-deep": {**FULL, "encoder_bn": "frozen", "epochs": 50, "deep": 0.5},
    "strong-deep-100ep": {**FULL, "encoder_bn": "frozen", "epochs": 100, "deep": 0.5},
    "strong-halflr": {**FULL, "encoder_bn": "frozen", "epochs": 50, "deep": 0.5, "lr_factor": 0.5},  # M3_RECIPE=strong
}
QUIET = ("encoder_lr", "encoder_bn", "rotate", "widths", "deep", "lr_factor")  # recipe keys the table names only where a variant changes them
EMA_DECAYS = (0.99, 0.995, 0.998)  # moving averages every training keeps: about 100, 200 and 500 steps


def parse_variant(text: str) -> tuple[str, dict]:
    """A preset name, or ``name=key:value,...`` over :data:`BASE` (e.g. ``mine=augment:on,image_size:192``)."""
    if "=" not in text:
        if text not in VARIANTS:
            raise ProjectError(f"unknown variant {text!r}; presets: {', '.join(VARIANTS)}, or name=key:value,...")
        return text, VARIANTS[text]
    name, spec = text.split("=", 1)
    recipe = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition(":")
        if key not in BASE:
            raise ProjectError(f"variant {name}: unknown key {key!r}; keys: {', '.join(BASE)}")
        recipe[key] = type(BASE[key])(value)  # image_size and epochs are int, encoder_lr float, the rest text
    return name, recipe


def run_variant(name: str, recipe: dict, full: TensorSegmentation, root: Path, split: dict, seed: int, out: Path,
                *, weights, batch_size: int, lr: float, device: str, progress: bool) -> dict:
    """Train one variant for one seed on the split's training ids of ``full`` (the training split decoded
    at the variant's working size); score the held-out ids."""
    r = {**BASE, **recipe}
    train, val = subset(full, split["train_ids"]), subset(full, split["validation_ids"])
    torch.manual_seed(seed)
    model = build_model(False, encoder_weights=weights, decoder=r["decoder"], progress=False,
                        decoder_widths=decoder_widths(r["widths"]))
    folder = out / name / f"seed{seed}"
    history = fit(model, train, val, epochs=r["epochs"], batch_size=batch_size, lr=lr * r["lr_factor"], seed=seed,
                  device=device,
                  out_dir=folder, progress=progress, eval_split="validation", select="last",
                  augment=augment_option(r), loss=r["loss"], schedule=r["schedule"], log=None, ema=EMA_DECAYS,
                  encoder_lr=r["encoder_lr"], encoder_bn=r["encoder_bn"], deep_supervision=r["deep"])
    t0 = time.perf_counter()
    score = partial(_score, root=root, ids=split["validation_ids"], batch_size=batch_size, device=device)
    scores = score(folder / "checkpoint.pt", folder)
    ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    averages = {}
    for decay, state in zip(ckpt["ema"]["decays"], ckpt["ema"]["averages"]):
        path = folder / f"ema{decay}" / "checkpoint.pt"  # the average as a checkpoint of its own
        path.parent.mkdir(parents=True, exist_ok=True)
        if not _newer(path, [folder / "checkpoint.pt"]):  # written once per training (a rerun reuses its scores)
            with atomic_path(path) as tmp:
                torch.save({**{k: v for k, v in ckpt.items() if k != "ema"}, "model": state}, tmp)
        averages[str(decay)] = score(path, path.parent)
    best = max(history, key=lambda row: row["val_iou"])
    return {"variant": name, "seed": seed, "recipe": r, "weights": model.config["encoder_weights_used"],
            **scores, "ema": averages, "score_seconds": time.perf_counter() - t0,
            "val_jaccard_last_epoch_working": history[-1]["val_iou"],
            "val_jaccard_best_epoch_working": best["val_iou"], "best_epoch": best["epoch"],
            "train_seconds": sum(row["seconds"] for row in history),
            "val_jaccard_per_epoch_working": [row["val_iou"] for row in history]}


def decoder_widths(text: str) -> list[int] | None:
    """``192-128-64-32`` -> [192, 128, 64, 32]; "" -> None (the decoder's own widths)."""
    if not text:
        return None
    try:
        widths = [int(w) for w in text.split("-")]
    except ValueError:
        widths = []
    if len(widths) != 4 or min(widths) < 1:
        raise ProjectError(f"widths:{text}: give the decoder's four channel widths as positive integers, e.g. 192-128-64-32")
    return widths


def augment_option(recipe: dict):
    """fit's ``augment`` for a variant: off, on (the defaults), or on with a rotation of up to ``rotate`` degrees."""
    if recipe["augment"] != "on":
        if recipe["rotate"]:
            raise ProjectError(f"rotate:{recipe['rotate']:g} rotates the augmented batches, so it needs augment:on")
        return False
    return {"rotate": recipe["rotate"]} if recipe["rotate"] else True


def _score(checkpoint, folder: Path, *, root: Path, ids: list[str], batch_size: int, device: str) -> dict:
    """Validation Jaccard and Dice at the original size of one checkpoint (or a list: an ensemble),
    without TTA, with flip TTA and with dihedral TTA, written to ``folder/original``, ``folder/original_tta``
    and ``folder/original_dihedral``."""
    out = {}
    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    for key, tta in (("", False), ("_tta", "flips"), ("_dihedral", "dihedral")):
        s = _scored(folder / f"original{key}", checkpoints, ids) or evaluate_checkpoint(
            checkpoint, root, "train", folder / f"original{key}", batch_size=batch_size, device=device, tta=tta,
            progress=False, ids=ids)
        out |= {f"val_jaccard{key}": s["macro"]["jaccard"], f"val_dice{key}": s["macro"]["dice"]}
    return out


def _newer(path: Path, than: list[Path]) -> bool:
    """Whether ``path`` exists and was written after every file of ``than``."""
    return path.is_file() and all(path.stat().st_mtime >= Path(c).stat().st_mtime for c in than)


def _scored(folder: Path, checkpoints: list[Path], ids: list[str]) -> dict | None:
    """The summary a finished scoring of these checkpoints on these ids left in ``folder`` (a rerun of the
    ablation reuses it), or None when there is none, it is older than a checkpoint, or it scored other ids
    or other checkpoints (an ensemble of other seeds)."""
    summary, rows = folder / "summary.json", folder / "per_image.csv"
    if not (_newer(summary, checkpoints) and rows.is_file()):
        return None
    if sorted(r["id"] for r in read_csv(rows)) != sorted(ids):
        return None
    found = json.loads(summary.read_text())
    scored = found.get("checkpoint")
    if sorted(scored if isinstance(scored, list) else [scored]) != sorted(str(c) for c in checkpoints):
        return None  # an ensemble of other seeds
    return found


def ensemble(name: str, mine: list[dict], out: Path, **score) -> dict:
    """The seeds of one variant scored as one ensemble (mean probability): one number, no spread."""
    folder = out / name / "ensemble"
    checkpoints = [out / name / f"seed{r['seed']}" / "checkpoint.pt" for r in mine]
    return {"variant": f"{name} ensemble", "recipe": mine[0]["recipe"], "seeds": [r["seed"] for r in mine],
            **_score(checkpoints, folder, **score), "train_seconds": sum(r["train_seconds"] for r in mine)}


SCORED = ("val_jaccard", "val_jaccard_tta", "val_jaccard_dihedral", "val_dice", "val_jaccard_last_epoch_working",
          "val_jaccard_best_epoch_working", "train_seconds")


def _row(name: str, recipe: dict, mine: list[dict]) -> dict:
    row = {"variant": name, "recipe": recipe, "seeds": [r["seed"] for r in mine]}
    for key in (k for k in SCORED if k in mine[0]):
        v = np.array([r[key] for r in mine], dtype=float)
        row[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return row


def table(runs: list[dict], ensembles: list[dict] = ()) -> list[dict]:
    """Per variant: one row (mean and sd over seeds of each figure), one per moving average of its
    weights (the same trainings), and its ensemble's row when it has one."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        rows.append(_row(name, mine[0]["recipe"], mine))
        for decay in mine[0].get("ema", {}):
            scored = [{"seed": r["seed"], "train_seconds": r["train_seconds"], **r["ema"][decay]} for r in mine]
            rows.append(_row(f"{name} +ema{decay}", {**mine[0]["recipe"], "ema": float(decay)}, scored))
        rows += [{**e, "ensemble": True, **{k: {"mean": e[k], "sd": None} for k in SCORED if k in e}}
                 for e in ensembles if e["variant"] == f"{name} ensemble"]
    return rows


EPOCHS_SHOWN = (5, 10, 15, 20, 25, 30, 40)


def epoch_rows(runs: list[dict]) -> list[dict]:
    """Validation Jaccard (working size) after k epochs, for the variants with a constant learning rate:
    there the first k epochs of a run are exactly a k-epoch run, so one run measures every k."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs if r["recipe"]["schedule"] == "constant"
                              and "val_jaccard_per_epoch_working" in r):
        mine = [r for r in runs if r["variant"] == name]
        n = min(len(r["val_jaccard_per_epoch_working"]) for r in mine)
        row = {"variant": name}
        for k in (k for k in EPOCHS_SHOWN if k <= n):
            v = np.array([r["val_jaccard_per_epoch_working"][k - 1] for r in mine])
            row[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        rows.append(row)
    return rows


def markdown(rows: list[dict], header: str, by_epoch: list[dict] = ()) -> str:
    def ms(v, digits=3):
        if v is None:
            return "-"
        return f"{v['mean']:.{digits}f}" + ("" if v["sd"] is None else f" ± {v['sd']:.{digits}f}")

    lines = [header, "", "| variant | recipe | seeds | val Jaccard (original size) | with flip TTA | with dihedral TTA "
             "| val Dice | best-epoch val Jaccard (working size, optimistic) | training min per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        recipe = ", ".join(f"{k} {v}" for k, v in r["recipe"].items() if k not in QUIET or v != BASE[k])
        seeds = f"{'+'.join(map(str, r['seeds']))} (one ensemble)" if r.get("ensemble") else len(r["seeds"])
        minutes = {k: v / 60 / (len(r["seeds"]) if r.get("ensemble") else 1) if v is not None else None
                   for k, v in r["train_seconds"].items()}
        lines.append(f"| {r['variant']} | {recipe} | {seeds} | {ms(r['val_jaccard'])} | {ms(r.get('val_jaccard_tta'))} | "
                     f"{ms(r.get('val_jaccard_dihedral'))} | {ms(r['val_dice'])} | {ms(r.get('val_jaccard_best_epoch_working'))} | {ms(minutes, 1)} |")
    shown = [k for k in EPOCHS_SHOWN if any(k in r for r in by_epoch)]
    if shown:
        lines += ["", "Validation Jaccard (working size) after k epochs, constant learning rate:", "",
                  "| variant | " + " | ".join(f"{k} epochs" for k in shown) + " |",
                  "| --- |" + " --- |" * len(shown)]
        lines += [f"| {r['variant']} | " + " | ".join(ms(r[k]) if k in r else "" for k in shown) + " |" for r in by_epoch]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.tools.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, type=Path, help="a folder with the ISIC 2016 training layout")
    p.add_argument("--encoder-weights", default="imagenet", help="imagenet, none, or a .pth path")
    p.add_argument("--variants", nargs="+", default=["report", "full"],
                   help=f"presets ({', '.join(VARIANTS)}) or name=key:value,...")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=paths.RUNS / "ablation")
    p.add_argument("--cache-dir", type=Path, default=paths.CACHE)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    weights = weights_argument(args.encoder_weights)
    try:
        variants = [parse_variant(v) for v in args.variants]
        if not all((args.data_dir / f).is_dir() for f in SPLITS["train"]):
            raise ProjectError(f"{args.data_dir}: no ISIC 2016 training split (images and masks folders)")
        ids = [sample.id for sample in list_split(args.data_dir, "train")]
        split = split_record(*holdout(ids, args.val_fraction, args.split_seed), args.val_fraction, args.split_seed)
        write_split(args.out, split)
        runs, ensembles, decoded = [], [], {}  # working size -> the training split, decoded once
        for name, recipe in variants:
            size = {**BASE, **recipe}["image_size"]
            if size not in decoded:
                decoded[size] = load_dataset(args.data_dir, "train", size, args.cache_dir, progress=not args.quiet)
            for seed in args.seeds:
                t0 = time.perf_counter()
                run = run_variant(name, recipe, decoded[size], args.data_dir, split, seed, args.out, weights=weights,
                                  batch_size=args.batch_size, lr=args.lr, device=args.device,
                                  progress=not args.quiet)
                runs.append(run)
                print(f"{name} seed {seed}: val Jaccard {run['val_jaccard']:.4f} (original size; flip TTA "
                      f"{run['val_jaccard_tta']:.4f}, dihedral TTA {run['val_jaccard_dihedral']:.4f}; " + ", ".join(f"ema {d} {v['val_jaccard']:.4f}" for d, v in
                                                                  run["ema"].items()) +
                      f"), trained in {run['train_seconds'] / 60:.1f} min ({time.perf_counter() - t0:.0f} s with "
                      "scoring)", flush=True)
            mine = [r for r in runs if r["variant"] == name]
            if len(mine) > 1:
                ensembles.append(ensemble(name, mine, args.out, root=args.data_dir, ids=split["validation_ids"],
                                          batch_size=args.batch_size, device=args.device))
                print(f"{name}, seeds {args.seeds} as one ensemble: val Jaccard {ensembles[-1]['val_jaccard']:.4f} "
                      f"(flip TTA {ensembles[-1]['val_jaccard_tta']:.4f}, dihedral TTA "
                      f"{ensembles[-1]['val_jaccard_dihedral']:.4f})", flush=True)
    except (ProjectError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    rows = table(runs, ensembles)
    header = (f"Model 3 ablation on {args.data_dir.name}: {split['n_train']} training / {split['n_validation']} "
              f"validation images ({args.val_fraction:.0%} split, split seed {args.split_seed}), encoder weights "
              f"{runs[0]['weights']}, seeds {args.seeds}, batch size {args.batch_size}, learning rate {args.lr:g} "
              f"(times each variant's lr_factor), {torch.get_num_threads()} CPU thread(s)"
              if runs else "no runs")
    text = markdown(rows, header, epoch_rows(runs))
    stem = f"ablation-{'-'.join(n for n, _ in variants)}-seeds{'+'.join(map(str, args.seeds))}"
    write_json(args.out / f"{stem}.json", {"header": header, "rows": rows, "runs": runs, "ensembles": ensembles})
    write_text(args.out / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
