"""Training throughput against the model's own compute limit, on one machine in one run.

    python -m helpers.tools.bench [--image-size 128] [--batch-size 16] [--images 64] [--test-images 16]
                            [--source-size 2048x1536 [WxH ...] | --sweep | --data ROOT]
                            [--steps 10] [--warmup 2] [--repeats 3]
                            [--json runs/bench.json] [--device auto] [--amp auto] [--channels-last auto]
                            [--augment]

For each source size a temporary synthetic set of ``--images`` JPEGs of that size is written, and
images per second are measured for Model 2 (report decoder, fine-tuned, random init) trained with
NAdam (lr 1e-3) and BCEWithLogitsLoss by :func:`helpers.train.train_one_epoch`, fed by:

- ``compute``: batches already in memory as float tensors - the limit;
- ``pipeline``: the real training input - the uint8 cache (:class:`helpers.cache.TensorSegmentation`)
  through :func:`helpers.train.make_loader`; building the cache is timed apart (``cache_build_s``);
  with ``--augment``, each batch is also augmented on the training device by
  :func:`helpers.recipe.augment_batch` (its default flips, rot90, zoom and colour jitter);
- ``naive``: :class:`helpers.cache.FileSegmentation` (open, decode and resize the JPEG and mask for
  every item) through a DataLoader with num_workers=0, as the report's notebook did.

Each row runs ``--warmup`` untimed steps, then ``--steps`` timed ones, with a fresh model. The three
rows run in ``--repeats`` rounds (compute, pipeline, naive, compute, ...) so that a slow spell of the
machine does not fall on one row only; each row reports its best round, and the JSON keeps every
round. Also measured: the cache file's size, the evaluation throughput at the original resolution
(:func:`helpers.evaluate.evaluate_checkpoint` on the test split) and the peak resident memory.
``--sweep`` runs 1024x768, 2048x1536 and 4288x2848 (the largest ISIC 2016 size). ``--data ROOT``
measures the same on a real ISIC-layout folder instead: its whole training split is cached and fed
by the pipeline and naive rows, and evaluation covers its test split.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import paths
from ..cache import FileSegmentation, TensorSegmentation, load_cached
from ..folders import list_split
from ..errors import ProjectError
from ..evaluate import evaluate_checkpoint
from ..io import write_json
from ..model import REPORT_CHANNELS, build_model
from ..recipe import augment_batch
from ..synthetic import _size_arg, write_synthetic_dataset
from ..train import (amp_name, load_checkpoint, make_loader, resolve_channels_last, resolve_device, save_run,
                    train_one_epoch)

SWEEP = ((1024, 768), (2048, 1536), (4288, 2848))
ROWS = ("compute", "pipeline", "naive")
SWITCH = {"auto": "auto", "on": True, "off": False}  # --amp and --channels-last


def machine_info(device: torch.device) -> dict:
    """CPU count, torch threads, device name, versions and the load average (a busy machine skews timings)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_1min": os.getloadavg()[0]}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _forever(loader):
    """The loader's batches, epoch after epoch (a new iterator, and a new shuffle, per epoch)."""
    while True:
        yield from loader


def _augmented(batches, device: torch.device, generator: torch.Generator):
    """The batches moved to ``device`` and augmented there by :func:`helpers.recipe.augment_batch`."""
    for batch in batches:
        images, masks = augment_batch(batch["image"].to(device, non_blocking=True),
                                      batch["mask"].to(device, non_blocking=True), generator)
        yield {**batch, "image": images, "mask": masks}


def train_throughput(batches, steps: int, warmup: int, device: torch.device, *, seed: int, amp, channels_last,
                     desc: str, progress: bool) -> tuple[float, torch.nn.Module]:
    """Images per second of ``steps`` training steps on ``batches`` (an iterator) after ``warmup`` untimed ones."""
    torch.manual_seed(seed)
    model = build_model(False, encoder_weights=None).to(device)
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
    kw = {"amp": amp, "channels_last": channels_last}  # float16 gets a GradScaler inside train_one_epoch
    if warmup:
        train_one_epoch(model, itertools.islice(batches, warmup), optimizer, device, False, **kw)
    seen = []

    def counted():
        for batch in itertools.islice(batches, steps):
            seen.append(len(batch["image"]))
            yield batch

    start = time.perf_counter()
    train_one_epoch(model, counted(), optimizer, device, progress, desc, **kw)  # ends with .item(): synchronised
    return sum(seen) / (time.perf_counter() - start), model


