"""What the notebooks do, as functions: config, data, model, training, per-image results.

A notebook's parameters cell holds literals; the next cell builds a :class:`RunConfig` from them
and passes only that around. Every output goes under ``config.run_dir`` (CSV/JSON/checkpoints)
and ``config.figures_dir`` (PNG), written atomically.
"""

from __future__ import annotations

import json
import platform
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import metrics, paths
from .cache import TensorSegmentation, load_cached, load_dataset
from .errors import DataError
from .folders import SOURCE_LABELS, SPLITS, DataWarning
from .io import read_csv, write_csv, write_json
from .evaluate import evaluate_checkpoint
from .model import SegmentationModel, build_model, parameter_counts
from .train import evaluate, fit, make_loader, resolve_device

SOURCES = ("auto", "isic2016", "synthetic")
LABELS = SOURCE_LABELS


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run; defaults are the report's."""

    data: str = "auto"              # "auto" (ISIC 2016 if present, else synthetic), "isic2016", "synthetic"
    data_dir: str | None = None     # folder of the data; None: data/isic2016 or data/synthetic
    synthetic_train: int = 240      # size of the synthetic set when it has to be generated
    synthetic_test: int = 100
    image_size: int = 128
    epochs: int = 25
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    seeds: int = 1                  # number of seeds (seed, seed + 1, ...); the comparison reports their spread
    device: str = "auto"
    encoder_weights: str | None = "auto"  # "imagenet", None, a path, or "auto" (ImageNet else random, loudly)
    run_dir: str = "runs/interactive"   # outputs (relative paths are under the project root)
    figures_dir: str = "figures"
    cache_dir: str | None = "data/cache"
    tta: bool = False               # also score with test-time augmentation (flips), reported separately
    progress: bool = True

    def __post_init__(self):
        if self.data not in SOURCES:
            raise ValueError(f"data must be one of {SOURCES}, got {self.data!r}")
        for name in ("image_size", "epochs", "batch_size", "seeds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def run_path(self) -> Path:
        return _under_root(self.run_dir)

    def figure(self, name: str) -> Path:
        """Where figure ``name`` (e.g. fig03_model1_loss.png) goes."""
        return _under_root(self.figures_dir) / name


def _under_root(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else paths.ROOT / path


@dataclass
class Data:
    source: str      # "isic2016" | "synthetic"
    root: Path
    train: TensorSegmentation
    test: TensorSegmentation

    @property
    def label(self) -> str:
        return LABELS[self.source]


def isic_present(root: Path) -> bool:
    return all((root / folder).is_dir() for pair in SPLITS.values() for folder in pair)


def resolve_source(cfg: RunConfig) -> tuple[str, Path]:
    """Which data this run uses and where; generates the synthetic set on first use.

    "auto" falls back to the synthetic set only when no data folder was named: a named folder
    without the ISIC layout is an error.
    """
    if cfg.data in ("auto", "isic2016"):
        root = _under_root(cfg.data_dir) if cfg.data_dir else paths.ISIC2016
        if isic_present(root):
            return "isic2016", root
        if cfg.data == "isic2016":
            raise DataError(f"{root}: ISIC 2016 Part 1 data not found; download it with `make data` "
                            f"(python -m helpers.data download {root})")
        if cfg.data_dir:  # a folder named by the user is never swapped for the synthetic set
            missing = next(f for pair in SPLITS.values() for f in pair if not (root / f).is_dir())
            raise DataError(f"{root}: not a data folder in the ISIC 2016 Part 1 layout (no {missing} folder"
                            f"{'' if root.is_dir() else '; the folder does not exist'}); pass --data synthetic to "
                            "write the demo set there")
    root = _under_root(cfg.data_dir) if cfg.data_dir and cfg.data == "synthetic" else paths.SYNTHETIC
    from .synthetic import write_synthetic_dataset

    # a no-op when the set is there with these sizes; a set of other sizes is an error, not reused
    write_synthetic_dataset(root, n_train=cfg.synthetic_train, n_test=cfg.synthetic_test, seed=0,
                            progress=cfg.progress)
    return "synthetic", root


def prepare_data(cfg: RunConfig) -> Data:
    """Both splits decoded and resized once (through the cache), with their source said plainly."""
    source, root = resolve_source(cfg)
    cache = _under_root(cfg.cache_dir) if cfg.cache_dir else None
    train = load_dataset(root, "train", cfg.image_size, cache, progress=cfg.progress)
    test = load_dataset(root, "test", cfg.image_size, cache, progress=cfg.progress)
    print(f"data: {LABELS[source]} from {root}: {len(train)} train / {len(test)} test images at "
          f"{cfg.image_size}x{cfg.image_size}")
    return Data(source, root, train, test)


def check_data(cfg: RunConfig, root: Path, log=print) -> None:
    """Decode both splits (through the cache the notebooks then reuse): a bad file fails here, at
    once and named, before any notebook runs. Conversions are logged as one-line notes."""
    cache = _under_root(cfg.cache_dir) if cfg.cache_dir else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        for split in SPLITS:
            load_cached(root, split, cfg.image_size, cache, progress=cfg.progress)
    for w in caught:
        log(f"note: {w.message}")


def dataset_summary(d: Data) -> dict:
    """Counts, original size ranges and lesion area fractions (at the working resolution)."""
    out = {"source": d.label}
    for split, ds in (("train", d.train), ("test", d.test)):
        frac = ds.masks.float().mean(dim=(1, 2, 3))
        h, w = ds.sizes[:, 0], ds.sizes[:, 1]
        out[split] = {"images": len(ds), "width": f"{int(w.min())}-{int(w.max())}",
                      "height": f"{int(h.min())}-{int(h.max())}",
                      "lesion_fraction_mean": round(float(frac.mean()), 3),
                      "lesion_fraction_range": f"{float(frac.min()):.3f}-{float(frac.max()):.3f}"}
    return out


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
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def train_and_evaluate(cfg: RunConfig, d: Data, model: SegmentationModel, name: str, seed: int | None = None) -> dict:
    """Train ``model`` for one seed, evaluate on the test split and save everything.

    Writes ``run_dir/name/seed<seed>/``: history.json, checkpoint.pt, per_image.csv (metrics per
    test image at the working resolution, as the report measured), ``original/`` (masks,
    per_image.csv and summary.json at each image's original size, as the ISIC challenge scores;
    ``original_tta/`` too when cfg.tta) and metrics.json (all of it with settings, data source,
    weights and versions). Returns {"seed", "history", "per_image", "original", "metrics", "probs"}.
    """
    seed = cfg.seed if seed is None else seed
    out = cfg.run_path / name / f"seed{seed}"
    history = fit(model, d.train, d.test, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  seed=seed, device=cfg.device, out_dir=out, progress=cfg.progress)
    dev = resolve_device(cfg.device)
    ev = evaluate(model, make_loader(d.test, cfg.batch_size, False, None, dev), dev, keep_probs=True)
    rows = metrics.per_image_rows(ev["ids"], d.test.sizes, ev["counts"])
    write_csv(out / "per_image.csv", rows)
    summary = {"name": name, "seed": seed, "data_source": d.label, "data_dir": str(d.root), "model": model.config,
               "config": asdict(cfg), "resolution": f"{cfg.image_size}x{cfg.image_size}",
               "macro": metrics.all_metrics(ev["counts"], "macro"),
               "micro": metrics.all_metrics(ev["counts"], "micro"),
               "test_loss": ev["loss"], "n_test": len(rows), "environment": environment()}
    for key, tta in (("original", False), ("original_tta", True)) if cfg.tta else (("original", False),):
        challenge = evaluate_checkpoint(out / "checkpoint.pt", d.root, "test", out / key, batch_size=cfg.batch_size,
                                        device=cfg.device, tta=tta, progress=cfg.progress)
        summary[key] = {"macro": challenge["macro"], "micro": challenge["micro"], "tta": tta}
    write_json(out / "metrics.json", summary)
    return {"seed": seed, "history": history, "per_image": rows, "original": read_csv(out / "original" / "per_image.csv"),
            "metrics": summary, "probs": ev["probs"]}


def train_seeds(cfg: RunConfig, d: Data, model: SegmentationModel, name: str) -> list[dict]:
    """:func:`train_and_evaluate` for seeds cfg.seed .. cfg.seed + cfg.seeds - 1.

    ``model`` is trained for the first seed; each further seed gets a fresh model of the same
    kind, initialised under that seed. Writes ``run_dir/name/summary.json`` (mean and spread).
    """
    runs = [train_and_evaluate(cfg, d, model, name, cfg.seed)]
    for seed in range(cfg.seed + 1, cfg.seed + cfg.seeds):
        torch.manual_seed(seed)
        fresh = build_model(model.config["freeze_encoder"], encoder_weights=cfg.encoder_weights,
                            decoder=model.config["decoder"], progress=False)
        runs.append(train_and_evaluate(cfg, d, fresh, name, seed))
    write_json(cfg.run_path / name / "summary.json", seed_summary([r["metrics"] for r in runs]))
    return runs


def seed_summary(per_seed: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of every macro metric, per resolution."""
    out = {"seeds": [m["seed"] for m in per_seed], "name": per_seed[0]["name"],
           "data_source": per_seed[0]["data_source"], "model": per_seed[0]["model"]}
    for key in ("macro", "original", "original_tta"):
        if key not in per_seed[0]:
            continue
        values = {k: [(m[key] if key == "macro" else m[key]["macro"])[k] for m in per_seed] for k in metrics.METRICS}
        out[key] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                        "per_seed": v} for k, v in values.items()}
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
    return {"summary": summary, "runs": runs}


def sanity_checks(result: dict) -> dict:
    """Facts that must hold for any trained model; their output is regression-tested by nbval."""
    rows = result["per_image"] + result["original"]
    identity = all(abs(r["dice"] - 2 * r["jaccard"] / (1 + r["jaccard"])) < 1e-9 for r in rows)
    bounded = all(0.0 <= r[k] <= 1.0 for r in rows for k in metrics.METRICS)
    m = result["metrics"]
    finite = all(v == v for v in [*m["macro"].values(), *m["original"]["macro"].values()])
    return {"test images scored": len(result["per_image"]), "at original size": len(result["original"]),
            "per-image Dice == 2J/(1+J)": identity, "all metrics within [0, 1]": bounded,
            "headline metrics finite": finite}


def prediction_figure(d: Data, result: dict, best: bool, title: str, note: str, n: int = 4):
    """Best (or worst) n test images by IoU: image, true mask, predicted mask (at probability 0.5)."""
    from .plots import predictions

    idx = ranked(result["per_image"], n, best)
    preds = (result["probs"][idx].float() >= 0.5).float()
    return predictions(d.test.images[idx], d.test.masks[idx], preds, [d.test.ids[i] for i in idx],
                       [result["per_image"][i]["jaccard"] for i in idx], title, note)
