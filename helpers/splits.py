"""A seeded validation split held out of a training split.

For a data folder with training images alone (a clinic's own set, ISIC 2017/2018 training data,
the ISIC 2016 training split without its test split), a fraction of the training ids is held out
for validation. The held-out ids depend only on the ids, the fraction and the seed: each id is
ranked by the SHA-256 of ``"<seed>:<id>"`` and the first ``round(fraction * n)`` are held out. That
is repeatable on any machine and library version, and independent of the order of the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import DataError, ProjectError
from .io import write_json

SPLIT_FILE = "split.json"


def holdout(ids: list[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training ids, validation ids), each sorted; disjoint, together ``ids``.

    fraction in (0, 1); at least one id goes to each side. Raises ProjectError for a bad fraction
    or fewer than two ids, DataError for duplicate ids.
    """
    if not 0 < fraction < 1:
        raise ProjectError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if len(set(ids)) != len(ids):
        raise DataError("duplicate ids in the training split; cannot hold out a validation split")
    if len(ids) < 2:
        raise DataError(f"{len(ids)} training image(s): at least 2 are needed to hold out a validation split")
    n_val = min(max(round(fraction * len(ids)), 1), len(ids) - 1)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    val = set(ranked[:n_val])
    return sorted(i for i in ids if i not in val), sorted(val)


def split_record(train: list[str], val: list[str], fraction: float, seed: int, source_split: str = "train") -> dict:
    """What ``split.json`` holds: the rule, the fraction, the seed and both id lists."""
    return {"rule": "sha256('<seed>:<id>') ranking; the first round(fraction * n) ids are validation",
            "source_split": source_split, "fraction": fraction, "seed": seed,
            "n_train": len(train), "n_validation": len(val), "train_ids": train, "validation_ids": val}


def write_split(folder: str | Path, record: dict) -> Path:
    """Write ``split.json`` into ``folder``; a different split already there is an error, never replaced
    (a run folder's models must all be trained and scored on the same ids)."""
    path = Path(folder) / SPLIT_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable split file ({exc})") from None
        keys = ("fraction", "seed", "train_ids", "validation_ids")
        if any(saved.get(k) != record[k] for k in keys):
            raise ProjectError(f"{path}: this run folder was made with another validation split (fraction "
                               f"{saved.get('fraction')}, seed {saved.get('seed')}, {saved.get('n_validation')} "
                               f"ids); use the same VAL_FRACTION and SPLIT_SEED, or another run folder")
        return path
    return write_json(path, record)


def read_split(path: str | Path) -> dict:
    """A ``split.json`` written by :func:`write_split` (a run folder's or the ablation's): its record,
    checked to name a source split and a list of validation ids. DataError naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable split file ({exc})") from None
    ids = record.get("validation_ids") if isinstance(record, dict) else None
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
        raise DataError(f"{path}: not a split file (no list of validation ids under \"validation_ids\")")
    if record.get("source_split", "train") not in ("train", "test"):
        raise DataError(f"{path}: unknown source split {record.get('source_split')!r}")
    return record
