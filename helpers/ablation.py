"""Model 3's recipe, one ingredient at a time: validation Jaccard per variant over seeds, and its cost.

    python -m helpers.ablation --data-dir ROOT --encoder-weights W [--variants report full ...]
                               [--seeds 0 1] [--val-fraction 0.2] [--split-seed 0] [--out runs/ablation]

Every variant trains on the training ids of one seeded validation split (:mod:`helpers.splits`) and is
scored on the held-out ids only, at each image's original size (:mod:`helpers.evaluate`); a test
split, when the folder has one, is never read. A variant is a recipe (see :data:`VARIANTS`, or
``name=key:value,key:value`` on the command line with the keys of :data:`BASE`). Each training keeps
the last epoch's weights; the history gives, for free, what choosing the best validation epoch would
have scored (an optimistic number, since it is chosen on the same images).

Writes ``OUT/<variant>/seed<k>/`` (the training, resumable and reused like any other) and
``OUT/ablation.json`` and ``OUT/ablation.md`` (the table); prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import paths
from .cache import TensorSegmentation, load_dataset
from .errors import ProjectError
from .evaluate import evaluate_checkpoint
from .experiment import subset
from .folders import SPLITS, list_split
from .io import write_json, write_text
from .model import build_model
from .splits import holdout, split_record, write_split
from .train import fit

# Model 3 trained with the report's recipe; every variant changes some of these
BASE = {"decoder": "unet", "image_size": 128, "epochs": 25, "augment": "off", "loss": "bce", "schedule": "constant"}
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
    "full-15ep": {**FULL, "epochs": 15},
}


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
        recipe[key] = int(value) if key in ("image_size", "epochs") else value
    return name, recipe


def run_variant(name: str, recipe: dict, full: TensorSegmentation, root: Path, split: dict, seed: int, out: Path,
                *, weights, batch_size: int, lr: float, device: str, progress: bool) -> dict:
    """Train one variant for one seed on the split's training ids of ``full`` (the training split decoded
    at the variant's working size); score the held-out ids."""
    r = {**BASE, **recipe}
    train, val = subset(full, split["train_ids"]), subset(full, split["validation_ids"])
    torch.manual_seed(seed)
    model = build_model(False, encoder_weights=weights, decoder=r["decoder"], progress=False)
    folder = out / name / f"seed{seed}"
    history = fit(model, train, val, epochs=r["epochs"], batch_size=batch_size, lr=lr, seed=seed, device=device,
                  out_dir=folder, progress=progress, eval_split="validation", select="last",
                  augment=r["augment"] == "on", loss=r["loss"], schedule=r["schedule"], log=None)
    scored = evaluate_checkpoint(folder / "checkpoint.pt", root, "train", folder / "original", batch_size=batch_size,
                                 device=device, progress=False, ids=split["validation_ids"])
    best = max(history, key=lambda row: row["val_iou"])
    return {"variant": name, "seed": seed, "recipe": r, "weights": model.config["encoder_weights_used"],
            "val_jaccard": scored["macro"]["jaccard"], "val_dice": scored["macro"]["dice"],
            "val_jaccard_last_epoch_working": history[-1]["val_iou"],
            "val_jaccard_best_epoch_working": best["val_iou"], "best_epoch": best["epoch"],
            "train_seconds": sum(row["seconds"] for row in history),
            "val_jaccard_per_epoch_working": [row["val_iou"] for row in history]}


def table(runs: list[dict]) -> list[dict]:
    """One row per variant: mean and sd over seeds of each figure."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        row = {"variant": name, "recipe": mine[0]["recipe"], "seeds": [r["seed"] for r in mine]}
        for key in ("val_jaccard", "val_dice", "val_jaccard_last_epoch_working", "val_jaccard_best_epoch_working",
                    "train_seconds"):
            v = np.array([r[key] for r in mine], dtype=float)
            row[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        rows.append(row)
    return rows


EPOCHS_SHOWN = (5, 10, 15, 20, 25, 30, 40)


def epoch_rows(runs: list[dict]) -> list[dict]:
    """Validation Jaccard (working size) after k epochs, for the variants with a constant learning rate:
    there the first k epochs of a run are exactly a k-epoch run, so one run measures every k."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs if r["recipe"]["schedule"] == "constant"):
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
        return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"

    lines = [header, "", "| variant | recipe | seeds | val Jaccard (original size) | val Dice | best-epoch val Jaccard "
             "(working size, optimistic) | training min per seed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        recipe = ", ".join(f"{k} {v}" for k, v in r["recipe"].items())
        minutes = {k: v / 60 for k, v in r["train_seconds"].items()}
        lines.append(f"| {r['variant']} | {recipe} | {len(r['seeds'])} | {ms(r['val_jaccard'])} | {ms(r['val_dice'])} | "
                     f"{ms(r['val_jaccard_best_epoch_working'])} | {ms(minutes, 1)} |")
    shown = [k for k in EPOCHS_SHOWN if any(k in r for r in by_epoch)]
    if shown:
        lines += ["", "Validation Jaccard (working size) after k epochs, constant learning rate:", "",
                  "| variant | " + " | ".join(f"{k} epochs" for k in shown) + " |",
                  "| --- |" + " --- |" * len(shown)]
        lines += [f"| {r['variant']} | " + " | ".join(ms(r[k]) if k in r else "" for k in shown) + " |" for r in by_epoch]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.ablation", description=__doc__.split("\n\n")[0])
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
    weights = None if args.encoder_weights.lower() == "none" else args.encoder_weights
    try:
        variants = [parse_variant(v) for v in args.variants]
        if not all((args.data_dir / f).is_dir() for f in SPLITS["train"]):
            raise ProjectError(f"{args.data_dir}: no ISIC 2016 training split (images and masks folders)")
        ids = [sample.id for sample in list_split(args.data_dir, "train")]
        split = split_record(*holdout(ids, args.val_fraction, args.split_seed), args.val_fraction, args.split_seed)
        write_split(args.out, split)
        runs, decoded = [], {}  # working size -> the training split, decoded once
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
                print(f"{name} seed {seed}: val Jaccard {run['val_jaccard']:.4f} (original size), trained in "
                      f"{run['train_seconds'] / 60:.1f} min ({time.perf_counter() - t0:.0f} s with scoring)", flush=True)
    except (ProjectError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    rows = table(runs)
    header = (f"Model 3 ablation on {args.data_dir.name}: {split['n_train']} training / {split['n_validation']} "
              f"validation images ({args.val_fraction:.0%} split, split seed {args.split_seed}), encoder weights "
              f"{runs[0]['weights']}, seeds {args.seeds}, {torch.get_num_threads()} CPU thread(s)"
              if runs else "no runs")
    text = markdown(rows, header, epoch_rows(runs))
    write_json(args.out / f"ablation-{'-'.join(n for n, _ in variants)}.json", {"header": header, "rows": rows, "runs": runs})
    write_text(args.out / f"ablation-{'-'.join(n for n, _ in variants)}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
