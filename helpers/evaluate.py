"""Evaluate a checkpoint exactly as the ISIC 2016 challenge scores it: at each image's original size.

    python -m helpers.evaluate --checkpoint CKPT --data-dir ROOT [--split test] --out DIR [options]
    python -m helpers.evaluate --checkpoint CKPT --images DIR [--masks DIR [--mask-suffix _Segmentation]]
                               --out DIR [options]
    options: [--batch-size 16] [--device auto] [--tta [flips|dihedral]] [--image-size N] [--max-pixels N] [--overlays [--worst 12]]
             [--validation-of SPLIT_JSON] [--quiet]

``--data-dir`` reads the ISIC 2016 Part 1 layout; ``--images``/``--masks`` read any two folders
(or one), pairing ``stem.ext`` with ``<stem><suffix>.ext`` (:mod:`helpers.pairing`), e.g. PH2's
``IMD002.bmp`` with ``IMD002_lesion.bmp`` (``--mask-suffix _lesion``). With ``--data-dir``,
``--validation-of RUN/split.json`` scores only the validation images that a training or the ablation
held out (the split file it wrote), e.g. to score checkpoints of several runs as one ensemble on them. Masks may be 0/255, 0/1 or
palette images (:func:`helpers.images.read_mask`); a file of more than ``--max-pixels`` pixels
(100 million by default) is refused by name before it is decoded.

Each image is resized as in training (:func:`helpers.folders.load_sample`), the model runs at
image_size x image_size, its logits are upsampled bilinearly (align_corners=False) to the original
height x width and binarised at probability 0.5 (logit >= 0). Written under DIR:

- ``masks/<id>_segmentation.png`` (id: ISIC_XXXXXXX, or the image's stem): 8-bit grayscale, 0/255,
  original size (submission format);
- with ground truth: ``per_image.csv`` (id, height, width and the six ISIC metrics) and
  ``summary.json`` ("macro": the challenge numbers, "micro": pooled Jaccard and Dice, settings);
- without a ground-truth folder: the masks and a ``summary.json`` whose "macro"/"micro" are null;
- with ``--overlays``: ``overlays/<id>_overlay.jpg``, each image at its original size with the
  predicted outline (magenta) and, with ground truth, the true one (green) (:mod:`helpers.overlays`);
  with ground truth also ``worst.jpg``, a contact sheet of the ``--worst`` (12) lowest-Jaccard images.

The image size comes from ``--image-size``, else ``ckpt["settings"]["image_size"]``, else 128 (the
report's size); summary.json records which ("image_size_source"). ``--tta`` averages the logits of
the image and of its horizontal and vertical flips (flipped back); ``--tta dihedral`` averages those
of its 8 rotations and flips (the symmetries of the square, each undone); it is off by default. Several
checkpoints (``--checkpoint A B ...``) are scored as one ensemble: the mean of their probabilities
at the original size, binarised at 0.5.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import metrics
from .folders import SOURCE_LABELS, check_mask_size, list_split, load_sample, source_of
from .errors import DataError, ProjectError
from .images import DEFAULT_MAX_PIXELS, read_image, read_mask
from .io import atomic_path, write_csv, write_json
from .overlays import OVERLAY_SUFFIX, SHEET_NAME, contact_sheet, write_overlay
from .pairing import DEFAULT_MASK_SUFFIX, pair_folders
from .progress import progress_bar
from .splits import read_split
from .train import load_checkpoint, resolve_device

DEFAULT_IMAGE_SIZE = 128  # the report's size, used when neither the caller nor the checkpoint gives one
MASK_SUFFIX = "_segmentation.png"


# Test-time augmentation: each mode's views as (quarter turns, horizontal flip, vertical flip) applied in
# that order after the flips, and how it is named and described in tables and printed lines.
TTA_VIEWS = {"flips": ((0, False, False), (0, True, False), (0, False, True)),
             "dihedral": tuple((k, flip, False) for k in range(4) for flip in (False, True))}
TTA_NAMES = {"flips": ("flip TTA", "the image and its two flips"),
             "dihedral": ("dihedral TTA", "the image in its 8 rotations and flips")}
TTA_MODES = tuple(TTA_VIEWS)


def tta_mode(tta) -> str | None:
    """None for no TTA (None, False, "off"); "flips" for True or "flips"; "dihedral" for "dihedral"."""
    if tta is None or tta is False or tta == "off":
        return None
    if tta is True:
        return "flips"
    if tta in TTA_MODES:
        return tta
    raise ProjectError(f"tta must be off, on (flips) or one of {', '.join(TTA_MODES)}, got {tta!r}")


def tta_label(tta) -> str:
    """How a TTA mode is named in tables and lines: "flip TTA" or "dihedral TTA"."""
    mode = tta_mode(tta)
    return TTA_NAMES[mode][0] if mode else "no TTA"


def _view(x: torch.Tensor, k: int, hflip: bool, vflip: bool) -> torch.Tensor:
    x = x.flip(-1) if hflip else x
    x = x.flip(-2) if vflip else x
    return torch.rot90(x, k, (-2, -1)) if k else x


def _unview(y: torch.Tensor, k: int, hflip: bool, vflip: bool) -> torch.Tensor:
    y = torch.rot90(y, -k, (-2, -1)) if k else y
    y = y.flip(-2) if vflip else y
    return y.flip(-1) if hflip else y


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, tta=False) -> torch.Tensor:
    """uint8 B x 3 x S x S -> logits float32 B x 1 x S x S (model's device).

    ``tta`` (see :func:`tta_mode`): "flips" (or True) is the mean of the logits of the images, their
    horizontal flips and their vertical flips, each flipped back (one forward pass over 3B images);
    "dihedral" is the mean over the 8 symmetries of the square: rotations by 0, 90, 180 and 270
    degrees, each with and without a horizontal flip, each undone on the logits (8B images).
    """
    device = next(model.parameters()).device
    x = images.to(device).float().div_(255)
    mode = tta_mode(tta)
    if mode is None:
        return model(x)
    views = TTA_VIEWS[mode]
    outs = model(torch.cat([_view(x, *v) for v in views])).chunk(len(views))
    return sum(_unview(o, *v) for o, v in zip(outs, views)) / len(views)


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits 1 x S x S -> 1 x H x W, bilinear, align_corners=False (size = (H, W))."""
    return F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]


