"""Training and evaluation: seed_everything, train_one_epoch, evaluate, fit -> history.

Every setting is an argument; the settings are saved inside the checkpoint next to the weights.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint, metrics
from .checkpoint import load_checkpoint, read_history, save_run  # noqa: F401 (imported from here too)
from .errors import TrainingDiverged
from .model import SegmentationModel


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when present, else cpu; anything else is passed to torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available (use device='auto' or 'cpu')")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> DataLoader:
    """DataLoader over an in-memory dataset (no worker processes needed: items are slices)."""
    pin = device is not None and device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, progress: bool = True, desc: str = "train") -> float:
    """One pass over ``loader``; returns the mean BCE-with-logits loss per pixel.

    A NaN or infinite batch loss raises TrainingDiverged naming the batch (after that batch's step).
    """
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total, count = 0.0, 0
    for number, batch in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False), 1):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"batch {number} of {len(loader)}: training loss is {value}")
        total += value * len(x)
        count += len(x)
    return total / count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, keep_probs: bool = False) -> dict:
    """Loss and per-image confusion counts at the tensors' resolution.

    Returns {"loss": mean BCE per pixel, "counts": int64 N x 4 (TP, FP, FN, TN), "ids": [...],
    and with keep_probs "probs": float16 N x 1 x S x S}.
    """
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total, pixels, counts, ids, probs = 0.0, 0, [], [], []
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        logits = model(x)
        total += loss_fn(logits, y).item()
        pixels += y.numel()
        counts.append(metrics.confusion(metrics.binarize_logits(logits), y > 0.5).cpu())
        ids += list(batch["id"])
        if keep_probs:
            probs.append(torch.sigmoid(logits).half().cpu())
    out = {"loss": total / pixels, "counts": torch.cat(counts), "ids": ids}
    if keep_probs:
        out["probs"] = torch.cat(probs)
    return out


def fit(model: SegmentationModel, train_set: Dataset, test_set: Dataset, *, epochs: int = 25,
        batch_size: int = 16, lr: float = 1e-3, seed: int = 0, device: str = "auto",
        out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = True, log=print) -> list[dict]:
    """Train with BCEWithLogitsLoss and NAdam; evaluate on ``test_set`` after every epoch.

    Returns the history: one dict per epoch with train_loss, test_loss, test_iou (macro Jaccard),
    test_dice (macro Dice) and seconds. With ``out_dir``, writes last.pt after every epoch and
    history.json and checkpoint.pt at the end (all atomically; see :mod:`helpers.checkpoint`). A
    rerun with the same ``out_dir`` and settings resumes after the last complete epoch, with the
    same history and weights as an uninterrupted run on the CPU; a finished run is loaded into
    ``model``, not retrained. Other saved settings raise RunStateError; ``overwrite=True`` retrains.
    A NaN or infinite training loss raises TrainingDiverged, leaving last.pt of the last good epoch.
    """
    dev = resolve_device(device)
    generator = seed_everything(seed)
    model.to(dev)
    optimizer = torch.optim.NAdam([p for p in model.parameters() if p.requires_grad], lr=lr)
    train_loader = make_loader(train_set, batch_size, True, generator, dev)
    test_loader = make_loader(test_set, batch_size, False, None, dev)
    settings = {"image_size": int(train_set[0]["image"].shape[-1]), "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "seed": seed, "device": str(dev),
                "optimizer": "NAdam", "loss": "BCEWithLogitsLoss", "n_train": len(train_set), "n_test": len(test_set)}
    history: list[dict] = []
    if out_dir is not None:
        history, finished = checkpoint.start_or_resume(out_dir, model, optimizer, generator, settings, overwrite, log)
        if finished:
            return history
    start = time.perf_counter()
    for epoch in range(len(history) + 1, epochs + 1):
        t0 = time.perf_counter()
        try:
            train_loss = train_one_epoch(model, train_loader, optimizer, dev, progress, f"epoch {epoch}/{epochs}")
        except TrainingDiverged as exc:
            kept = (f"the last good state (after epoch {len(history)}) is kept in {Path(out_dir) / checkpoint.STATE}"
                    if out_dir is not None and history else "nothing was saved")
            raise TrainingDiverged(f"training diverged at epoch {epoch}, {exc}; {kept}; lower the learning rate "
                                   f"(lr {lr}) or check the data") from None
        ev = evaluate(model, test_loader, dev)
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": ev["loss"],
               "test_iou": float(metrics.jaccard(ev["counts"], "macro")),
               "test_dice": float(metrics.dice(ev["counts"], "macro")),
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if out_dir is not None:
            checkpoint.save_state(out_dir, model, optimizer, history, settings, generator)
        if log:
            log(f"epoch {epoch:2d}/{epochs}  train loss {train_loss:.4f}  test loss {ev['loss']:.4f}  "
                f"IoU {row['test_iou']:.3f}  Dice {row['test_dice']:.3f}  ({row['seconds']:.1f} s)")
    if log:
        last = history[-1]
        log(f"trained {epochs} epochs in {time.perf_counter() - start:.0f} s on {dev}: "
            f"test IoU {last['test_iou']:.3f}, Dice {last['test_dice']:.3f}")
    if out_dir is not None:
        save_run(out_dir, model, settings, history)
    return history
