"""External test sets: image folders of another collection (another clinic's camera and population),
scored by every trained model at each image's original size, never trained or chosen on.

``EXTERNAL`` (notebooks), ``--external`` (``python -m helpers.tools.reproduce``) and ``make reproduce
EXTERNAL=...`` take ``DIR[,DIR...]``; each entry may be named, ``NAME=DIR`` (default name: the
folder's name). Each folder is read in the first of these layouts that it has:

- ``isic2016``: the ISIC 2016 Part 1 layout (:mod:`helpers.folders`): its test split when it has
  one, else its training split;
- ``ph2``: the PH2 archive's own tree, ``<id>/<id>_Dermoscopic_Image/<id>.bmp`` with
  ``<id>/<id>_lesion/<id>_lesion.bmp`` (directly in DIR or in its ``PH2 Dataset images/``);
- ``images+masks``: an ``images/`` and a ``masks/`` folder;
- ``two folders``: exactly two folders of images, one of them named for masks (its name holds
  "mask", "groundtruth", "ground_truth", "segmentation", "label" or "lesion"), as ISIC 2017 and 2018
  ship them (``ISIC2018_Task1-2_Test_Input/`` with ``ISIC2018_Task1_Test_GroundTruth/``);
- ``one folder``: images and masks side by side in DIR.

In the last three, an image ``stem.ext`` pairs with the mask ``<stem><suffix>.ext`` (any format PIL
reads, names compared case-insensitively, :mod:`helpers.pairing`). The suffix is read off the names:
the part every mask adds to its image's stem, e.g. ``_lesion`` (PH2) or ``_segmentation`` (ISIC),
or nothing at all when ``masks/`` repeats the image names. Masks that add different suffixes, an
image without a mask and a mask without an image are errors, never skipped.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import DataError
from .folders import SPLITS, Sample, check_mask_size, list_split, load_sample
from .images import DEFAULT_MAX_PIXELS, read_mask
from .pairing import _scan as scan_images, pair_folders

MASK_FOLDER = re.compile(r"mask|ground.?truth|segmentation|label|lesion", re.IGNORECASE)
PH2_SUBFOLDER = "PH2 Dataset images"


@dataclass(frozen=True)
class ExternalSet:
    """One external test set: its name (as tables and figures show it), the folder name its results
    go to, where it is, how it was read, and its image-mask pairs."""

    name: str
    slug: str
    root: Path
    layout: str
    detail: str          # e.g. "test split", "masks <stem>_lesion.*"
    samples: tuple[Sample, ...]

    def describe(self) -> str:
        return f"{self.name}: {len(self.samples)} images in {self.root} ({self.layout} layout, {self.detail})"

    def record(self) -> dict:
        return {"name": self.name, "slug": self.slug, "root": str(self.root), "layout": self.layout,
                "detail": self.detail, "n_images": len(self.samples)}


def parse_spec(spec: str | None) -> list[tuple[str | None, Path]]:
    """``"DIR,NAME=DIR"`` -> [(None, DIR), (NAME, DIR)]; None or "" -> []."""
    entries = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = None, item
        elif not name.strip() or not folder.strip():
            raise DataError(f"external test set {item!r}: write NAME=DIR or DIR (name or folder is empty)")
        entries.append((name.strip() if name else None, Path(folder.strip()).expanduser()))
    return entries


def slug_of(name: str) -> str:
    """A folder name for ``name``: letters, digits, '.', '-', '+' and '_' kept, the rest '_'."""
    return re.sub(r"[^\w.+-]+", "_", name).strip("._") or "external"


def infer_suffix(image_stems: list[str], mask_stems: list[str], where: Path) -> str:
    """The suffix that every mask stem adds to an image stem (case-folded), "" when the stems are
    the same; DataError naming the masks when there is no single one."""
    images = {s.casefold() for s in image_stems}
    found: dict[str, str] = {}
    for stem in mask_stems:
        key = stem.casefold()
        bases = [b for b in images if key.startswith(b)]
        if not bases:
            raise DataError(f"{where}: mask {stem!r} does not start with the name of any image, so it cannot be paired "
                            "(a mask is named <image stem><suffix>, e.g. IMD002_lesion for IMD002)")
        found.setdefault(key[len(max(bases, key=len)):], stem)
    if len(found) > 1:
        shown = ", ".join(f"{s or '(none)'} in {m}" for s, m in list(found.items())[:3])
        raise DataError(f"{where}: the masks are named with {len(found)} different suffixes ({shown}); rename them "
                        "to one, e.g. <stem>_lesion")
    if not found:
        raise DataError(f"{where}: no masks found")
    return next(iter(found))


def common_suffix(stems: list[str], where: Path) -> str:
    """For images and masks in one folder: what the most stems add to the longest other stem they start
    with (case-folded), e.g. "_lesion" for IMD002 and IMD002_lesion; DataError when no stem extends
    another (no masks) or when two suffixes are equally common."""
    from collections import Counter

    folded = sorted({s.casefold() for s in stems}, key=len)
    counts = Counter()
    for key in folded:
        bases = [b for b in folded if len(b) < len(key) and key.startswith(b)]
        if bases:
            counts[key[len(max(bases, key=len)):]] += 1
    if not counts:
        raise DataError(f"{where}: images but no masks (a mask is named <image stem><suffix>, e.g. IMD002_lesion.bmp "
                        "beside IMD002.bmp; or put them in images/ and masks/)")
    (best, n), *rest = counts.most_common(2)
    if rest and rest[0][1] == n:
        raise DataError(f"{where}: cannot tell the masks from the images: as many files end in {best!r} as in "
                        f"{rest[0][0]!r}; put them in images/ and masks/")
    return best


def _ph2_root(root: Path) -> Path | None:
    for base in (root, root / PH2_SUBFOLDER):
        if base.is_dir() and any(p.is_dir() and (p / f"{p.name}_Dermoscopic_Image").is_dir() for p in base.iterdir()):
            return base
    return None


def _ph2_samples(base: Path) -> list[Sample]:
    samples = []
    for case in sorted(p for p in base.iterdir() if p.is_dir()):
        images = sorted((case / f"{case.name}_Dermoscopic_Image").glob(f"{case.name}.*"))
        masks = sorted((case / f"{case.name}_lesion").glob(f"{case.name}_lesion.*"))
        if len(images) != 1 or len(masks) != 1:
            what = "image" if len(images) != 1 else "lesion mask"
            raise DataError(f"{case}: a PH2 case needs one {what} ({case.name}_Dermoscopic_Image/{case.name}.bmp and "
                            f"{case.name}_lesion/{case.name}_lesion.bmp), found {len(images if what == 'image' else masks)}")
        samples.append(Sample(case.name, images[0], masks[0]))
    return samples


def _subfolder(root: Path, name: str) -> Path | None:
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and p.name.casefold() == name), None)


def _two_folders(root: Path) -> tuple[Path, Path] | None:
    """(images, masks) when ``root`` holds exactly two folders of image files and one is named for masks."""
    from .pairing import image_extensions

    known = image_extensions()
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
               and any(f.suffix.lower() in known for f in p.iterdir() if f.is_file())]
    masks = [p for p in folders if MASK_FOLDER.search(p.name)]
    if len(folders) != 2 or len(masks) != 1:
        return None
    return next(p for p in folders if p != masks[0]), masks[0]


def _paired(images_dir: Path, masks_dir: Path) -> tuple[list[Sample], str]:
    """Pairs of two folders (or of one, when they are the same), the suffix read off the names."""
    import warnings

    from .folders import DataWarning

    with warnings.catch_warnings():  # notes.txt and the like are ignored here; pair_folders says so once
        warnings.simplefilter("ignore", DataWarning)
        files = scan_images(images_dir, "images")
        masks = files if masks_dir == images_dir else scan_images(masks_dir, "masks")
    stems = [p.stem for p in files.values()]
    if masks_dir == images_dir:  # masks are the files whose stem is another file's plus the commonest suffix
        suffix = common_suffix(stems, images_dir)
    else:
        suffix = infer_suffix(stems, [p.stem for p in masks.values()], masks_dir)
    samples = pair_folders(images_dir, masks_dir, suffix)
    return samples, f"masks <stem>{suffix}.*" if suffix else "masks named as their images"


def find_set(folder: Path, name: str | None = None) -> ExternalSet:
    """Read one external folder (see the module docstring); DataError naming it when it cannot be paired."""
    root = Path(folder).expanduser().resolve()
    name = name or root.name
    if not root.is_dir():
        raise DataError(f"{root}: external test set {name!r}: folder not found")
    if all((root / f).is_dir() for f in SPLITS["test"]) or all((root / f).is_dir() for f in SPLITS["train"]):
        split = "test" if all((root / f).is_dir() for f in SPLITS["test"]) else "train"
        layout, detail, samples = "isic2016", f"{split} split", list_split(root, split)
    elif (base := _ph2_root(root)) is not None:
        layout, detail, samples = "ph2", "masks <id>_lesion/<id>_lesion.*", _ph2_samples(base)
    elif (images := _subfolder(root, "images")) is not None:
        masks = _subfolder(root, "masks")
        if masks is None:
            raise DataError(f"{root}: external test set {name!r} has images/ but no masks/ folder beside it")
        layout, (samples, detail) = "images+masks", _paired(images, masks)
    elif (pair := _two_folders(root)) is not None:
        layout, (samples, detail) = "two folders", _paired(*pair)
    else:
        layout, (samples, detail) = "one folder", _paired(root, root)
    if not samples:
        raise DataError(f"{root}: external test set {name!r} holds no images")
    return ExternalSet(name, slug_of(name), root, layout, detail, tuple(samples))


def external_sets(spec: str | None) -> list[ExternalSet]:
    """Every set of ``spec`` (see :func:`parse_spec`), paired; two sets of one name are an error."""
    sets = [find_set(folder, name) for name, folder in parse_spec(spec)]
    seen: dict[str, ExternalSet] = {}
    for s in sets:
        if s.slug in seen:
            raise DataError(f"two external test sets are named {s.name!r} ({seen[s.slug].root} and {s.root}); name "
                            "them: EXTERNAL=NAME=DIR,OTHER=DIR")
        seen[s.slug] = s
    return sets


def _check_sample(sample: Sample, max_pixels: int) -> None:
    r = load_sample(replace(sample, mask=None), None, max_pixels)
    truth = read_mask(sample.mask, max_pixels)[0]
    check_mask_size(sample, truth.shape, r["size"], r["notes"])


def check_readable(sets: list[ExternalSet], max_pixels: int = DEFAULT_MAX_PIXELS, log=print) -> None:
    """Decode every image and mask of every set (a bad file fails here, named, before any training)."""
    for s in sets:
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda sample: _check_sample(sample, max_pixels), s.samples))
        log(f"external test set {s.describe()}")