def predict_original_size(model: torch.nn.Module, image_uint8_chw_resized: torch.Tensor,
                          orig_size: tuple[int, int], tta: bool = False) -> torch.Tensor:
    """One resized uint8 image 3 x S x S -> logits 1 x H x W at its original size (H, W)."""
    return upsample(predict_logits(model, image_uint8_chw_resized[None], tta)[0], orig_size)


def _load(sample, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, original: bool = False) -> dict:
    """Resized image (uint8 3 x S x S via load_sample), original size (H, W), truth (bool H x W or None)
    and, with ``original``, the image itself at its original size (for an overlay)."""
    r = load_sample(replace(sample, mask=None), image_size, max_pixels)
    truth = None
    if sample.mask is not None:
        truth = read_mask(sample.mask, max_pixels)[0]
        check_mask_size(sample, truth.shape, r["size"], r["notes"])
    return {"image": torch.from_numpy(r["image"]).permute(2, 0, 1), "size": r["size"], "truth": truth,
            "original": read_image(sample.image, max_pixels)[0] if original else None}


def _write_png(path: Path, mask: np.ndarray) -> None:
    """bool H x W -> 8-bit grayscale 0/255 PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")


def ensemble_masks(models: list, images: torch.Tensor, sizes: list, tta: bool = False) -> list[torch.Tensor]:
    """uint8 B x 3 x S x S -> one bool H x W mask per image at its original size (H, W) (CPU).

    One model: its logits upsampled and binarised at 0 (probability 0.5). Several: the mean of their
    probabilities (sigmoid of each model's upsampled logits), binarised at 0.5.
    """
    logits = [predict_logits(m, images, tta) for m in models]
    if len(models) == 1:
        return [metrics.binarize_logits(upsample(lg, size)[0]).cpu() for lg, size in zip(logits[0], sizes)]
    return [(torch.stack([torch.sigmoid(upsample(lg[i], size)[0]) for lg in logits]).mean(0) >= 0.5).cpu()
            for i, size in enumerate(sizes)]


def _open_model(checkpoint: Path, device: torch.device):
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint file not found")
    try:
        return load_checkpoint(checkpoint, device=str(device))
    except Exception as exc:  # torch.load / load_state_dict raise many types for a bad file
        first = next((line for line in str(exc).splitlines() if line.strip()), "")  # torch's are long
        raise DataError(f"{checkpoint}: cannot load checkpoint ({type(exc).__name__}: {first.strip()})") from exc


def evaluate_checkpoint(checkpoint, data_dir, split: str = "test", out_dir=None, *, batch_size: int = 16,
                        device: str = "auto", tta: bool = False, progress: bool = True,
                        image_size: int | None = None, ids: list[str] | None = None,
                        max_pixels: int = DEFAULT_MAX_PIXELS, overlays: bool = False, worst: int = 12) -> dict:
    """Predict every image of ``split`` at its original size; score it when ground truth exists.

    checkpoint: one path, or a list of paths scored as one ensemble (:func:`ensemble_masks`).
    ids: only these images of the split (e.g. a validation split held out of the training split);
    an id the split does not hold is an error.

    Writes masks/, per_image.csv and summary.json under ``out_dir`` (nothing when it is None) and
    returns the summary dict written to summary.json.
    """
    data_dir = Path(data_dir)
    samples = list_split(data_dir, split, require_masks=False)
    if ids is not None:
        by_id = {s.id: s for s in samples}
        absent = [i for i in ids if i not in by_id]
        if absent:
            raise DataError(f"{data_dir}: the {split} split holds no image {absent[0]} ({len(absent)} id(s) absent)")
        samples = [by_id[i] for i in ids]
    source = {"data_dir": str(data_dir), "split": split, "data_source": SOURCE_LABELS[source_of(data_dir)],
              "ids": "all" if ids is None else f"{len(samples)} chosen ids"}
    return evaluate_samples(checkpoint, samples, source, out_dir, batch_size=batch_size, device=device, tta=tta,
                            progress=progress, image_size=image_size, max_pixels=max_pixels, overlays=overlays,
                            worst=worst)


def evaluate_folders(checkpoint, images_dir, masks_dir=None, out_dir=None, *,
                     mask_suffix: str = DEFAULT_MASK_SUFFIX, batch_size: int = 16, device: str = "auto",
                     tta: bool = False, progress: bool = True, image_size: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, overlays: bool = False, worst: int = 12) -> dict:
    """:func:`evaluate_checkpoint` for any two folders: each image ``stem.ext`` of ``images_dir``
    with the mask ``<stem><mask_suffix>.*`` of ``masks_dir`` (see :mod:`helpers.pairing`); masks
    only, unscored, when ``masks_dir`` is None. Same outputs; submission masks are
    ``<stem>_segmentation.png``."""
    samples = pair_folders(images_dir, masks_dir, mask_suffix)
    source = {"data_dir": None, "split": None, "data_source": "image folders",
              "images_dir": str(images_dir), "masks_dir": None if masks_dir is None else str(masks_dir),
              "mask_suffix": None if masks_dir is None else mask_suffix}
    return evaluate_samples(checkpoint, samples, source, out_dir, batch_size=batch_size, device=device, tta=tta,
                            progress=progress, image_size=image_size, max_pixels=max_pixels, overlays=overlays,
                            worst=worst)


def _refuse_stale(folder: Path | None, names: set[str]) -> None:
    """Files of this run replace their namesakes; any other file would mix two runs' outputs."""
    if folder is not None and folder.is_dir():
        stale = sorted(set(p.name for p in folder.iterdir()) - names)
        if stale:
            raise DataError(f"{folder}: holds {len(stale)} file(s) not of these images ({', '.join(stale[:3])}); "
                            "choose an empty --out folder")


def evaluate_samples(checkpoint, samples: list, source: dict, out_dir, *, batch_size: int = 16, device: str = "auto",
                     tta: bool = False, progress: bool = True, image_size: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, overlays: bool = False, worst: int = 12) -> dict:
    """Predict and score ``samples`` (helpers.folders.Sample, all with masks or none); ``source``
    (where they come from) goes into the summary. ``overlays`` (needs ``out_dir``) writes the
    outline pictures and, with masks, the contact sheet of the ``worst`` lowest-Jaccard images."""
    start = time.perf_counter()
    checkpoints = [Path(c) for c in checkpoint] if isinstance(checkpoint, (list, tuple)) else [Path(checkpoint)]
    if batch_size < 1:
        raise ProjectError(f"batch_size must be at least 1, got {batch_size}")
    tta = tta_mode(tta)  # a bad mode fails before any model is loaded
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:
        raise ProjectError(str(exc)) from exc
    opened = [_open_model(c, dev) for c in checkpoints]
    models, ckpt = [m for m, _ in opened], opened[0][1]
    settings = ckpt.get("settings", {})
    sizes = {c.get("settings", {}).get("image_size") for _, c in opened}
    if len(sizes) > 1 and not image_size:
        raise ProjectError(f"the ensemble's checkpoints were trained at different sizes ({sorted(map(str, sizes))}): "
                           "give the input size (--image-size)")
    size_source = "argument" if image_size else "checkpoint" if settings.get("image_size") else "default"
    image_size = int(image_size or settings.get("image_size") or DEFAULT_IMAGE_SIZE)
    has_truth = samples[0].mask is not None
    if overlays and out_dir is None:
        raise ProjectError("overlays need an output folder")
    mask_dir = None if out_dir is None else Path(out_dir) / "masks"
    overlay_dir = Path(out_dir) / "overlays" if overlays else None
    _refuse_stale(mask_dir, {s.id + MASK_SUFFIX for s in samples})
    _refuse_stale(overlay_dir, {s.id + OVERLAY_SUFFIX for s in samples})
    counts, rows = [], []
    with ThreadPoolExecutor() as pool, progress_bar(total=len(samples), desc=f"evaluate {source['split'] or 'images'}",
                                                    unit="img", enabled=progress) as bar:
        for i in range(0, len(samples), batch_size):
            batch = samples[i:i + batch_size]
            loaded = list(pool.map(partial(_load, image_size=image_size, max_pixels=max_pixels, original=overlays),
                                   batch))
            preds = ensemble_masks(models, torch.stack([d["image"] for d in loaded]), [d["size"] for d in loaded], tta)
            if mask_dir is not None:  # bool H x W each, encoded in parallel
                list(pool.map(_write_png, [mask_dir / f"{s.id}{MASK_SUFFIX}" for s in batch],
                              [p.numpy() for p in preds]))
            if overlay_dir is not None:
                list(pool.map(write_overlay, [overlay_dir / f"{s.id}{OVERLAY_SUFFIX}" for s in batch],
                              [d["original"] for d in loaded], [p.numpy() for p in preds], [d["truth"] for d in loaded]))
            if has_truth:
                counts += [metrics.confusion(p[None], torch.from_numpy(d["truth"])[None]) for p, d in zip(preds, loaded)]
                rows += [(s.id, *d["size"]) for s, d in zip(batch, loaded)]
            bar.update(len(batch))
    summary = {"n_images": len(samples), "ground_truth": has_truth, "macro": None, "micro": None,
               "checkpoint": str(checkpoints[0]) if len(checkpoints) == 1 else [str(c) for c in checkpoints],
               "ensemble": len(checkpoints), **source,
               "image_size": image_size, "image_size_source": size_source, "tta": tta is not None,
               "tta_mode": tta,
               "resolution": "original", "model": ckpt.get("config"), "settings": settings}
    if has_truth:
        counts = torch.cat(counts)
        summary["macro"] = metrics.all_metrics(counts, "macro")
        summary["micro"] = {"jaccard": float(metrics.jaccard(counts, "micro")),
                            "dice": float(metrics.dice(counts, "micro"))}
        if out_dir is not None:
            per_image = metrics.per_image_rows([r[0] for r in rows], [r[1:] for r in rows], counts)
            write_csv(Path(out_dir) / "per_image.csv", per_image)
            if overlay_dir is not None:
                summary["contact_sheet"] = str(worst_sheet(Path(out_dir), per_image, overlay_dir, worst))
    elif out_dir is not None:  # never leave an earlier run's scores beside masks-only output
        (Path(out_dir) / "per_image.csv").unlink(missing_ok=True)
    if overlay_dir is not None:
        summary["overlays"] = str(overlay_dir)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if out_dir is not None:
        write_json(Path(out_dir) / "summary.json", summary)
    return summary


def worst_sheet(out_dir: Path, per_image: list[dict], overlay_dir: Path, n: int) -> Path:
    """OUT/worst.jpg: the overlays of the n lowest-Jaccard images (ties by id), worst first."""
    order = sorted(per_image, key=lambda r: (r["jaccard"], r["id"]))[:max(1, n)]
    tiles = [(overlay_dir / f"{r['id']}{OVERLAY_SUFFIX}", f"{r['id']}  Jaccard {r['jaccard']:.3f}") for r in order]
    title = (f"The {len(tiles)} lowest-Jaccard of {len(per_image)} images - green: truth, magenta: prediction")
    return contact_sheet(out_dir / SHEET_NAME, tiles, title=title)


def summary_line(summary: dict, out_dir) -> str:
    """The one-line report printed by the CLI."""
    which = f"{summary['split']} images" if summary["split"] else f"images of {summary['images_dir']}"
    if summary.get("ids", "all") != "all":
        which = f"chosen {which}"
    tta = f" ({tta_label(summary['tta_mode'])})" if summary["tta"] else ""
    head = f"evaluate: {summary['n_images']} {which}{tta}"
    scores = (f"Jaccard {summary['macro']['jaccard']:.3f} (macro), Dice {summary['macro']['dice']:.3f}"
              if summary["macro"] else "no ground truth, masks only")
    extra = ""
    if summary.get("overlays"):
        extra = " with overlays" + (f" and the contact sheet {summary['contact_sheet']}" if summary.get("contact_sheet") else "")
    return f"{head}, {scores}, written to {out_dir}{extra} in {summary['seconds']:.0f} s"


def _check_inputs(args: argparse.Namespace) -> None:
    """Exactly one way to name the data: --data-dir [--split], or --images [--masks] [--mask-suffix]."""
    if args.data_dir is not None and args.images is not None:
        raise ProjectError("give either --data-dir (the ISIC 2016 layout) or --images [--masks] (any two folders), "
                           "not both")
    if args.data_dir is None and args.images is None:
        raise ProjectError("no data: give --data-dir ROOT (the ISIC 2016 layout) or --images DIR [--masks DIR]")
    if args.data_dir is not None and (args.masks is not None or args.mask_suffix is not None):
        raise ProjectError("--masks and --mask-suffix go with --images, not with --data-dir")
    if args.images is not None and args.split is not None:
        raise ProjectError("--split goes with --data-dir, not with --images")
    if args.masks is None and args.mask_suffix is not None:
        raise ProjectError("--mask-suffix needs --masks DIR")
    if args.validation_of is not None and args.data_dir is None:
        raise ProjectError("--validation-of goes with --data-dir (the folder the split was made from)")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 with one 'error:' line on a ProjectError)."""
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, nargs="+",
                        help="checkpoint.pt written by training; several: scored as one ensemble (mean probability)")
    parser.add_argument("--data-dir", type=Path, help="a folder in the ISIC 2016 Part 1 layout")
    parser.add_argument("--split", choices=("train", "test"), help="with --data-dir (default: test)")
    parser.add_argument("--images", type=Path, help="instead of --data-dir: a folder of images (any format PIL reads)")
    parser.add_argument("--masks", type=Path, help="with --images: the folder of their ground-truth masks")
    parser.add_argument("--mask-suffix", help=f"with --masks: image stem.ext pairs with mask <stem><suffix>.ext "
                                              f"(default: {DEFAULT_MASK_SUFFIX})")
    parser.add_argument("--out", required=True, type=Path, help="output folder (masks/, per_image.csv, summary.json)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--tta", nargs="?", const="flips", default=None, choices=TTA_MODES,
                        help="average the logits over the image, its h-flip and v-flip (--tta, or --tta flips) or "
                             "over its 8 rotations and flips (--tta dihedral); off by default")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"model input size (default: the checkpoint's, else {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse image and mask files of more pixels than this, before decoding them "
                             f"(default {DEFAULT_MAX_PIXELS:,}: a guard against decompression bombs)")
    parser.add_argument("--overlays", action="store_true",
                        help="also write overlays/<id>_overlay.jpg (the image with the predicted outline, and the true "
                             "one when masks are given) and, with masks, worst.jpg: a contact sheet of the worst images")
    parser.add_argument("--worst", type=int, default=12, help="with --overlays and masks: images on the contact sheet")
    parser.add_argument("--validation-of", type=Path, metavar="SPLIT_JSON",
                        help="with --data-dir: score only the validation ids of this split.json (written by a "
                             "training or the ablation into its run folder), from the split it was held out of")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    options = dict(batch_size=args.batch_size, device=args.device, tta=args.tta, progress=not args.quiet,
                   image_size=args.image_size, max_pixels=args.max_pixels, overlays=args.overlays, worst=args.worst)
    try:
        if args.worst < 1:
            raise ProjectError(f"--worst must be at least 1, got {args.worst}")
        _check_inputs(args)
        if args.tta:
            print(f"evaluate: test-time augmentation is ON (mean logits of {TTA_NAMES[args.tta][1]})")
        if args.images is not None:
            summary = evaluate_folders(args.checkpoint, args.images, args.masks, args.out,
                                       mask_suffix=args.mask_suffix or DEFAULT_MASK_SUFFIX, **options)
        elif args.validation_of is not None:
            record = read_split(args.validation_of)
            if args.split not in (None, record["source_split"]):
                raise ProjectError(f"{args.validation_of}: its validation ids come from the {record['source_split']} "
                                   f"split, not --split {args.split}")
            summary = evaluate_checkpoint(args.checkpoint, args.data_dir, record["source_split"], args.out,
                                          ids=record["validation_ids"], **options)
        else:
            summary = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split or "test", args.out, **options)
    except ProjectError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 1
    print(summary_line(summary, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
