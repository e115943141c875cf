"""Plant a fault in a copy of the project and run the fast suite on it: which tests catch it?

    .venv/bin/python tests/plant_faults.py                 # every fault below, one copy each
    .venv/bin/python tests/plant_faults.py target flipped  # some of them
    .venv/bin/python tests/plant_faults.py --list          # the faults and the edits that plant them

Each fault is one exact text replacement in one file (`--list` prints it, to plant it by hand). The copy lives in a temporary folder; the working tree is never touched. A fault that the
fast suite (`make test-fast`: `-m "not slow and not long"`) lets pass is reported as MISSED.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAULTS = {  # name -> (file, text, replacement, what it does)
    "target": ("helpers/train.py", "loss = loss_fn(logits.float(), y)", "loss = loss_fn(logits.float(), 1 - y)",
               "the loss's target inverted"),
    "transposed": ("helpers/cache.py", 'out["masks"] = torch.from_numpy(np.stack([r["mask"] for r in results]))[:, None]',
                   'out["masks"] = torch.from_numpy(np.stack([r["mask"] for r in results]))[:, None].transpose(2, 3)',
                   "the masks transposed against their images"),
    "weights": ("helpers/model.py", "        net.features.load_state_dict(",
                "        (lambda *a, **k: None)(",
                "the encoder's weights not loaded from a weights file"),
    "imagenet": ("helpers/model.py", "return mobilenet_v2(weights=imagenet_weights(), progress=progress).features",
                 "return mobilenet_v2(weights=None, progress=progress).features",
                 "the ImageNet weights not loaded"),
    "flipped": ("helpers/metrics.py", "    return logits >= 0", "    return logits < 0",
                "the metric's threshold flipped"),
    "dice": ("helpers/metrics.py", "return _reduce(2 * tp, 2 * tp + fp + fn, 1.0, counts, reduction, dice)",
             "return _reduce(2 * tp, 2 * tp + fp + fn + tn, 1.0, counts, reduction, dice)",
             "Dice counting true negatives"),
    "channels": ("helpers/cache.py", "images = torch.from_numpy(np.stack([r[\"image\"] for r in results])).permute(0, 3, 1, 2)",
                 "images = torch.from_numpy(np.stack([r[\"image\"] for r in results])[..., ::-1].copy()).permute(0, 3, 1, 2)",
                 "the images read as BGR"),
    "no-step": ("helpers/train.py", "            loss.backward()\n            optimizer.step()",
                "            loss.backward()", "the optimizer never steps"),
    "unfrozen": ("helpers/model.py", "self.encoder.requires_grad_(False)", "self.encoder.requires_grad_(True)",
                 "the frozen encoder trains"),
    "bilinear-masks": ("helpers/folders.py", "resize((image_size, image_size), Image.NEAREST)",
                       "resize((image_size, image_size), Image.BILINEAR)", "masks resized bilinearly"),
    "shuffled-ids": ("helpers/metrics.py", 'return [{"id": ids[i], "height"', 'return [{"id": ids[-1 - i], "height"',
                     "per-image rows under another image's id"),
    "no-dropout": ("helpers/model.py", "def __init__(self, channels=REPORT_CHANNELS, dropout: float = 0.5):",
                   "def __init__(self, channels=REPORT_CHANNELS, dropout: float = 0.0):",
                   "the report decoder without its Dropout(0.5)"),
    "skip": ("helpers/model.py", "torch.cat([x, skip], dim=1)", "torch.cat([x, torch.zeros_like(skip)], dim=1)",
             "the U-Net's skip connections zeroed"),
}


def plant(tree: Path, name: str) -> None:
    path, old, new, _ = FAULTS[name]
    text = (tree / path).read_text()
    if text.count(old) != 1:
        sys.exit(f"{name}: {path} does not hold the text to replace exactly once: {old!r}")
    (tree / path).write_text(text.replace(old, new))


def _ignored(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: the environment, runs, caches and data (but each folder's README)."""
    skip = {".venv", "runs", "lab", "__pycache__", ".pytest_cache", ".hypothesis"} & set(names)
    if Path(folder).name in ("data", "figures") and Path(folder).parent == ROOT:
        skip |= {n for n in names if n != "README.md"}
    return skip


def run(name: str, pytest_args: list[str]) -> tuple[list[str], float]:
    """The failing tests of the fast suite with fault ``name`` planted in a copy of the tree, and the seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=_ignored)
        plant(tree, name)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                               "not slow and not long", *pytest_args], cwd=tree, env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)))
        return failed, time.perf_counter() - start


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        for name, (path, _, _, what) in FAULTS.items():
            _, old, new, _ = FAULTS[name]
            print(f"{name}: {what}\n  in {path}, replace {old!r}\n  with {new!r}")
        return 0
    names = [a for a in argv if not a.startswith("-")] or list(FAULTS)
    missed = 0
    for name in names:
        failed, seconds = run(name, [a for a in argv if a.startswith("-")])
        missed += not failed
        print(f"{name}: {FAULTS[name][3]}: " + (f"{len(failed)} failing test(s) in {seconds:.0f} s" if failed
                                                 else f"MISSED (the fast suite passed in {seconds:.0f} s)"))
        for test in failed:
            print(f"  {test}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
