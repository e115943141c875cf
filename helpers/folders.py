"""ISIC 2016 Part 1 folders: the layout, listing, reading and validating one data folder.

Layout under one root (the official archives' names)::

    ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg
    ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png
    ISBI2016_ISIC_Part1_Test_Data/...            ISBI2016_ISIC_Part1_Test_GroundTruth/...

Images and masks are paired by ISIC id. :func:`load_sample` decodes one pair (through
:mod:`helpers.images`) and resizes it to ``image_size`` (image bilinear, mask nearest);
:func:`check_dataset` reads every file of a folder and collects its problems, and
:func:`data_warnings` names the images that train but deserve a look. The preprocessing cache and
the Datasets are in :mod:`helpers.cache`.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .images import DEFAULT_MAX_PIXELS, MASK_THRESHOLD, read_image, read_mask
from .progress import progress_bar

SPLITS = {  # split -> (image folder, mask folder)
    "train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
}
IMAGE_RE = re.compile(r"^(ISIC_\d{7})\.(jpe?g|png)$", re.IGNORECASE)
MASK_RE = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)
SYNTHETIC_MARKER = "synthetic.json"  # written by helpers.synthetic into a complete demo set
SOURCE_LABELS = {"isic2016": "ISIC 2016 Part 1", "synthetic": "SYNTHETIC demo set (not ISIC data)"}
WORKING_SIZE = 128  # the report's; the check names images much smaller than it
SMALL_SIDE = 0.5  # "much smaller": a side below half the working size (64 px at 128)


def source_of(root: str | os.PathLike) -> str:
    """"synthetic" for a folder written by helpers.synthetic, else "isic2016"."""
    return "synthetic" if (Path(root) / SYNTHETIC_MARKER).is_file() else "isic2016"


class DataWarning(UserWarning):
    """Something in the data was fixed on the fly (converted, binarised, ignored)."""


@dataclass(frozen=True)
class Sample:
    """One image and its mask (``mask`` is None for a folder of images alone)."""

    id: str
    image: Path
    mask: Path | None


def _scan(folder: Path, pattern: re.Pattern, kind: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: {kind} folder not found (expected the ISIC 2016 Part 1 layout; "
                        "`python -m helpers.tools.data download ROOT` fetches it, "
                        "`python -m helpers.tools.data synthetic ROOT` writes the demo set)")
    found: dict[str, Path] = {}
    ignored = []
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if not match or not path.is_file():
            ignored.append(path.name)
            continue
        if match.group(1) in found:
            raise DataError(f"{path}: duplicate id {match.group(1)} (also {found[match.group(1)].name})")
        found[match.group(1)] = path
    if ignored:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        warnings.warn(f"{folder}: ignored {len(ignored)} file(s) that are not ISIC {kind} files: {shown}",
                      DataWarning, stacklevel=3)
    return found


def list_split(root: str | os.PathLike, split: str, require_masks: bool = True) -> list[Sample]:
    """The samples of ``split`` ("train" or "test"), sorted by id, images paired with masks by id."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    image_dir, mask_dir = (root / name for name in SPLITS[split])
    images = _scan(image_dir, IMAGE_RE, "image")
    if not images:
        raise DataError(f"{image_dir}: no ISIC images (ISIC_XXXXXXX.jpg) in this folder: the {split} split is empty")
    if not require_masks and not mask_dir.exists():
        return [Sample(i, images[i], None) for i in sorted(images)]
    masks = _scan(mask_dir, MASK_RE, "mask")
    problems = []
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images:
        problems.append(f"{len(lonely_images)} image(s) without a mask in {mask_dir}: "
                        + ", ".join(images[i].name for i in lonely_images[:10]))
    if lonely_masks:
        problems.append(f"{len(lonely_masks)} mask(s) without an image in {image_dir}: "
                        + ", ".join(masks[i].name for i in lonely_masks[:10]))
    if problems:
        raise DataError("; ".join(problems))
    return [Sample(i, images[i], masks[i]) for i in sorted(images)]


def check_mask_size(sample: Sample, mask_shape: tuple[int, int], image_shape: tuple[int, int], notes=()) -> None:
    """DataError naming the mask when its (height, width) is not its image's; ``notes``, the image's
    notes, tell when an EXIF orientation was not applied (a mask drawn on the turned image)."""
    if tuple(mask_shape) != tuple(image_shape):
        turned = any(n.startswith(f"{sample.image.name}: EXIF orientation") for n in notes)
        raise DataError(f"{sample.mask}: mask is {mask_shape[1]}x{mask_shape[0]} but its image {sample.image.name} is "
                        f"{image_shape[1]}x{image_shape[0]}" + ("; the image's EXIF orientation is not applied (the "
                                                             "stored pixels are read): its mask must match them"
                                                             if turned else ""))


