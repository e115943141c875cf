"""Training and evaluation: seed_everything, train_one_epoch, evaluate, fit -> history.

Every setting is an argument; the settings are saved inside the checkpoint next to the weights.
"""

from __future__ import annotations

import contextlib
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from . import checkpoint, metrics, recipe
from .checkpoint import load_checkpoint, read_history, save_run  # noqa: F401 (imported from here too)
from .cache import TensorSegmentation
from .errors import TrainingDiverged
from .model import SegmentationModel
from .progress import plural, progress_bar

EVAL_SPLITS = {"test": "test", "validation": "val"}  # split scored after every epoch -> its history key prefix
SELECTS = ("last", "best", "ema")  # which weights fit keeps
ENCODER_BN = ("train", "frozen")  # the encoder's BatchNorm while fine-tuning: batch statistics, or its saved ones
EMA_DECAY = 0.995  # select="ema" without decays: about 200 steps (5 epochs of 645 images in batches of 16)


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
                device: torch.device | None = None, *, batched: bool | None = None,
                num_workers: int = 0) -> DataLoader:
    """DataLoader over ``dataset``; batches pinned in memory for a CUDA ``device``.

    batched (None: True for a :class:`TensorSegmentation`): fetch each batch with one
    ``dataset[indices]`` instead of ``batch_size`` items and a collate. The batches, their order
    for a given ``generator`` and their values are exactly those of the per-item DataLoader.
    num_workers: worker processes for datasets that decode files (in-memory data needs none).
    """
    pin = device is not None and device.type == "cuda"
    if batched is None:
        batched = isinstance(dataset, TensorSegmentation)
    if not batched:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin,
                          num_workers=num_workers)
    # the sampler DataLoader itself would make, grouped into index lists; the loader draws its base
    # seed from ``generator`` before the sampler draws its permutation, exactly as the per-item one does
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False),
                      generator=generator, pin_memory=pin, num_workers=num_workers)


def resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp``, or None for full float32.

    "auto": on for CUDA, off on CPU. True / "on": bfloat16 where supported (every CPU; CUDA when
    torch.cuda.is_bf16_supported()), else float16. "bf16" / "fp16": that dtype. False / "off" / None: off.
    """
    if amp == "auto":
        amp = device.type == "cuda"
    if amp is None or amp is False or amp == "off":
        return None
    if amp is True or amp == "on":
        return torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"amp must be 'auto', True, False, 'bf16' or 'fp16', got {amp!r}")


def amp_name(amp: bool | str | None, device: torch.device) -> str:
    """"bfloat16", "float16" or "off": what :func:`resolve_amp` gives, as recorded in settings."""
    dtype = resolve_amp(amp, device)
    return "off" if dtype is None else str(dtype).removeprefix("torch.")


def resolve_channels_last(channels_last: bool | str, device: torch.device) -> bool:
    """"auto": channels_last (NHWC) on CUDA and on CPU (oneDNN's NHWC kernels: about 1.25x faster
    training on the development machine's CPU), off on other devices; True / False as given."""
    if channels_last == "auto":
        return device.type in ("cuda", "cpu")
    if isinstance(channels_last, bool):
        return channels_last
    raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")


def _precision(model: nn.Module, device: torch.device, amp, channels_last):
    """(autocast dtype or None, memory format of the inputs); converts the model to NHWC when asked."""
    if resolve_channels_last(channels_last, device):
        model.to(memory_format=torch.channels_last)  # in place, so the optimizer keeps its parameters
        return resolve_amp(amp, device), torch.channels_last
    return resolve_amp(amp, device), torch.preserve_format


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, progress: bool = True, desc: str = "train", *, amp="auto",
                    channels_last="auto", scaler: torch.amp.GradScaler | None = None, loss_fn: nn.Module | None = None,
                    augment=None, scheduler=None, averager: recipe.WeightAverage | None = None) -> float:
    """One pass over ``loader``; returns the mean training loss per pixel (the report's BCE with logits
    unless ``loss_fn`` says otherwise).

    amp: mixed precision (:func:`resolve_amp`; "auto": on for CUDA only); float16 scales the loss
    with ``scaler`` (made here when None: pass one to keep its scale from epoch to epoch).
    channels_last: NHWC model and inputs (:func:`resolve_channels_last`; "auto": on for CUDA and CPU).
    augment: None, or a function (images, masks) -> (images, masks) applied to each batch on ``device``.
    scheduler: None, or an lr scheduler stepped after every batch.
    averager: None, or a :class:`helpers.recipe.WeightAverage` updated after every step.
    Batch losses stay on the device (a step never waits for the GPU) and are checked at the end of
    the epoch: a NaN or infinite one raises TrainingDiverged naming the first such batch.
    """
    model.train()
    dtype, memory_format = _precision(model, device, amp, channels_last)
    if dtype is torch.float16 and scaler is None:
        scaler = torch.amp.GradScaler(device.type)
    loss_fn = loss_fn or nn.BCEWithLogitsLoss()
    losses, sizes = [], []
    # a live bar only: fit logs one line per epoch, where plain batch lines would repeat it
    for batch in progress_bar(loader, desc=desc, unit="batch", enabled=progress, plain=False):
        x = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        y = batch["mask"].to(device, non_blocking=True)
        if augment is not None:
            x, y = augment(x, y)
            if memory_format is torch.channels_last:
                x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        if averager is not None:
            averager.update(model)
        losses.append(loss.detach())
        sizes.append(len(x))
    values = torch.stack(losses).double().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        number = int(bad[0]) + 1
        raise TrainingDiverged(f"batch {number} of {len(values)}: training loss is {values[number - 1].item()}")
    return float((values * torch.tensor(sizes, dtype=torch.float64)).sum()) / sum(sizes)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, keep_probs: bool = False, *,
             amp="auto", channels_last="auto") -> dict:
    """Loss and per-image confusion counts at the tensors' resolution.

    Returns {"loss": mean BCE per pixel, "counts": int64 N x 4 (TP, FP, FN, TN), "ids": [...],
    and with keep_probs "probs": float16 N x 1 x S x S}. amp, channels_last: as in train_one_epoch.
    """
    model.eval()
    dtype, memory_format = _precision(model, device, amp, channels_last)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total, pixels, counts, ids, probs = 0.0, 0, [], [], []
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        y = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        logits = logits.float()
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


