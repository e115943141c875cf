"""What :func:`helpers.train.fit` keeps on disk, and how a rerun finds its place again.

A run folder (``out_dir``) holds:

- ``last.pt``: written (atomically) after every epoch: weights, optimizer state, the epoch, the
  history so far, the settings, the model config and every RNG state (torch CPU, CUDA when present,
  the data-shuffling generator, python ``random`` and numpy). It exists only while the run is
  unfinished: it is removed once ``checkpoint.pt`` is written.
- ``checkpoint.pt`` and ``history.json``: the finished run (weights, model config, settings, history).

A rerun with the same settings resumes after the last complete epoch (``last.pt``) or, when the
run is finished, reuses ``checkpoint.pt`` without training. Other settings raise
:class:`RunStateError`; ``overwrite=True`` starts afresh.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .errors import RunStateError
from .io import atomic_path, write_json
from .model import SegmentationModel, build_model, saved_decoder_widths
from .progress import plural

STATE = "last.pt"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
COMPARED = ("image_size", "epochs", "batch_size", "lr", "seed", "optimizer", "loss", "n_train", "n_test",
            "eval_split", "select", "augment", "schedule", "ema", "encoder_lr", "encoder_bn",
            "deep_supervision")
# compared only when the saved run recorded them (runs saved before they existed resume as they were)
COMPARED_WHEN_SAVED = ("optimizer_settings",)
# what a run saved before a setting existed did: the report's recipe, scored on the test split
SAVED_DEFAULTS = {"eval_split": "test", "select": "last", "augment": "off", "schedule": "constant", "ema": "off",
                  "encoder_lr": 1.0, "encoder_bn": "train",
                  "deep_supervision": 0.0}


def rng_states(generator: torch.Generator) -> dict:
    """Every random state training draws on: dropout (torch, CUDA), shuffling (``generator``), python, numpy."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(states: dict, generator: torch.Generator) -> None:
    """Undo :func:`rng_states`: after this, training draws the same numbers as it would have."""
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if states.get("cuda") is not None and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def cpu_state(module) -> dict:
    """The module's state dict, copied to the CPU."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_state(out_dir: str | Path, model: SegmentationModel, optimizer: torch.optim.Optimizer,
               history: list[dict], settings: dict, generator: torch.Generator, extra: dict | None = None) -> Path:
    """``last.pt`` after epoch len(history), atomically (an interruption leaves the previous one).

    ``extra``: further state a resumed run needs (the lr scheduler, the augmentation generator, the
    best epoch's weights), given back by :func:`start_or_resume`.
    """
    path = Path(out_dir) / STATE
    with atomic_path(path) as tmp:
        torch.save({"epoch": len(history), "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                    "history": history, "settings": settings, "config": model.config,
                    "rng": rng_states(generator), "extra": extra or {}}, tmp)
    return path


def _read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RunStateError(f"{path}: cannot read the saved training state ({first.strip()}); pass overwrite=True "
                            "(--overwrite) to train afresh, or use another run folder") from None


def _check_same(path: Path, saved: dict, settings: dict, config: dict) -> None:
    """RunStateError naming ``path`` and every setting that differs from the saved run's."""
    old = {k: saved["settings"].get(k, SAVED_DEFAULTS.get(k)) for k in COMPARED}
    diffs = [f"{k} {old[k]!r} saved, {settings.get(k)!r} now" for k in COMPARED if old[k] != settings.get(k)]
    diffs += [f"{k} {saved['settings'][k]!r} saved, {settings.get(k)!r} now" for k in COMPARED_WHEN_SAVED
              if k in saved["settings"] and saved["settings"][k] != settings.get(k)]
    diffs += [f"model {k} {saved['config'].get(k)!r} saved, {v!r} now" for k, v in config.items()
              if saved["config"].get(k) != v]
    if diffs:
        raise RunStateError(f"{path.parent}: holds a training run with other settings ({'; '.join(diffs)}); "
                            "pass overwrite=True (--overwrite) to retrain it, or use another run folder")


def start_or_resume(out_dir: str | Path, model: SegmentationModel, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, settings: dict, overwrite: bool = False, log=print
                    ) -> tuple[list[dict], bool, dict]:
    """Put ``model``, ``optimizer`` and the RNGs where ``out_dir``'s saved run left them.

    Returns (history so far, finished, the ``extra`` state saved with last.pt or {}). Nothing saved, or ``overwrite``: ([], False), and with
    ``overwrite`` the earlier last.pt, checkpoint.pt and history.json are removed first. An
    unfinished run: its history after restoring last.pt. A finished run: its history and True,
    with checkpoint.pt's weights loaded into ``model``. Other settings raise RunStateError.
    """
    out_dir = Path(out_dir)
    files = [out_dir / name for name in (STATE, CHECKPOINT, HISTORY)]
    if overwrite:
        removed = [p.name for p in files if p.is_file()]
        for p in files:
            p.unlink(missing_ok=True)
        if removed and log:
            log(f"{out_dir}: overwrite: removed the earlier {', '.join(removed)}; training from scratch")
        return [], False, {}
    state_path, final = files[0], files[1]
    if state_path.is_file():
        state = _read(state_path)
        _check_same(state_path, state, settings, model.config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_states(state["rng"], generator)
        if log:
            log(f"{out_dir}: resuming after epoch {state['epoch']} of {settings['epochs']} (from {STATE})")
        return state["history"], False, state.get("extra", {})
    if final.is_file():
        ckpt = _read(final)
        _check_same(final, ckpt, settings, model.config)
        model.load_state_dict(ckpt["model"])
        if log:
            log(f"{out_dir}: reused the finished training in {CHECKPOINT} ({plural(len(ckpt['history']), 'epoch')}, same "
                "settings); pass overwrite=True to retrain")
        return ckpt["history"], True, {}
    return [], False, {}


def save_run(out_dir: str | Path, model: SegmentationModel, settings: dict, history: list[dict],
             selected_epoch: int | None = None, averages: dict | None = None) -> None:
    """history.json and checkpoint.pt (weights, model config, settings, history and the epoch whose
    weights these are; with ``averages``, the moving averages of the weights under "ema"),
    atomically; then removes last.pt, which the finished run no longer needs."""
    out_dir = Path(out_dir)
    selected = selected_epoch or len(history)
    write_json(out_dir / HISTORY, {"settings": settings, "model": model.config, "history": history,
                                   "selected_epoch": selected})
    with atomic_path(out_dir / CHECKPOINT) as tmp:
        torch.save({"model": cpu_state(model), "config": model.config, "settings": settings, "history": history,
                    "selected_epoch": selected, **({"ema": averages} if averages else {})}, tmp)
    (out_dir / STATE).unlink(missing_ok=True)


_LOADED: dict[tuple, dict] = {}  # the last few checkpoint files read, by path, inode, size, mtime and device
LOADED_KEPT = 4


def _read_checkpoint(path: Path, device: str) -> dict:
    """torch.load of a checkpoint file, reusing the last read of the same unchanged file: scoring one
    training with and without TTA, or its seeds as an ensemble, reads each file once. torch's safe
    (weights-only) unpickler takes about half a second for a file with moving averages."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, str(device))
    if key not in _LOADED:
        while len(_LOADED) >= LOADED_KEPT:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = torch.load(path, map_location=device, weights_only=True)
    return dict(_LOADED[key])  # a new dict: the caller's changes to it stay its own


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[SegmentationModel, dict]:
    """Rebuild the model saved by :func:`save_run` (no weight download needed), in eval mode, and the checkpoint dict."""
    ckpt = _read_checkpoint(Path(path), device)
    cfg = ckpt["config"]
    widths = cfg.get("decoder_widths") or saved_decoder_widths(ckpt["model"])  # older files lack the key
    model = build_model(cfg["freeze_encoder"], encoder_weights=None, decoder=cfg["decoder"], decoder_widths=widths)
    model.load_state_dict(ckpt["model"])
    model.config = {**cfg, "decoder_widths": list(widths)}
    return model.to(device).eval(), ckpt


def read_history(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())["history"]