def load_sample(sample: Sample, image_size: int | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Decode one sample; resize to image_size x image_size unless it is None.

    Returns uint8 arrays ``image`` (H x W x 3), ``mask`` (H x W, 0/1, or None), ``size``
    (original height, width), ``lesion`` (lesion pixels at the original size, or None), ``notes``
    and ``non_binary``. A file of more than ``max_pixels`` pixels is refused (DataError).
    """
    img, notes = read_image(sample.image, max_pixels)
    mask, non_binary, lesion = None, False, None
    if sample.mask is not None:
        mask, mask_notes, non_binary = read_mask(sample.mask, max_pixels)
        lesion = int(mask.sum())
        check_mask_size(sample, mask.shape, (img.height, img.width), notes)
        notes += mask_notes
    size = (img.height, img.width)
    if image_size is not None:
        img = img.resize((image_size, image_size), Image.BILINEAR)
        if mask is not None:
            mask = np.array(Image.fromarray(mask.astype(np.uint8)).resize((image_size, image_size), Image.NEAREST))
    return {"image": np.array(img, dtype=np.uint8), "size": size, "notes": notes, "non_binary": non_binary,
            "mask": None if mask is None else mask.astype(np.uint8), "lesion": lesion}


def data_warnings(ids: list[str], sizes: list, lesions: list[int], image_size: int = WORKING_SIZE) -> dict:
    """Ids of the images that still train but deserve a look.

    sizes: original (height, width) per id; lesions: lesion pixels of each mask at that size.
    Returns {"small_images": a side below image_size x SMALL_SIDE, "no_lesion": an all-background
    mask, "no_background": an all-lesion mask} (ISIC 2016 has a few masks of each kind).
    """
    below = image_size * SMALL_SIDE
    return {"small_images": [i for i, (h, w) in zip(ids, sizes) if min(h, w) < below],
            "no_lesion": [i for i, n in zip(ids, lesions) if n == 0],
            "no_background": [i for i, n, (h, w) in zip(ids, lesions, sizes) if n == h * w]}


def warning_lines(split: str, found: dict, image_size: int = WORKING_SIZE) -> list[str]:
    """One line per kind of :func:`data_warnings` found: the count and the first five ids."""
    what = {"small_images": f"image(s) smaller than {image_size * SMALL_SIDE:g} px on a side (under half the "
                            f"{image_size} px working size)",
            "no_lesion": "mask(s) with no lesion (all background)",
            "no_background": "mask(s) with no background (all lesion)"}
    return [f"{split}: {len(ids)} {what[kind]}; they still train: " + ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            for kind, ids in found.items() if ids]


def _warn_fixes(folder: str, results: list[dict]) -> None:
    notes = [n for r in results for n in r["notes"]]
    if notes:
        warnings.warn(f"{folder}: {len(notes)} note(s) on its files: " + "; ".join(notes[:5]), DataWarning, stacklevel=3)
    non_binary = sum(r["non_binary"] for r in results)
    if non_binary:
        warnings.warn(f"{folder}: {non_binary} of {len(results)} masks are not strictly 0/255; binarised at "
                      f"value > {MASK_THRESHOLD} as the ISIC scorer does", DataWarning, stacklevel=3)

def check_dataset(root, workers: int | None = None, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                  image_size: int = WORKING_SIZE) -> dict:
    """Read every file of both splits at full size and collect problems instead of stopping.

    A folder with the training split and neither test folder is fine (a note says a validation
    split will be held out of it); a test split with one of its two folders missing is a problem.
    A file of more than ``max_pixels`` pixels is a problem; images much smaller than ``image_size``
    and masks with no lesion or no background are warnings (:func:`data_warnings`).

    Returns {"root", "splits": {split: {"count", "width", "height", "lesion_fraction"}},
    "problems": [...], "notes": [...], "warnings": [...]} with (min, max) width/height and
    (min, mean, max) lesion area fraction.
    """
    report = {"root": str(root), "splits": {}, "problems": [], "notes": [], "warnings": []}
    for split in SPLITS:
        if split == "test" and Path(root).is_dir() and not any((Path(root) / f).exists() for f in SPLITS["test"]):
            report["notes"].append("no test split: runs hold out a validation split of the training images "
                                   "(VAL_FRACTION, 0.2 by default)")
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DataWarning)
                samples = list_split(root, split)
            report["notes"] += [str(w.message) for w in caught]
        except DataError as exc:
            report["problems"].append(str(exc))
            continue

        def one(sample):
            try:
                return load_sample(sample, None, max_pixels)
            except DataError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            results = list(progress_bar(pool.map(one, samples), total=len(samples), desc=f"check {split}",
                                        unit="img", enabled=progress))
        good = [r for r in results if not isinstance(r, DataError)]
        report["problems"] += [str(r) for r in results if isinstance(r, DataError)]
        ids = [s.id for s, r in zip(samples, results) if not isinstance(r, DataError)]
        found = data_warnings(ids, [r["size"] for r in good], [r["lesion"] for r in good], image_size)
        report["warnings"] += warning_lines(split, found, image_size)
        report["notes"] += [n for r in good for n in r["notes"]]
        non_binary = sum(r["non_binary"] for r in good)
        if non_binary:
            report["notes"].append(f"{split}: {non_binary} masks not strictly 0/255 (binarised at > {MASK_THRESHOLD})")
        if good:
            fractions = np.array([r["mask"].mean() for r in good])
            report["splits"][split] = {
                "count": len(samples),
                "width": (min(r["size"][1] for r in good), max(r["size"][1] for r in good)),
                "height": (min(r["size"][0] for r in good), max(r["size"][0] for r in good)),
                "lesion_fraction": (float(fractions.min()), float(fractions.mean()), float(fractions.max())),
            }
    return report


def format_check(report: dict) -> str:
    """Human-readable summary of :func:`check_dataset`."""
    lines = [f"dataset: {report['root']}"]
    for split, s in report["splits"].items():
        f = s["lesion_fraction"]
        lines.append(f"  {split:5s} {s['count']:5d} images, width {s['width'][0]}-{s['width'][1]} px, "
                     f"height {s['height'][0]}-{s['height'][1]} px, lesion area {f[0]:.1%} min / "
                     f"{f[1]:.1%} mean / {f[2]:.1%} max")
    lines += [f"  note: {n}" for n in report["notes"][:20]]
    lines += [f"  warning: {w}" for w in report["warnings"]]
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        n = len(report["warnings"])
        lines.append("no problems found" + (f" ({n} warning(s) above: those images train, look at them)" if n else ""))
    return "\n".join(lines)
