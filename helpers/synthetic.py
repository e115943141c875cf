"""A synthetic dermoscopy data set laid out exactly like ISIC 2016 Part 1.

Each case is a skin-toned image with uneven lighting, skin texture, an optional dark
circular vignette, an irregular multi-coloured lesion and optional hairs; the mask is
the lesion region (0/255), hairs and vignette are never part of it.  Every case is
drawn from its own generator seeded with ``(seed, split, index)``, so the files are
byte-identical for a seed whatever the order of generation.  Case ``index`` is named
``ISIC_<9000000 + index>`` (training cases first, then test cases): valid ISIC names that
no real ISIC image has.

    python -m helpers.synthetic ROOT [--n-train 240] [--n-test 100] [--seed 0]
                                     [--source-size WxH] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from helpers.folders import SPLITS, SYNTHETIC_MARKER
from helpers.errors import DataError, ProjectError
from helpers.io import write_json
from helpers.progress import progress_bar

MARKER = SYNTHETIC_MARKER  # written last: marks a complete set
FORMAT_VERSION = 3  # 2: per-pixel grain on sources larger than MAX_WORK_SIDE; 3: ids from FIRST_ID
FIRST_ID = 9_000_000  # case i is ISIC_<FIRST_ID + i>: far above every real ISIC id, still 7 digits
MAX_CASES = 10_000_000 - FIRST_ID  # ids stop at ISIC_9999999
JPEG_QUALITY = 90
MAX_WORK_SIDE = 1024  # textures are rendered at most this large, then upsampled
PIXEL_GRAIN = 0.04  # relative amplitude of the per-pixel skin texture (uniform, centred)
SKIN_TONES = np.array([[0.94, 0.78, 0.75], [0.91, 0.76, 0.64], [0.80, 0.60, 0.46]])
LESION_COLOURS = np.float32([  # light brown, brown, dark brown, near black, blue-grey
    [0.62, 0.42, 0.31], [0.45, 0.28, 0.19], [0.27, 0.16, 0.12], [0.13, 0.09, 0.09], [0.37, 0.40, 0.47]])
LESION_WEIGHTS = np.float32([1.0, 1.0, 0.8, 0.5, 0.45])  # blue-grey and black stay minority colours


def _noise(rng, shape, cell):
    """Smooth noise of unit spread on ``shape`` (h, w): a coarse grid upsampled bicubically."""
    h, w = shape
    grid = rng.standard_normal((max(2, round(h / cell)) + 1, max(2, round(w / cell)) + 1), dtype=np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return field / (field.std() + 1e-6)


def _random_size(rng):
    """A (width, height): long side 320..768, aspect 1.0..1.5, one in five portrait."""
    long_side = int(rng.integers(320, 769))
    short_side = int(round(long_side / rng.uniform(1.0, 1.5)))
    return (short_side, long_side) if rng.random() < 0.2 else (long_side, short_side)


def _lesion_field(rng, shape):
    """Signed distance-like field (pixels, > 0 inside) of an irregular lesion, 0..1 depth, base radius."""
    h, w = shape
    frac = 0.03 + 0.72 * rng.random() ** 1.6  # wanted area as a fraction of the frame
    base = np.sqrt(frac * h * w / np.pi)
    spread = 0.8 if rng.random() < 0.2 else 0.15  # one in five lies well off centre
    cx, cy = (0.5 + 0.5 * np.clip(rng.normal(0, spread, 2), -0.8, 0.8)) * (w, h)
    dx = np.arange(w, dtype=np.float32)[None, :] - np.float32(cx)
    dy = np.arange(h, dtype=np.float32)[:, None] - np.float32(cy)
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(rho)
    for k in range(2, 8):  # r(theta) = base * (1 + sum of random Fourier harmonics)
        amplitude, phase = np.float32(rng.uniform(0, 0.22 / k ** 0.7)), np.float32(rng.uniform(0, 6.3))
        radius += amplitude * np.cos(k * theta + phase)
    radius *= np.float32(base)
    field = (radius - rho + np.float32(0.06 * base) * _noise(rng, shape, max(4.0, base / 3))
             + np.float32(0.018 * base) * _noise(rng, shape, max(3.0, base / 12)))
    depth = np.clip(1 - rho / np.maximum(radius, 1), 0, 1)
    return field, depth, base


def _lesion_colour(rng, shape, depth, base, texture):
    """Lesion colour (3, h, w) on ``shape``: blotchy brown/black/blue-grey mix with optional structures."""
    use = rng.random(5) < [0.6, 1.0, 0.7, 0.3, 0.35]  # brown always, the others on some
    weights = [np.exp(2.0 * _noise(rng, shape, max(4.0, base / rng.uniform(2, 5)))) * lw
               for u, lw in zip(use, LESION_WEIGHTS) if u]
    total = sum(weights)
    mix = sum(c[:, None, None] * (wt / total) for c, wt in zip(LESION_COLOURS[use], weights))
    shade = np.float32(np.exp(rng.normal(0, 0.15))) * (1 + 0.6 * texture)  # overall tint, skin texture
    if rng.random() < 0.5:  # darker towards the centre
        shade *= 1 - np.float32(rng.uniform(0, 0.5)) * depth ** 0.7
    if rng.random() < 0.5:  # pigment network: a fine mesh along the zero lines of a noise, in patches
        network = np.exp(-(_noise(rng, shape, rng.uniform(3, 3 + base / 25)) / 0.35) ** 2)
        patches = np.clip(0.6 + 0.6 * _noise(rng, shape, max(4.0, base / 3)), 0, 1)
        shade *= 1 - np.float32(rng.uniform(0.15, 0.35)) * network * patches
    if rng.random() < 0.4:  # dots and globules: the peaks of a fine noise
        shade *= 1 - 0.6 * np.clip((_noise(rng, shape, rng.uniform(3, 3 + base / 30)) - 2.0) * 2, 0, 1)
    return np.clip(mix, 0, 1) * shade


def _hairs(rng, image, scale):
    """Draw 1..14 thin dark curved hairs (quadratic Bezier curves) onto ``image`` in place."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    t = np.linspace(0, 1, 40)[:, None]
    for _ in range(int(rng.integers(1, 15))):
        p0, p1, p2 = rng.uniform([-0.2 * w, -0.2 * h], [1.2 * w, 1.2 * h], (3, 2))
        if rng.random() < 0.6:  # most hairs cross the frame: stretch the end points apart
            p2 = p0 + (p2 - p0) * max(1.0, 0.8 * max(w, h) / (np.linalg.norm(p2 - p0) + 1))
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        shade = int(rng.integers(15, 70))
        colour = (shade + 10, shade + 4, shade)
        width = max(1, round(int(rng.integers(1, 4)) * scale))
        draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=width, joint="curve")


