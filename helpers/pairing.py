"""Images and masks in any two folders, paired by name: ``stem.ext`` with ``stem<suffix>.ext``.

    PH2:     IMD002.bmp  + IMD002_lesion.bmp      (suffix "_lesion")
    clinic:  name.jpg    + name_mask.png          (suffix "_mask")
    ISIC:    ISIC_0000000.jpg + ISIC_0000000_Segmentation.png   (suffix "_Segmentation", the default)

Any format PIL reads, by extension; other files (notes.txt, .DS_Store, Thumbs.db) and ISIC 2017's
superpixel maps (``<id>_superpixels.png``) are ignored with a warning. Stems, the suffix and extensions are compared case-insensitively; a sample's id is the
image's stem exactly as written. Images and masks may share one folder. Unpaired files and two
files of one stem are errors, never skipped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from .folders import DataWarning, Sample
from .errors import DataError

DEFAULT_MASK_SUFFIX = "_Segmentation"
SUPERPIXELS = "_superpixels"  # ISIC 2017 ships these maps beside its images


def image_extensions() -> set[str]:
    """Lower-case file extensions (".png", ".bmp", ...) that PIL can open."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _scan(folder: Path, kind: str) -> dict[str, Path]:
    """Files of ``folder`` that PIL reads, by case-folded stem; others are ignored with a warning."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {kind} folder not found")
    known, found, ignored, superpixels = image_extensions(), {}, [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in known:
            ignored.append(path.name)
            continue
        if path.stem.casefold().endswith(SUPERPIXELS):
            superpixels.append(path.name)
            continue
        key = path.stem.casefold()
        if key in found:
            raise DataError(f"{path}: duplicate stem {path.stem!r} (also {found[key].name}); keep one of the two")
        found[key] = path
    if ignored:
        warnings.warn(f"{folder}: ignored {len(ignored)} file(s) that are not images PIL reads: {_listed(ignored)}",
                      DataWarning, stacklevel=3)
    if superpixels:
        warnings.warn(f"{folder}: ignored {len(superpixels)} ISIC superpixel map(s) (<id>{SUPERPIXELS}.png, not "
                      f"dermoscopic images): {_listed(superpixels)}", DataWarning, stacklevel=3)
    return found


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def _suffix_hint(images: dict[str, Path], masks: list[Path], suffix: str) -> str:
    """' (did you mean --mask-suffix X?)' when every unpaired mask is an image's stem plus one suffix X."""
    found = set()
    for mask in masks:
        bases = [k for k in images if mask.stem.casefold().startswith(k) and len(mask.stem) > len(k)]
        if not bases:
            return ""
        found.add(mask.stem[len(max(bases, key=len)):])
    if len(found) != 1 or next(iter(found)).casefold() == suffix.casefold():
        return ""
    return f" (did you mean --mask-suffix {found.pop()}?)"


def pair_folders(images_dir: str | os.PathLike, masks_dir: str | os.PathLike | None = None,
                 mask_suffix: str = DEFAULT_MASK_SUFFIX) -> list[Sample]:
    """Samples sorted by id: each image of ``images_dir`` with its mask ``<stem><mask_suffix>.*`` in
    ``masks_dir`` (no masks when ``masks_dir`` is None). Raises DataError naming unpaired files."""
    images_dir, suffix = Path(images_dir), mask_suffix.casefold()
    same = masks_dir is not None and Path(masks_dir).resolve() == images_dir.resolve()
    if not mask_suffix and same:
        raise DataError("the mask suffix is empty: masks in the images' own folder are named <image stem><suffix>.<ext>, "
                        "e.g. _lesion (an empty suffix needs a separate masks folder)")
    files = _scan(images_dir, "images")
    images = {k: p for k, p in files.items() if not (same and k.endswith(suffix))}
    if not images:
        raise DataError(f"{images_dir}: no images in this folder (any format PIL reads: .jpg, .png, .bmp, .tif, ...)")
    if masks_dir is None:
        return sorted((Sample(p.stem, p, None) for p in images.values()), key=lambda s: s.id)
    masks_dir = Path(masks_dir)
    mask_files = files if same else _scan(masks_dir, "masks")
    masks = {k[:len(k) - len(suffix)]: p for k, p in mask_files.items() if k.endswith(suffix)}
    misnamed = [] if same else [p for k, p in mask_files.items() if not k.endswith(suffix)]
    lonely_images = [images[k].name for k in sorted(set(images) - set(masks))]
    lonely_masks = [masks[k] for k in sorted(set(masks) - set(images))] + misnamed
    problems = []
    if lonely_images:
        problems.append(f"{len(lonely_images)} image(s) without a mask <stem>{mask_suffix}.* in {masks_dir}: "
                        + _listed(lonely_images))
    if lonely_masks:
        problems.append(f"{len(lonely_masks)} mask(s) without an image in {images_dir}: "
                        + _listed([p.name for p in lonely_masks]))
    if problems:
        raise DataError("; ".join(problems) + _suffix_hint(images, lonely_masks, mask_suffix))
    return sorted((Sample(p.stem, p, masks[k]) for k, p in images.items()), key=lambda s: s.id)
