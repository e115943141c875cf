"""The data of a run: which data it uses (ISIC 2016 when present or downloadable, else the synthetic
demo set), its splits decoded at the working size (with the held-out validation split), the checks
and warnings of the files, their summary, and the external test sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import paths
from . import download
from .cache import TensorSegmentation, load_cached, load_dataset
from .errors import DataError, DownloadError
from .folders import SOURCE_LABELS, SPLITS, DataWarning, data_warnings, warning_lines
from .splits import holdout, split_record, write_split
from .io import write_json
from .external import ExternalSet, check_readable, external_sets, parse_spec
from .settings import RunConfig, model3_recipe, under_root

LABELS = SOURCE_LABELS
DEFAULT_VAL_FRACTION = 0.2  # held out when a folder has no test split
PROBE_TIMEOUT = 5.0  # seconds the ISIC archive has to answer before DATA="auto" runs the synthetic set
_under_root = under_root


@dataclass
class Data:
    """The splits of one run, decoded at one working size.

    ``test`` is the folder's test split (None when it has none); ``val`` the validation split held
    out of the training ids (None without one). ``scored`` is the split the report's protocol scores
    after every epoch and at the end: the test split when there is one, else the validation split.
    """

    source: str      # "isic2016" | "synthetic"
    root: Path
    train: TensorSegmentation
    test: TensorSegmentation | None
    val: TensorSegmentation | None = None
    split: dict | None = None  # the held-out ids (splits.split_record), when there is a validation split

    @property
    def scored(self) -> TensorSegmentation:
        return self.test if self.test is not None else self.val

    @property
    def scored_name(self) -> str:
        return "test" if self.test is not None else "validation"

    @property
    def label(self) -> str:
        """The data source, the folder, and the validation split when there is one."""
        text = LABELS[self.source]
        if self.source != "synthetic" and self.root.resolve() != paths.ISIC2016.resolve():
            text += f" ({self.root.name})"
        if self.split:
            text += (f", {self.split['fraction']:.0%} validation split (split seed {self.split['seed']}, "
                     f"{self.split['n_validation']} images)")
        return text


def has_split(root: Path, split: str) -> bool:
    """True when ``root`` holds both folders (images and masks) of ``split``."""
    return all((root / folder).is_dir() for folder in SPLITS[split])


def isic_present(root: Path) -> bool:
    return all(has_split(root, split) for split in SPLITS)


def resolve_source(cfg: RunConfig, log=print) -> tuple[str, Path, str]:
    """Which data this run uses, where, and a one-line reason; downloads or generates it when needed.

    - DATA="synthetic": the synthetic demo set (generated on first use; never the network).
    - a folder named by ``data_dir`` with at least the ISIC 2016 training split, or a complete
      data/isic2016: that folder.
    - DATA="auto" with a named ``data_dir`` that lacks it: an error (a named folder is never swapped).
    - otherwise the ISIC archive at ``cfg.isic_url`` is asked (one small request, a few seconds at
      most): when it answers, the four archives are downloaded, verified and extracted
      (:mod:`helpers.download`); when not, DATA="isic2016" fails and DATA="auto" runs the synthetic
      demo set, saying why in one line.
    """
    if cfg.data in ("auto", "isic2016"):
        root = _under_root(cfg.data_dir) if cfg.data_dir else paths.ISIC2016
        # a folder named by the user may hold the training split alone; data/isic2016 must be complete
        # (a partial download there is resumed below)
        if isic_present(root) or (cfg.data_dir and has_split(root, "train")):
            what = "training and test splits" if has_split(root, "test") else "training split only"
            return "isic2016", root, f"data: {root} ({what})"
        if cfg.data == "auto" and cfg.data_dir:  # a folder named by the user is never swapped for the synthetic set
            missing = next(f for f in SPLITS["train"] if not (root / f).is_dir())
            raise DataError(f"{root}: not a data folder in the ISIC 2016 Part 1 layout (no {missing} folder"
                            f"{'' if root.is_dir() else '; the folder does not exist'}); pass --data isic2016 to "
                            "download ISIC 2016 into it, or --data synthetic to write the demo set there")
        try:
            sizes = download.probe_archive(cfg.isic_url, download.ARCHIVES, timeout=PROBE_TIMEOUT)
            known = [v for v in sizes.values() if v is not None]
            total = f"{sum(known) / 1e6:,.0f} MB in all as the server states" if len(known) == len(sizes) else \
                "size not stated by the server"
            log(f"data: ISIC 2016 Part 1 is not in {root}; downloading the {len(sizes)} archives from "
                f"{cfg.isic_url} ({total}), then verifying and extracting them")
            download.download_isic2016(root, cfg.isic_url, download.ARCHIVES, progress=cfg.progress)
        except DownloadError as exc:
            reason = " ".join(str(exc).split())
            if cfg.data == "isic2016":
                raise DataError(f"{root}: ISIC 2016 Part 1 data not found and not downloaded: {reason}; download it "
                                f"with `make data` where the internet is reachable (python -m helpers.tools.data download "
                                f"{root}), or put the four archives in {root / '.downloads'}") from None
            root = paths.SYNTHETIC
            line = (f"data: SYNTHETIC demo set, because ISIC 2016 Part 1 is not in {paths.ISIC2016} and could not be "
                    f"downloaded ({reason}); to use the real data, run `make data` where the internet is reachable, "
                    f"or put the four archives in {paths.ISIC2016 / '.downloads'}")
            log(line)
            _write_synthetic(cfg, root)
            return "synthetic", root, line
        return "isic2016", root, f"data: {root} (downloaded from {cfg.isic_url})"
    root = _under_root(cfg.data_dir) if cfg.data_dir else paths.SYNTHETIC
    _write_synthetic(cfg, root)
    return "synthetic", root, f"data: SYNTHETIC demo set in {root} (DATA=synthetic)"


def _write_synthetic(cfg: RunConfig, root: Path) -> None:
    from .synthetic import write_synthetic_dataset

    # a no-op when the set is there with these sizes; a set of other sizes is an error, not reused
    write_synthetic_dataset(root, n_train=cfg.synthetic_train, n_test=cfg.synthetic_test, seed=0,
                            progress=cfg.progress)


def validation_fraction(cfg: RunConfig, root: Path) -> float:
    """cfg.val_fraction, or for None: 0 when ``root`` has a test split (the report's protocol), else 0.2."""
    if cfg.val_fraction is not None:
        return float(cfg.val_fraction)
    return 0.0 if has_split(root, "test") else DEFAULT_VAL_FRACTION


def subset(ds: TensorSegmentation, ids: list[str]) -> TensorSegmentation:
    """The items of ``ds`` with these ids, in this order."""
    where = {i: n for n, i in enumerate(ds.ids)}
    index = torch.tensor([where[i] for i in ids], dtype=torch.int64)
    data = {"images": ds.images.index_select(0, index), "ids": list(ids), "sizes": ds.sizes.index_select(0, index).tolist()}
    if ds.masks is not None:
        data["masks"] = ds.masks.index_select(0, index)
    return TensorSegmentation(data)


def prepare_data(cfg: RunConfig, image_size: int | None = None, log=print) -> Data:
    """Every split decoded and resized once (through the cache), with its source said plainly.

    The validation split (:func:`validation_fraction`) is held out of the training ids by
    :func:`helpers.splits.holdout` and its ids are written to ``run_dir/split.json``; a run folder
    made with other held-out ids is refused.
    """
    size = image_size or cfg.image_size
    source, root, _ = resolve_source(cfg, log=log)
    cache = _under_root(cfg.cache_dir) if cfg.cache_dir else None
    train = load_dataset(root, "train", size, cache, progress=cfg.progress, max_pixels=cfg.max_pixels)
    test = load_dataset(root, "test", size, cache, progress=cfg.progress,
                        max_pixels=cfg.max_pixels) if has_split(root, "test") else None
    val, record = None, None
    fraction = validation_fraction(cfg, root)
    if fraction > 0:
        train_ids, val_ids = holdout(train.ids, fraction, cfg.split_seed)
        record = split_record(train_ids, val_ids, fraction, cfg.split_seed)
        write_split(cfg.run_path, record)
        train, val = subset(train, train_ids), subset(train, val_ids)
    elif test is None:
        raise DataError(f"{root}: no test split and no validation split (val_fraction=0): nothing to score; "
                        "set a validation fraction (VAL_FRACTION)")
    d = Data(source, root, train, test, val, record)
    parts = [f"{len(train)} train"] + ([f"{len(val)} validation"] if val is not None else []) + \
        ([f"{len(test)} test"] if test is not None else [])
    log(f"data: {d.label} from {root}: {' / '.join(parts)} images at {size}x{size}")
    return d


def check_data(cfg: RunConfig, root: Path, log=print) -> dict:
    """Decode both splits (through the cache the notebooks then reuse): a bad file fails here, at
    once and named, before any notebook runs. Conversions are logged as one-line notes.

    Returns the data warnings (:func:`helpers.folders.data_warnings`) of each split, for the largest
    working size: {"working_size": S, "train": {...}, "test": {...}}; each kind found is logged as
    one line starting with "warning: ".
    """
    cache = _under_root(cfg.cache_dir) if cfg.cache_dir else None
    sizes = sorted({cfg.image_size, model3_recipe(cfg)["image_size"]})
    found = {"working_size": sizes[-1]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        for split in SPLITS:
            if has_split(root, split):
                for size in sizes:
                    data = load_cached(root, split, size, cache, progress=cfg.progress, max_pixels=cfg.max_pixels)
                found[split] = data_warnings(data["ids"], data["sizes"], data["lesion"], sizes[-1])
    for w in caught:
        log(f"note: {w.message}")
    for split in SPLITS:
        for line in warning_lines(split, found.get(split, {}), sizes[-1]):
            log(f"warning: {line}")
    return found


DATA_WARNINGS = "data_warnings.json"


def write_data_warnings(run: Path, found: dict, log=print) -> int:
    """Write :func:`check_data`'s warnings, when there are any, to ``run/data_warnings.json`` and say
    so (an earlier file is removed when there are none). Returns how many there are (an image can
    count under two kinds)."""
    count = sum(len(ids) for split in SPLITS for ids in found.get(split, {}).values())
    if not count:
        (run / DATA_WARNINGS).unlink(missing_ok=True)
        return 0
    write_json(run / DATA_WARNINGS, found)
    log(f"data: {count} data warning(s) above (these images train, look at them); the ids are in {run / DATA_WARNINGS}")
    return count


def dataset_summary(d: Data) -> dict:
    """Counts, original size ranges and lesion area fractions (at the working resolution)."""
    out = {"source": d.label}
    for split, ds in (("train", d.train), ("validation", d.val), ("test", d.test)):
        if ds is None:
            continue
        frac = ds.masks.float().mean(dim=(1, 2, 3))
        h, w = ds.sizes[:, 0], ds.sizes[:, 1]
        out[split] = {"images": len(ds), "width": f"{int(w.min())}-{int(w.max())}",
                      "height": f"{int(h.min())}-{int(h.max())}",
                      "lesion_fraction_mean": round(float(frac.mean()), 3),
                      "lesion_fraction_range": f"{float(frac.min()):.3f}-{float(frac.max()):.3f}"}
    return out


def find_external(cfg: RunConfig, log=print) -> list[ExternalSet]:
    """The run's external test sets (cfg.external; relative folders are under the project root),
    paired and every file decoded, so that a folder that cannot be read fails before any training."""
    spec = ",".join(f"{name}={_under_root(folder)}" if name else str(_under_root(folder))
                    for name, folder in parse_spec(cfg.external))
    with warnings.catch_warnings(record=True) as caught:  # files ignored, masks converted: one note each
        warnings.simplefilter("always", DataWarning)
        sets = external_sets(spec)
        check_readable(sets, cfg.max_pixels, log)
    for w in caught:
        log(f"note: {w.message}")
    if not sets:
        log("external test sets: none (EXTERNAL is empty)")
    return sets