def render_case(rng: np.random.Generator, size: tuple[int, int] | None = None):
    """One synthetic dermoscopy image (RGB) and its mask (mode 'L', values 0/255).

    ``size`` is (width, height); None draws a random size.  Large sizes are rendered at
    most MAX_WORK_SIDE on the long side and upsampled; the mask is thresholded after
    upsampling, so it stays exactly 0/255 and matches the drawn lesion.
    """
    width, height = _random_size(rng) if size is None else (int(size[0]), int(size[1]))
    scale = max(1.0, max(width, height) / MAX_WORK_SIDE)
    w, h = max(8, round(width / scale)), max(8, round(height / scale))
    shape, long_side = (h, w), max(h, w)

    # Skin: tone between pale pink, beige and tan; texture; redness.
    t = rng.uniform(0, 2)
    i = min(int(t), 1)
    skin = SKIN_TONES[i] + (t - i) * (SKIN_TONES[i + 1] - SKIN_TONES[i]) + rng.normal(0, 0.02, 3)
    texture = (0.018 * _noise(rng, shape, 3.0) + PIXEL_GRAIN * (rng.random(shape, dtype=np.float32) - 0.5)
               + 0.03 * _noise(rng, shape, long_side / 12))
    img = skin.astype(np.float32)[:, None, None] * (1 + texture)  # channels first: (3, h, w)
    img[1:] -= np.float32(rng.uniform(0, 0.035)) * np.clip(_noise(rng, shape, long_side / 5), 0, None)

    # Lesion, drawn only inside its bounding box; faint (low contrast) on about one in eight.
    field, depth, base = _lesion_field(rng, shape)
    faint = rng.random() < 0.12
    opacity = rng.uniform(0.4, 0.6) if faint else rng.uniform(0.8, 1.0)
    edge = rng.uniform(1.0, 2.0 + 0.03 * base) * (2 if faint else 1)
    fade = 1 - np.float32(rng.uniform(0, 0.3)) * np.clip(1 - depth / 0.25, 0, 1)  # paler rim on some
    alpha = np.clip(field / np.float32(edge) + 0.5, 0, 1) * np.float32(opacity) * fade
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size:
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        lesion = _lesion_colour(rng, alpha[box].shape, depth[box], base, texture[box])
        img[(slice(None), *box)] += (lesion - img[(slice(None), *box)]) * alpha[box]

    # Light: a smooth gradient and blobs, times the dark circular vignette (none on about a third).
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    gx, gy = rng.normal(0, 0.05, 2)  # direction and strength of the light gradient
    light = 1 + np.float32(gx) * xx + np.float32(gy) * yy + 0.05 * _noise(rng, shape, long_side / 3)
    if rng.random() > 0.35:
        ox, oy = np.float32(rng.normal(0, 0.04, 2))  # centre of the field of view
        r = np.hypot(xx - ox, (yy - oy) * np.float32(h / w)) / np.float32(np.hypot(1, h / w))
        r0, soft = np.float32(rng.uniform(0.72, 0.95)), np.float32(rng.uniform(0.03, 0.15))
        ramp = np.clip((r - r0) / soft, 0, 1)
        light *= 1 - np.float32(rng.uniform(0.35, 0.97)) * ramp * ramp * (3 - 2 * ramp)
    img *= light * 255
    img += 0.5
    image = Image.merge("RGB", [Image.fromarray(c) for c in np.clip(img, 0, 255, out=img).astype(np.uint8)])
    if (w, h) != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
        field = np.asarray(Image.fromarray(field).resize((width, height), Image.BILINEAR))
    mask = Image.fromarray((field > 0) * np.uint8(255))
    if rng.random() < 0.35:
        _hairs(rng, image, scale)
    if scale > 1:
        image = _grain(rng, image)
    return image, mask