def parameter_groups(model: SegmentationModel, lr: float, encoder_lr: float = 1.0) -> list[dict]:
    """The trainable parameters as optimizer groups: one group at ``lr``, or, with ``encoder_lr`` below 1,
    the encoder's at ``lr * encoder_lr`` and the rest (decoder and head) at ``lr``."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if encoder_lr == 1:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    encoder = [p for n, p in trainable if n.startswith("encoder.")]
    rest = [p for n, p in trainable if not n.startswith("encoder.")]
    return [g for g in ({"params": encoder, "lr": lr * encoder_lr}, {"params": rest, "lr": lr}) if g["params"]]


# what an optimizer's defaults say about how it runs, not about what it computes: left out of its settings
IMPLEMENTATION_KEYS = {"foreach", "fused", "capturable", "differentiable"}


def optimizer_settings(optimizer: torch.optim.Optimizer) -> str:
    """An optimizer's hyperparameters besides the learning rate, as saved with a run: "betas=(0.9, 0.999),
    eps=1e-08, ..." (its constructor's defaults merged with what was passed, sorted by name)."""
    items = sorted((k, v) for k, v in optimizer.defaults.items() if k != "lr" and k not in IMPLEMENTATION_KEYS)
    return ", ".join(f"{k}={v!r}" for k, v in items)


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """ValueError unless ``optimizer`` updates every trainable parameter of ``model`` (an optimizer built over
    another model's parameters would leave this one untrained without a word)."""
    mine = {id(p) for p in model.parameters() if p.requires_grad}
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not mine or not mine <= given:
        raise ValueError(f"the {type(optimizer).__name__} optimizer does not hold the model's trainable parameters "
                         f"({len(mine - given)} of {len(mine)} missing): build it over this model, e.g. "
                         f"torch.optim.{type(optimizer).__name__}(model.parameters(), lr=...)")