def bench_size(source_size: tuple[int, int] | None, work: Path, *, image_size: int, batch_size: int, images: int,
               test_images: int, steps: int, warmup: int, device: torch.device, amp, channels_last,
               repeats: int = 3, seed: int = 0, progress: bool = True, data_root=None, augment: bool = False) -> dict:
    """All the figures for one source size (width, height), on a synthetic set written under ``work``.

    With ``data_root`` (and ``source_size`` None) the figures are for that ISIC-layout folder: the
    cache holds its whole training split (built afresh under ``work``), pipeline and naive draw from
    all of it, compute cycles over its first ``images`` images, and evaluation covers its test split.
    """
    cache_dir = work / "cache"
    if data_root is None:
        root = work / "data"
        write_synthetic_dataset(root, n_train=images, n_test=test_images, seed=seed, source_size=source_size,
                                progress=progress)
    else:
        root = Path(data_root)
        test_images = len(list_split(root, "test", require_masks=False))
    cpu0, t0 = time.process_time(), time.perf_counter()
    data = load_cached(root, "train", image_size, cache_dir=cache_dir, progress=progress)
    build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    cache_mb = sum(p.stat().st_size for p in cache_dir.glob("*.pt")) / 1e6
    cached = TensorSegmentation(data)
    n_train = len(cached)
    images = min(images, n_train)
    kw = {"seed": seed, "amp": amp, "channels_last": channels_last, "progress": progress}
    in_memory = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in  # already on the device
                  cached[list(range(i, min(i + batch_size, images)))].items()} for i in range(0, images, batch_size)]
    loader = make_loader(cached, batch_size, True, torch.Generator().manual_seed(seed), device)
    files = make_loader(FileSegmentation(root, "train", image_size), batch_size, True,
                        torch.Generator().manual_seed(seed), device, num_workers=0)
    feeds = {"compute": itertools.cycle(in_memory), "pipeline": _forever(loader), "naive": _forever(files)}
    if augment:  # the generator lives on the device, as augment_batch asks
        feeds["pipeline"] = _augmented(feeds["pipeline"], device, torch.Generator(device=device).manual_seed(seed))
    rounds = {row: [] for row in ROWS}
    for _ in range(repeats):
        for row in ROWS:
            value, model = train_throughput(feeds[row], steps, warmup, device, desc=row, **kw)
            rounds[row].append(value)
    ips = {row: max(values) for row, values in rounds.items()}

    save_run(work / "run", model, {"image_size": image_size}, [])
    with torch.no_grad():  # warm up the inference kernels as evaluate_checkpoint will run them
        load_checkpoint(work / "run" / "checkpoint.pt", str(device))[0](in_memory[0]["image"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    evaluate_checkpoint(work / "run" / "checkpoint.pt", root, "test", None, batch_size=batch_size,
                        device=str(device), progress=progress)
    eval_ips = test_images / (time.perf_counter() - t0)
    raw_mb = n_train * 4 * image_size**2 / 1e6  # uint8: 3 image channels + 1 mask channel
    heights, widths = zip(*data["sizes"])
    return {"source_size": source_size and list(source_size), "data_root": data_root and str(data_root),
            "train_images": n_train, "source_width_range": [min(widths), max(widths)],
            "source_height_range": [min(heights), max(heights)],
            "images_per_s": ips, "images_per_s_rounds": rounds,
            "pipeline_over_compute": ips["pipeline"] / ips["compute"],
            "pipeline_over_naive": ips["pipeline"] / ips["naive"],
            "cache_build_s": build_s, "cache_build_images_per_s": n_train / build_s,
            "cache_build_cores_busy": build_cpu_s / build_s,
            "cache_mb": cache_mb, "cache_raw_uint8_mb": raw_mb, "cache_mb_per_image": cache_mb / n_train,
            "cache_mb_900_images_estimate": cache_mb / n_train * 900,
            "eval_original_resolution_images_per_s": eval_ips, "eval_images": test_images,
            "peak_rss_mb": peak_rss_mb()}


def source_label(r: dict) -> str:
    """"2048x1536" for a synthetic source size, "data" for a folder given with ``--data``."""
    return "data" if r["source_size"] is None else "{}x{}".format(*r["source_size"])


def format_table(r: dict, settings: dict) -> str:
    """The figures of one source size as a small text table."""
    ips = r["images_per_s"]
    source = (f"source {source_label(r)} JPEG" if r["data_root"] is None else
              "data {} ({}-{} x {}-{} JPEG)".format(r["data_root"], *r["source_width_range"],
                                                    *r["source_height_range"]))
    lines = [f"{source} -> {settings['image_size']}x{settings['image_size']}, batch {settings['batch_size']}, "
             f"{r['train_images']} training images, {settings['steps']} timed steps, "
             f"best of {settings['repeats']} rounds" + (", pipeline augmented" if settings["augment"] else ""),
             f"  {'row':<10}{'images/s':>10}{'x compute':>11}{'ms/image':>10}  rounds (images/s)"]
    lines += [f"  {row:<10}{ips[row]:>10.2f}{ips[row] / ips['compute']:>11.2f}{1e3 / ips[row]:>10.1f}  "
              + " ".join(f"{v:.1f}" for v in r["images_per_s_rounds"][row]) for row in ROWS]
    lines += [f"  pipeline/compute {r['pipeline_over_compute']:.2f} (target >= 0.90), "
              f"pipeline/naive {r['pipeline_over_naive']:.2f} (target >= 2.5 at 2048x1536)",
              f"  cache build {r['cache_build_s']:.1f} s ({r['cache_build_images_per_s']:.1f} images/s, "
              f"{r['cache_build_cores_busy']:.1f} cores busy); cache {r['cache_mb']:.2f} MB "
              f"({r['cache_mb_per_image'] * 1e3:.1f} kB/image, ~{r['cache_mb_900_images_estimate']:.0f} MB for 900)",
              f"  evaluation at the original resolution {r['eval_original_resolution_images_per_s']:.2f} images/s "
              f"({r['eval_images']} test images); peak RSS so far {r['peak_rss_mb']:.0f} MB"]
    return "\n".join(lines)


def run_bench(source_sizes, *, image_size: int = 128, batch_size: int = 16, images: int = 64, test_images: int = 16,
              steps: int = 10, warmup: int = 2, repeats: int = 3, device: str = "auto", amp="auto",
              channels_last="auto", seed: int = 0, json_path=None, progress: bool = True, log=print,
              data_root=None, augment: bool = False) -> dict:
    """Run :func:`bench_size` for every (width, height) in ``source_sizes``, or once on the ISIC-layout
    folder ``data_root`` when it is given (``source_sizes`` is then ignored); write and return the results."""
    for name, value, low in (("image_size", image_size, 32), ("batch_size", batch_size, 1), ("images", images, 1),
                             ("test_images", test_images, 1), ("steps", steps, 1), ("warmup", warmup, 0),
                             ("repeats", repeats, 1)):
        if value < low:
            raise ProjectError(f"bench: {name} must be at least {low}, got {value}")
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:
        raise ProjectError(str(exc)) from exc
    settings = {"image_size": image_size, "batch_size": batch_size, "images": images, "test_images": test_images,
                "steps": steps, "warmup": warmup, "repeats": repeats, "seed": seed,
                "model": "model 2 (report decoder, fine-tuned, random init)", "decoder_widths": list(REPORT_CHANNELS),
                "optimizer": "NAdam lr 0.001", "loss": "BCEWithLogitsLoss",
                "amp": amp_name(amp, dev),
                "channels_last": resolve_channels_last(channels_last, dev), "naive_num_workers": 0,
                "data_root": data_root and str(data_root), "augment": augment}
    out = {"settings": settings, "machine": machine_info(dev), "runs": []}
    start = time.perf_counter()
    for size in [None] if data_root is not None else source_sizes:
        with tempfile.TemporaryDirectory(prefix="isic-bench-") as tmp:
            r = bench_size(size and tuple(size), Path(tmp), image_size=image_size, batch_size=batch_size,
                           images=images, test_images=test_images, steps=steps, warmup=warmup, device=dev, amp=amp,
                           channels_last=channels_last, repeats=repeats, seed=seed, progress=progress,
                           data_root=data_root, augment=augment)
        out["runs"].append(r)
        log(format_table(r, settings))
    out["peak_rss_mb"], out["seconds"] = peak_rss_mb(), time.perf_counter() - start
    out["machine"]["load_average_1min_after"] = os.getloadavg()[0]
    if json_path is not None:
        write_json(json_path, out)
    m, runs = out["machine"], out["runs"]
    each = lambda fmt: "/".join(fmt.format(**r) for r in runs)  # noqa: E731
    log(f"bench: pipeline/compute {each('{pipeline_over_compute:.2f}')}, pipeline/naive "
        f"{each('{pipeline_over_naive:.1f}')} at {'/'.join(source_label(r) for r in runs)}; {m['device']} "
        f"({m['device_name']}, {m['torch_threads']} threads, load {m['load_average_1min']:.1f} before), "
        f"peak RSS {out['peak_rss_mb']:.0f} MB, {out['seconds']:.0f} s" + (f"; JSON {json_path}" if json_path else ""))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line; a ProjectError becomes one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=64, help="training images of the temporary set (default 64)")
    parser.add_argument("--test-images", type=int, default=16, help="test images, for the evaluation row")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--source-size", type=_size_arg, nargs="+", default=[(2048, 1536)], metavar="WxH",
                        help="size of the source JPEGs; several give one table each (default 2048x1536)")
    source.add_argument("--sweep", action="store_true", help="the source sizes 1024x768, 2048x1536 and 4288x2848")
    source.add_argument("--data", type=Path, metavar="ROOT",
                        help="an ISIC 2016 Part 1 folder (e.g. data/isic2016) instead of a synthetic set")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each row (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three rows; each reports its best")
    parser.add_argument("--json", type=Path, default=paths.RUNS / "bench.json", help="where to write the figures")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--amp", default="auto", choices=SWITCH, help="mixed precision (auto: on for CUDA only)")
    parser.add_argument("--channels-last", default="auto", choices=SWITCH, help="NHWC (auto: on for CUDA and CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true",
                        help="augment every pipeline batch on the training device (helpers.recipe.augment_batch)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        run_bench(SWEEP if args.sweep else args.source_size, image_size=args.image_size, batch_size=args.batch_size,
                  images=args.images, test_images=args.test_images, steps=args.steps, warmup=args.warmup,
                  repeats=args.repeats, device=args.device, amp=SWITCH[args.amp],
                  channels_last=SWITCH[args.channels_last], seed=args.seed, json_path=args.json,
                  progress=not args.quiet, data_root=args.data, augment=args.augment)
    except ProjectError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