def _grain(rng, image):
    """``image`` times 1 + per-pixel noise of the working-size texture's amplitude, at full size.

    Upsampling smooths away the pixel-level texture that small images keep and that a camera
    records; without it a large source would be an unrealistically smooth JPEG.
    """
    arr = np.asarray(image, dtype=np.float32)
    arr *= (1 + PIXEL_GRAIN * (rng.random(arr.shape[:2], dtype=np.float32) - 0.5))[..., None]
    arr += 0.5
    return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))


def _params(n_train, n_test, seed, source_size):
    """The parameters that define a set, as stored in ``synthetic.json``."""
    return {"generator": "helpers.synthetic", "format_version": FORMAT_VERSION, "n_train": n_train,
            "n_test": n_test, "seed": seed, "source_size": source_size and list(source_size)}


def _marker(root):
    """The summary stored in ``root``'s marker file (a dict), or None when absent or unreadable."""
    try:
        stored = json.loads((root / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def _complete(root, params):
    """The stored summary if ``root`` holds a complete set made with ``params``, else None."""
    stored = _marker(root)
    if stored is None or any(stored.get(k) != v for k, v in params.items()):
        return None
    for split, (images, masks) in SPLITS.items():
        n = params[f"n_{split}"]
        if not ((root / images).is_dir() and (root / masks).is_dir()
                and len(list((root / images).glob("ISIC_*.jpg"))) == n
                and len(list((root / masks).glob("ISIC_*_Segmentation.png"))) == n):
            return None
    return stored


def _older_format(root, params):
    """The format version of a set at ``root`` written by an older generator with the same
    parameters (safe to replace: it is generated data), else None."""
    stored = _marker(root)
    if stored is None or any(stored.get(k) != v for k, v in params.items() if k != "format_version"):
        return None
    version = stored.get("format_version")
    older = isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION
    return version if older else None


def _write_case(tmp, seed, source_size, split_index, i, images, masks):
    """Render case ``i`` of a split into ``tmp``; return (width, height, lesion fraction)."""
    image, mask = render_case(np.random.default_rng([seed, split_index, i]), source_size)
    image.save(tmp / images / f"ISIC_{FIRST_ID + i:07d}.jpg", quality=JPEG_QUALITY)
    mask.save(tmp / masks / f"ISIC_{FIRST_ID + i:07d}_Segmentation.png")
    return image.width, image.height, float(np.asarray(mask).mean() / 255)


def write_synthetic_dataset(root, n_train=240, n_test=100, seed=0, source_size=None, overwrite=False,
                            progress=True) -> dict:
    """Write the set under ``root``; return a summary dict (parameters, counts, sizes, seconds).

    Training images are ISIC_9000000 (FIRST_ID) onwards, test images follow (ISIC_9000000 +
    n_train onwards), so no synthetic id is a real ISIC id.  A complete set with the same
    parameters is left as it is (unless ``overwrite``).  Other existing folders raise
    DataError unless ``overwrite``, which replaces the four folders and synthetic.json only.
    Files are generated in a temporary folder inside ``root`` and then renamed into place.
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DataError(f"synthetic: {name} must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"synthetic: seed must be an integer >= 0, got {seed!r}")
    if n_train + n_test > MAX_CASES:
        raise DataError(f"synthetic: at most {MAX_CASES} cases (ids ISIC_{FIRST_ID:07d} to ISIC_9999999), "
                        f"got {n_train} + {n_test}")
    if source_size is not None:
        source_size = tuple(int(v) for v in source_size)
        if len(source_size) != 2 or min(source_size) < 8:
            raise DataError(f"synthetic: source_size must be (width, height) >= 8, got {source_size!r}")
    root = Path(root)
    params = _params(int(n_train), int(n_test), int(seed), source_size)
    start = time.perf_counter()
    stored = None if overwrite else _complete(root, params)
    if stored is not None:
        print(f"synthetic: {n_train} train + {n_test} test images already in {root}")
        return {**stored, "root": str(root), "written": False, "seconds": 0.0}
    old = None if overwrite else _older_format(root, params)
    if old is not None:
        print(f"synthetic: {root} holds format {old} of this set; writing format {FORMAT_VERSION} in its place")
        overwrite = True
    folders = [name for pair in SPLITS.values() for name in pair]
    if not overwrite:
        for name in folders:
            if (root / name).exists():
                raise DataError(f"synthetic: {root / name} already exists; pass --overwrite to replace it")
    if root.exists() and not root.is_dir():
        raise DataError(f"synthetic: {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=root))
    ids = {"train": range(n_train), "test": range(n_train, n_train + n_test)}
    jobs = [(split_index, i, images, masks)
            for split_index, (split, (images, masks)) in enumerate(SPLITS.items()) for i in ids[split]]
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))  # numpy and PIL release the GIL
    try:
        for name in folders:
            (tmp / name).mkdir()
        with progress_bar(total=len(jobs), desc="synthetic", unit="img", enabled=progress, leave=True) as bar:
            stats = []
            for result in pool.map(lambda job: _write_case(tmp, seed, source_size, *job), jobs):
                stats.append(result)
                bar.update()
        (root / MARKER).unlink(missing_ok=True)
        for name in folders:
            if (root / name).is_dir() and not (root / name).is_symlink():
                shutil.rmtree(root / name)
            elif (root / name).exists() or (root / name).is_symlink():
                (root / name).unlink()
            os.replace(tmp / name, root / name)
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    widths, heights, fractions = zip(*stats)
    summary = {**params, "width_range": [min(widths), max(widths)],
               "height_range": [min(heights), max(heights)],
               "lesion_fraction_range": [round(min(fractions), 4), round(max(fractions), 4)],
               "lesion_fraction_mean": round(float(np.mean(fractions)), 4)}
    write_json(root / MARKER, summary)
    print(f"synthetic: wrote {n_train} train + {n_test} test images to {root} in {seconds:.1f} s")
    return {**summary, "root": str(root), "written": True, "seconds": round(seconds, 3)}


def _size_arg(text):
    """Parse 'WxH' for argparse."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 2048x1536, got {text!r}") from None
    return w, h


def main(argv=None) -> int:
    """Command line: write a synthetic set; ProjectError -> one line on stderr, exit 1."""
    parser = argparse.ArgumentParser(prog="python -m helpers.synthetic",
                                     description="Write a synthetic ISIC 2016 Part 1 style data set.")
    parser.add_argument("root", type=Path, help="folder to write the four ISIC 2016 Part 1 folders into")
    parser.add_argument("--n-train", type=int, default=240, help="training cases (default 240)")
    parser.add_argument("--n-test", type=int, default=100, help="test cases (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--source-size", type=_size_arg, default=None, metavar="WxH",
                        help="give every image this size, e.g. 2048x1536 (default: random small sizes)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing folders")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        write_synthetic_dataset(args.root, args.n_train, args.n_test, args.seed, args.source_size,
                                args.overwrite, progress=not args.no_progress)
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