def fit(model: SegmentationModel, train_set: Dataset, test_set: Dataset, *, epochs: int = 25,
        batch_size: int = 16, lr: float = 1e-3, seed: int = 0, device: str = "auto",
        out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = True, log=print,
        amp="auto", channels_last="auto", eval_split: str = "test", select: str = "last",
        augment=None, loss: str = "bce", schedule: str = "constant", warmup_epochs: int = 1, label: str = "train",
        on_epoch=None, ema=(), encoder_lr: float = 1.0, encoder_bn: str = "train",
        deep_supervision: float = 0.0, optimizer: torch.optim.Optimizer | None = None,
        loss_fn: nn.Module | None = None) -> list[dict]:
    """Train ``model``; evaluate on ``test_set`` (the split named ``eval_split``) after every epoch.

    The defaults are the report's recipe: BCEWithLogitsLoss, NAdam, a constant learning rate, no
    augmentation, the weights of the last epoch. The notebooks build the loss and the optimizer
    themselves and pass them in:

    - optimizer: an optimizer over ``model``'s parameters (the report's:
      ``torch.optim.NAdam(model.parameters(), lr=0.001)``); its class, its learning rate (that of its
      first group, recorded as ``lr``) and its other settings are saved with the run and compared on
      resume, and ``lr`` and ``encoder_lr`` are then not used. None: NAdam over
      :func:`parameter_groups` at ``lr``;
    - loss_fn: the training loss, a module called as ``loss_fn(logits, masks)`` (the report's:
      ``nn.BCEWithLogitsLoss()``); its class name is saved as ``loss``. None: :func:`helpers.recipe.make_loss` of ``loss``.

    Model 3's recipe may change the rest:

    - eval_split: "test" (the report's protocol: the test split scored after every epoch) or
      "validation" (a split held out of the training images);
    - select: "last" (the last epoch's weights), "best" (the epoch with the highest macro Jaccard
      on ``test_set``, which must then be a validation split; the history keeps every epoch and
      history.json names the selected one) or "ema" (the moving average of the first decay of ``ema``,
      :data:`EMA_DECAY` when ``ema`` is empty; the history scores the raw weights of each epoch);
    - ema: decays of exponential moving averages of the weights to keep besides the model
      (:class:`helpers.recipe.WeightAverage`, updated after every step, saved in last.pt so that a
      resumed run continues them exactly, and in checkpoint.pt under "ema" at the end);
    - augment: None/False (off), True (:func:`helpers.recipe.augment_batch` with its defaults) or a
      dict of its keyword arguments; applied to each training batch on the training device;
    - encoder_lr: the encoder's learning rate as a fraction of ``lr`` (1: one rate for all, the
      report's; below 1 the pretrained encoder moves more slowly than the decoder; runs saved
      before it existed resume as 1);
    - encoder_bn: "train" (the encoder's BatchNorm layers normalise with each batch's statistics and
      update their running ones, as nn.Module.train does: the report's) or "frozen" (they keep the
      statistics the weights came with, while their scale and shift train); runs saved before it
      existed resume as "train";
    - deep_supervision: 0 (off, the report's) or the weight of the auxiliary losses of
      :class:`helpers.recipe.DeepSupervision` (the U-Net decoder only; its heads train with the model,
      are saved in last.pt for a resume and are dropped at the end; runs saved before it existed
      resume as 0);
    - loss: "bce", "bce_dice" or "bce_lovasz" (:func:`helpers.recipe.make_loss`);
    - schedule: "constant", "cosine" or "onecycle" (:func:`helpers.recipe.make_scheduler`, stepped
      per batch, ``warmup_epochs`` of linear warm-up for "cosine").

    Returns the history: one dict per epoch with train_loss (the training objective), and
    <split>_loss (BCE), <split>_iou (macro Jaccard), <split>_dice (macro Dice) with <split> "test"
    or "val", and seconds. With ``out_dir``, writes last.pt after every epoch and history.json and
    checkpoint.pt at the end (all atomically; see :mod:`helpers.checkpoint`). A rerun with the same
    ``out_dir`` and settings resumes after the last complete epoch, with the same history and
    weights as an uninterrupted run on the CPU; a finished run is loaded into ``model``, not
    retrained. Other saved settings raise RunStateError; ``overwrite=True`` retrains. A NaN or
    infinite training loss raises TrainingDiverged, leaving last.pt of the last good epoch.
    amp, channels_last: see :func:`train_one_epoch` (amp on for CUDA; channels_last on CUDA and CPU).
    Where a live bar can be drawn (:func:`helpers.progress.progress_bar`), ``progress`` shows one over
    the epochs, named ``label``, with the latest training loss and scored-split Dice; ``on_epoch``, if
    given, is called with the history after every epoch (a notebook redraws its loss curve with it).
    The float16 GradScaler's state is not saved, so resuming an fp16 GPU run is close to, not
    bit-identical with, an uninterrupted one.
    """
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"eval_split must be one of {sorted(EVAL_SPLITS)}, got {eval_split!r}")
    if select not in SELECTS:
        raise ValueError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    ema = tuple(float(d) for d in ema) or ((EMA_DECAY,) if select == "ema" else ())
    if select == "best" and eval_split != "validation":
        raise ValueError("select='best' chooses an epoch by its score, so it needs a validation split "
                         "(eval_split='validation'); choosing on the test split would tune on the test set")
    key = EVAL_SPLITS[eval_split]
    dev = resolve_device(device)
    generator = seed_everything(seed)
    model.to(dev)
    if not 0 < encoder_lr <= 1:
        raise ValueError(f"encoder_lr is a fraction of lr in (0, 1], got {encoder_lr!r}")
    if encoder_bn not in ENCODER_BN:
        raise ValueError(f"encoder_bn must be one of {', '.join(ENCODER_BN)}, got {encoder_bn!r}")
    model.encoder_bn_frozen = encoder_bn == "frozen"
    if optimizer is None:
        optimizer = torch.optim.NAdam(parameter_groups(model, lr, encoder_lr), lr=lr)
    else:
        check_optimizer(optimizer, model)
        lr, encoder_lr = float(optimizer.param_groups[0]["lr"]), 1.0
    train_loader = make_loader(train_set, batch_size, True, generator, dev)
    test_loader = make_loader(test_set, batch_size, False, None, dev)
    aug_kwargs = recipe.augment_settings(augment)
    aug_generator = torch.Generator(dev).manual_seed(seed + 1_000_003) if aug_kwargs is not None else None
    loss_name = recipe.LOSS_NAMES[loss] if loss_fn is None else type(loss_fn).__name__
    loss_fn = recipe.make_loss(loss) if loss_fn is None else loss_fn.to(dev)
    if deep_supervision:
        loss_fn = recipe.DeepSupervision(loss_fn, model.decoder, deep_supervision).to(dev)
        optimizer.add_param_group({"params": list(loss_fn.heads.parameters()), "lr": lr})
    warmup_epochs = min(warmup_epochs, epochs - 1)  # a one-epoch run has no room for a warm-up
    scheduler = recipe.make_scheduler(optimizer, schedule, epochs=epochs, steps_per_epoch=len(train_loader),
                                      warmup_epochs=warmup_epochs)
    settings = {"image_size": int(train_set[0]["image"].shape[-1]), "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "seed": seed, "device": str(dev),
                "optimizer": type(optimizer).__name__, "optimizer_settings": optimizer_settings(optimizer),
                "loss": loss_name, "n_train": len(train_set),
                "n_test": len(test_set), "eval_split": eval_split, "select": select,
                "augment": "off" if aug_kwargs is None else recipe.describe_augment(aug_kwargs),
                "schedule": schedule if schedule == "constant" else f"{schedule} (warm-up {warmup_epochs} epoch(s))",
                "ema": ", ".join(map(str, ema)) or "off", "encoder_lr": float(encoder_lr),
                "encoder_bn": encoder_bn, "deep_supervision": float(deep_supervision)}
    precision = {"amp": amp, "channels_last": channels_last}
    scaler = torch.amp.GradScaler(dev.type) if resolve_amp(amp, dev) is torch.float16 else None
    settings.update(amp=amp_name(amp, dev), channels_last=resolve_channels_last(channels_last, dev))
    history: list[dict] = []
    best: dict = {}
    if ema:
        _precision(model, dev, amp, channels_last)  # the averages take the memory format training will use
    averager = recipe.WeightAverage(model, ema) if ema else None
    if out_dir is not None:
        history, finished, extra = checkpoint.start_or_resume(out_dir, model, optimizer, generator, settings,
                                                              overwrite, log)
        if finished:
            return history
        if scheduler is not None and "scheduler" in extra:
            scheduler.load_state_dict(extra["scheduler"])
        if aug_generator is not None and "augment_rng" in extra:
            aug_generator.set_state(extra["augment_rng"])
        best = extra.get("best", {})
        if averager is not None and "ema" in extra:
            averager.load_state_dict(extra["ema"])
        if deep_supervision and "deep_supervision_heads" in extra:
            loss_fn.heads.load_state_dict(extra["deep_supervision_heads"])
    augment_fn = None if aug_kwargs is None else partial(recipe.augment_batch, generator=aug_generator, **aug_kwargs)
    start = time.perf_counter()
    bar = progress_bar(total=epochs, initial=len(history), desc=label, unit="epoch", enabled=progress, leave=True,
                       plain=False)
    with loss_fn.hooked() if deep_supervision else contextlib.nullcontext():
        for epoch in range(len(history) + 1, epochs + 1):
            t0 = time.perf_counter()
            try:
                train_loss = train_one_epoch(model, train_loader, optimizer, dev, progress, f"epoch {epoch}/{epochs}",
                                             scaler=scaler, loss_fn=loss_fn, augment=augment_fn, scheduler=scheduler,
                                             averager=averager, **precision)
            except TrainingDiverged as exc:
                kept = (f"the last good state (after epoch {len(history)}) is kept in {Path(out_dir) / checkpoint.STATE}"
                        if out_dir is not None and history else "nothing was saved")
                raise TrainingDiverged(f"training diverged at epoch {epoch}, {exc}; {kept}; lower the learning rate "
                                       f"(lr {lr}) or check the data") from None
            ev = evaluate(model, test_loader, dev, **precision)
            row = {"epoch": epoch, "train_loss": train_loss, f"{key}_loss": ev["loss"],
                   f"{key}_iou": float(metrics.jaccard(ev["counts"], "macro")),
                   f"{key}_dice": float(metrics.dice(ev["counts"], "macro")),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if select == "best" and row[f"{key}_iou"] > best.get("iou", -1.0):
                best = {"epoch": epoch, "iou": row[f"{key}_iou"], "model": {k: v.clone() for k, v in checkpoint.cpu_state(model).items()}}
            if out_dir is not None:
                extra = {"best": best} if select == "best" else {}
                if scheduler is not None:
                    extra["scheduler"] = scheduler.state_dict()
                if aug_generator is not None:
                    extra["augment_rng"] = aug_generator.get_state()
                if averager is not None:
                    extra["ema"] = averager.state_dict()
                if deep_supervision:
                    extra["deep_supervision_heads"] = loss_fn.heads.state_dict()
                checkpoint.save_state(out_dir, model, optimizer, history, settings, generator, extra)
            bar.set_postfix({"train loss": f"{train_loss:.4f}", f"{eval_split} Dice": f"{row[f'{key}_dice']:.3f}"})
            bar.update()
            if on_epoch is not None:
                on_epoch(history)
            if log:
                log(f"epoch {epoch:2d}/{epochs}  train loss {train_loss:.4f}  {eval_split} loss {ev['loss']:.4f}  "
                    f"IoU {row[f'{key}_iou']:.3f}  Dice {row[f'{key}_dice']:.3f}  ({row['seconds']:.1f} s)")
    bar.close()
    selected = history[-1]["epoch"]
    if select == "best" and best:
        model.load_state_dict(best["model"])
        selected = best["epoch"]
    if log:
        row = history[selected - 1]
        log(f"trained {plural(epochs, 'epoch')} in {time.perf_counter() - start:.0f} s on {dev}: {eval_split} IoU "
            f"{row[f'{key}_iou']:.3f}, Dice {row[f'{key}_dice']:.3f}"
            + (f" (best epoch {selected}, selected on the validation split)" if select == "best" else "")
            + (f" (raw weights; kept: their moving average, decay {ema[0]})" if select == "ema" else ""))
    averages = None if averager is None else averager.state_dict()
    if select == "ema":
        model.load_state_dict(averages["averages"][0])
    if out_dir is not None:
        save_run(out_dir, model, settings, history, selected_epoch=selected, averages=averages)
    return history
