"""The headless run: execute the five notebooks in order with papermill, then report.

    python -m helpers.tools.reproduce [--data auto|isic2016|synthetic] [--epochs 25] [--name default] ...

Writes ``runs/<name>/``: the executed notebooks, each model's history, per-image CSV, checkpoint
and metrics, ``results.json`` (every headline number with the settings, versions, device and data
source) and ``report.html`` (all executed notebooks in one page); and every figure as PNG into
``figures/``. A failing notebook stops the run, naming the notebook and the cell; its partial
executed copy stays in ``runs/<name>/notebooks/`` for inspection.

Rerunning the same command after an interruption resumes: the notebooks that had finished are not
executed again (their executed copies are kept, checked unchanged, and their parameters and sources
the same: ``notebooks/finished.json``), finished trainings are reused and an interrupted one
continues after its last complete epoch (:mod:`helpers.checkpoint`). A finished
run (results.json) is refused unless ``--overwrite``, which first moves the old run folder aside to
``<name>.replaced-<date>-<time>`` (nothing is deleted).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

from .. import paths
from ..errors import ProjectError
from ..data import DATA_WARNINGS, check_data, find_external, resolve_source, write_data_warnings
from ..settings import M3_RECIPES, RunConfig
from ..training import environment
from ..evaluate import TTA_MODES
from ..external import parse_spec
from ..io import write_json, write_text
from ..model import WeightsWarning, load_encoder_features, weights_argument
from .notebooks import KERNEL_CONFIG, NOTEBOOKS, kernel_manager_class
from .runlock import hold_run_folder
from ..train import resolve_device

MODELS = ("model1_frozen", "model2_finetuned", "model3_unet")
FIGURES = ("fig01_intensity_histograms.png", "fig02_samples.png", "fig03_model1_loss.png",
           "fig04_model1_best.png", "fig05_model1_worst.png", "fig06_model2_loss.png",
           "fig07_model2_best.png", "fig08_model2_worst.png", "fig09_model3_loss.png", "fig10_model3_best.png",
           "fig11_model3_worst.png", "fig12_loss_comparison.png", "fig13_iou_scatter.png",
           "fig14_iou_scatter_model3.png", "fig15_generalization.png")


class NotebookFailed(ProjectError):
    """A notebook raised; the message names the notebook, the cell and the error."""


class NoSpace(ProjectError):
    """The disk of the run folder is full; the message names the folder and says how to resume."""


SETTINGS_FILE = "settings.json"  # in the run folder: the whole configuration, read by every notebook


def notebook_parameters(cfg: RunConfig) -> dict:
    """The papermill parameters for ``cfg``: SETTINGS, the run's settings.json (which :func:`reproduce`
    writes before the first notebook), and every setting under its upper-case name (RUN_DIR and
    FIGURES_DIR as absolute paths); each notebook receives those its parameters cell declares."""
    params = {f.name.upper(): getattr(cfg, f.name) for f in fields(cfg)}
    params.update(RUN_DIR=str(cfg.run_path), FIGURES_DIR=str(cfg.figure("x").parent),
                  SETTINGS=str(cfg.run_path / SETTINGS_FILE))
    return params


def run_notebook(source: Path, output: Path, parameters: dict, kernel_name: str = "python3", stream=None) -> float:
    """Execute one notebook with papermill, passing it exactly the parameters its parameters cell
    declares (each must be in ``parameters``); return its wall time. Raises NotebookFailed.

    stream: a text file that receives what the notebook prints (stdout and stderr) as it runs."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    declared = pm.inspect_notebook(str(source))
    missing = sorted(set(declared) - set(parameters))
    if missing:
        raise ProjectError(f"{source}: the parameters cell declares {', '.join(missing)}, which the headless run "
                           "does not set (helpers.tools.reproduce.notebook_parameters)")
    parameters = {k: v for k, v in parameters.items() if k in declared}
    output.parent.mkdir(parents=True, exist_ok=True)
    config = Config(KERNEL_CONFIG)
    config.NotebookClient.kernel_manager_class = kernel_manager_class()
    if stream is not None and getattr(stream, "name", None):
        stream.flush()
        config.LoggedKernelManager.output_file = str(stream.name)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                            progress_bar=False, cwd=str(source.parent), stdout_file=stream, stderr_file=stream,
                            config=config)
    except PapermillExecutionError as exc:
        if exc.ename == "KeyboardInterrupt":  # the kernel was interrupted with us: Ctrl-C, not a failure
            raise KeyboardInterrupt from None
        if exc.ename == "OSError" and exc.evalue and exc.evalue.startswith(f"[Errno {errno.ENOSPC}]"):
            raise no_space(output.parent.parent, f"{source.name}: {exc.evalue.splitlines()[0]}") from None
        raise NotebookFailed(f"{source.name} failed in cell {exc.cell_index} (In [{exc.exec_count}]): "
                             f"{exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''} - the partial "
                             f"executed notebook is {output}") from None
    except OSError as exc:  # papermill writing the executed notebook, or the output log
        raise written_failed(exc, output.parent.parent, source.name) from None
    except DeadKernelError:
        raise NotebookFailed(f"{source.name}: its kernel died (killed, or out of memory?) - the partial executed "
                             f"notebook is {output}; rerun the same command to resume") from None
    return time.perf_counter() - start


class RunLog(logging.Handler):
    """Where the log records of the libraries a run drives (papermill, nbclient, jupyter_client, asyncio)
    go: the run's output log, never the console, whose lines are the project's own. A record that
    cannot be written (a full disk) is dropped, not printed."""

    def __init__(self, path: Path):
        super().__init__(logging.WARNING)
        self.path = Path(path)
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s | %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(text + "\n")
        except Exception:  # noqa: BLE001 - a log line is not worth a traceback on the console
            pass


def no_space(run: Path, what: str) -> NoSpace:
    return NoSpace(f"{run}: no space left on the device ({what}): free some space, then rerun the same command "
                   "to resume")


def written_failed(exc: OSError, run: Path, during: str = "") -> ProjectError:
    """The one-line error for a file of the run in ``run`` that could not be written (a full disk says so)."""
    what = f"{during}: {exc}" if during else str(exc)
    if exc.errno == errno.ENOSPC:
        return no_space(run, what)
    return ProjectError(f"{run}: cannot write a file of the run ({what})")


def export_html(notebooks: list[Path], path: Path, title: str) -> Path:
    """All executed notebooks, in order, as one self-contained HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    merged = nbformat.v4.new_notebook()
    for nb_path in notebooks:
        nb = nbformat.read(nb_path, as_version=4)
        merged.cells += nb.cells
        merged.metadata = nb.metadata
    merged.metadata["title"] = title
    for i, cell in enumerate(merged.cells):
        cell.id = f"cell-{i}"
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(merged)
    return write_text(path, body)


def collect_results(cfg: RunConfig, timings: dict, decision: str) -> dict:
    """results.json: the reproduction scorecard (helpers.scorecard), every model's headline numbers (mean,
    sd and per seed, at the working and the original resolution), settings, data source, device,
    versions, comparisons and figures."""
    from ..compare import generalization_table, paired_by_seed, paired_table
    from ..scorecard import rows as scorecard_rows
    from ..training import load_result

    results = {name: load_result(cfg.run_path, name) for name in MODELS}
    external = next((r["external"]["sets"] for r in results.values() if r.get("external")), [])
    models = {name: {k: v for k, v in r["summary"].items() if k not in ("name", "data_source")}
              for name, r in results.items()}
    first = results[MODELS[1]]["runs"][0]
    return {"data_source": first["metrics"]["data_source"], "data_decision": decision,
            "scored_split": first["metrics"].get("scored_split", "test"),
            "settings": notebook_parameters(cfg), "scorecard": scorecard_rows(cfg.run_path), "models": models,
            "paired_original_jaccard": paired_table(results).reset_index().to_dict(orient="records"),
            "paired_original_jaccard_by_seed": paired_by_seed(results).reset_index().to_dict(orient="records"),
            "external_sets": external,
            "generalization_jaccard": generalization_table(results).reset_index().to_dict(orient="records"),
            "external": {name: {s: {"name": v["name"], "macro": v["macro"]} for s, v in r["external"]["results"].items()}
                         for name, r in results.items() if r.get("external")},
            "encoder_weights_used": first["metrics"]["model"]["encoder_weights_used"],
            "device": json.loads((cfg.run_path / MODELS[1] / f"seed{first['seed']}" / "history.json").read_text())[
                "settings"]["device"],
            "environment": environment(), "notebook_seconds": timings,
            "figures": [str(cfg.figure(f)) for f in FIGURES]}


FINISHED = "finished.json"  # in runs/<NAME>/notebooks/: the notebooks this run has executed to the end


def notebook_key(source: Path, parameters: dict) -> str:
    """What makes an executed notebook this run's: the source notebook's bytes and the parameters it was given."""
    text = json.dumps(parameters, sort_keys=True, default=str).encode() + source.read_bytes()
    return hashlib.sha256(text).hexdigest()


def file_digest(path: Path) -> str | None:
    """sha256 of a file, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_finished(run: Path) -> dict:
    """{notebook: {"key", "executed", "seconds"}} of the notebooks an earlier try of this run executed to the
    end; {} when there is none, or the record cannot be read (then every notebook runs again)."""
    try:
        saved = json.loads((run / "notebooks" / FINISHED).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(saved, dict) and all(isinstance(v, dict) and {"key", "executed", "seconds"} <= set(v)
                                         for v in saved.values())
    return saved if ok else {}


def output_log(run: Path) -> Path:
    """Where a headless run keeps what its notebooks printed."""
    return run / "notebooks" / "output.log"


def set_aside(run: Path, log=print) -> Path | None:
    """Move an earlier run folder to ``<name>.replaced-<date>-<time>`` beside it; return where."""
    if not run.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup, n = run.with_name(f"{run.name}.replaced-{stamp}"), 1
    while backup.exists():
        backup, n = run.with_name(f"{run.name}.replaced-{stamp}-{n}"), n + 1
    os.replace(run, backup)
    log(f"--overwrite: moved the earlier {run} to {backup} (delete it by hand when no longer needed)")
    return backup


def reproduce(cfg: RunConfig, overwrite: bool = False, html: bool = True, log=print,
              notebooks_dir: Path = paths.NOTEBOOKS) -> dict:
    """Run the notebooks for ``cfg`` and write results.json and report.html under its run folder.

    ``log`` gets the data and weights decisions and one line per notebook; what the notebooks print
    as they run (a training's per-epoch lines among it) goes to ``<run>/notebooks/output.log``.
    """
    run = cfg.run_path
    try:
        resolve_device(cfg.device)  # a missing GPU fails here, before any notebook runs
    except RuntimeError as exc:
        raise ProjectError(str(exc)) from None
    if (run / "results.json").exists() and not overwrite:
        raise ProjectError(f"{run} holds a finished run: pass --overwrite to replace it, or choose another --name")
    source, root, decision = resolve_source(cfg, log)  # downloads, or falls back to synthetic, or fails at once
    log(decision)
    found = check_data(cfg, root, log)
    find_external(cfg, log)  # every external set paired and decoded: a bad folder fails here, before training
    if cfg.encoder_weights is not None:  # "imagenet" or a path fails here, at once; "auto" warns loudly, once
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WeightsWarning)
            used = load_encoder_features(cfg.encoder_weights)[1]
        for w in caught:
            log(f"warning: {w.message}") if issubclass(w.category, WeightsWarning) else warnings.showwarning(
                w.message, w.category, w.filename, w.lineno)
        log(f"encoder weights: {used}")
    if overwrite:
        set_aside(run, log)  # its saved training must not be resumed
    elif run.exists():
        log(f"{run}: unfinished run found: finished trainings are reused, an interrupted one resumes after its "
            "last complete epoch (--overwrite starts afresh)")
    n_warnings = write_data_warnings(run, found, log)
    cfg = RunConfig(**{**cfg.__dict__, "data": source, "data_dir": str(root), "run_dir": str(run),
                       "figures_dir": str(cfg.figure("x").parent)})
    cfg.write(run / SETTINGS_FILE)  # what every notebook reads (SETTINGS)
    parameters = notebook_parameters(cfg)
    timings, executed = {}, []
    (run / "notebooks").mkdir(parents=True, exist_ok=True)
    finished, ran = read_finished(run), False
    with open(output_log(run), "a", encoding="utf-8") as stream:  # appended to: a resumed run keeps the earlier lines
        for name in NOTEBOOKS:
            source, out = Path(notebooks_dir) / name, run / "notebooks" / name
            key = notebook_key(source, parameters)
            earlier = finished.get(name)
            # a resumed run does not execute again the notebooks that finished before the interruption, as
            # long as each one before it did not run either (a later notebook reads what an earlier one saved)
            if not ran and earlier and earlier["key"] == key and earlier["executed"] and \
                    file_digest(out) == earlier["executed"]:
                timings[name] = earlier["seconds"]
                executed.append(out)
                log(f"{name}: done in an earlier run ({timings[name]:.0f} s), not run again")
                continue
            ran = True
            stream.write(f"==> {name}\n")
            timings[name] = round(run_notebook(source, out, parameters, stream=stream), 1)
            executed.append(out)
            finished[name] = {"key": key, "executed": file_digest(out), "seconds": timings[name]}
            write_json(run / "notebooks" / FINISHED, finished)
            log(f"{name}: done in {timings[name]:.0f} s")
    results = collect_results(cfg, timings, decision)
    results["data_warnings"] = n_warnings
    if html:
        export_html(executed, run / "report.html", f"ISIC 2016 segmentation reproduction - {run.name}")
    write_json(run / "results.json", results)
    return results


def build_parser() -> argparse.ArgumentParser:
    d = RunConfig()
    p = argparse.ArgumentParser(prog="python -m helpers.tools.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=d.data, choices=("auto", "isic2016", "synthetic"),
                   help="auto: ISIC 2016 when present, else synthetic; isic2016 fails if absent")
    p.add_argument("--data-dir", default=None, help="data folder (default data/isic2016 or data/synthetic)")
    p.add_argument("--synthetic-train", type=int, default=d.synthetic_train)
    p.add_argument("--synthetic-test", type=int, default=d.synthetic_test)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--seeds", type=int, default=d.seeds, help="train every model for this many seeds")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training images held out for validation (default: 0.2 when the data folder "
                        "has no test split, else 0: the report's protocol)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the held-out validation ids")
    p.add_argument("--isic-url", default=d.isic_url, help="where to download ISIC 2016 from when it is absent")
    p.add_argument("--m3-recipe", choices=tuple(M3_RECIPES), default=d.m3_recipe,
                   help="Model 3's named recipe: default, or strong (twice the epochs, the encoder's BatchNorm "
                        "statistics frozen, deep supervision, half the learning rate: the best measured on a "
                        "validation split of real ISIC 2016 training images, for about twice the training time); "
                        "docs/models.md has their tables")
    p.add_argument("--m3-epochs", type=int, default=None,
                   help="Model 3's epochs (default: --epochs, twice that with --m3-recipe strong)")
    p.add_argument("--external", default=None, metavar="DIR[,NAME=DIR...]",
                   help="external test sets, scored by every trained model at the original size (never trained on)")
    p.add_argument("--m3-ensemble", action="store_true",
                   help="also score Model 3's seeds (--seeds 2 or more) as one ensemble, the mean of their probabilities")
    p.add_argument("--tta", nargs="?", const="flips", default=False, choices=TTA_MODES,
                   help="also score with test-time augmentation, reported separately: --tta (or --tta flips) the image "
                        "and its two flips, --tta dihedral its 8 rotations and flips")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--encoder-weights", default="auto",
                   help="auto (ImageNet if obtainable, else random, said loudly), imagenet (strict), none, or a .pth path")
    p.add_argument("--name", default="default", help="run name: outputs go to RUNS_DIR/NAME")
    p.add_argument("--runs-dir", default=str(paths.RUNS))
    p.add_argument("--figures-dir", default=str(paths.FIGURES))
    p.add_argument("--cache-dir", default=str(paths.CACHE))
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh: move runs/NAME aside to NAME.replaced-<date>-<time>, then run")
    p.add_argument("--no-html", action="store_true", help="skip the HTML report")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="refuse image files of more pixels than this (a guard against decompression bombs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    weights = weights_argument(args.encoder_weights)  # a file is made absolute: the notebooks run in notebooks/
    data_dir = None if args.data_dir is None else str(Path(args.data_dir).expanduser().resolve())
    try:  # external folders, like the data folder, are relative to where the command runs
        external = ",".join(f"{name}={folder.resolve()}" if name else str(folder.resolve())
                            for name, folder in parse_spec(args.external)) or None
    except ProjectError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    cfg = RunConfig(data=args.data, data_dir=data_dir, synthetic_train=args.synthetic_train,
                    synthetic_test=args.synthetic_test, image_size=args.image_size, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, seeds=args.seeds, device=args.device,
                    tta=args.tta, val_fraction=args.val_fraction, split_seed=args.split_seed, isic_url=args.isic_url,
                    m3_epochs=args.m3_epochs, m3_recipe=args.m3_recipe, m3_ensemble=args.m3_ensemble,
                    encoder_weights=weights, run_dir=str(Path(args.runs_dir) / args.name),
                    figures_dir=args.figures_dir, cache_dir=args.cache_dir, progress=False, max_pixels=args.max_pixels,
                    external=external)
    start = time.perf_counter()
    root_logger = logging.getLogger()
    for handler in [h for h in root_logger.handlers if isinstance(h, RunLog)]:  # an earlier run's, in this process
        root_logger.removeHandler(handler)
    root_logger.addHandler(RunLog(output_log(cfg.run_path)))  # kept to the end: asyncio logs at exit too
    logging.raiseExceptions = False
    try:
        with hold_run_folder(cfg.run_path):  # a second run on this folder stops here, naming the first
            results = reproduce(cfg, overwrite=args.overwrite, html=not args.no_html)
    except (ProjectError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 1
    except OSError as exc:  # a file of the run that could not be written: a full disk, a read-only folder
        print("error: " + " ".join(str(written_failed(exc, cfg.run_path)).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume {cfg.run_path} (finished trainings are reused, an "
              "interrupted one resumes after its last complete epoch)", file=sys.stderr)
        return 130
    print("wall time per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in results["notebook_seconds"].items()))
    scores = ", ".join(f"model {i} Dice {results['models'][m]['macro']['dice']['mean']:.3f} Jaccard(orig.) "
                       f"{results['models'][m]['original']['jaccard']['mean']:.3f}" for i, m in enumerate(MODELS, 1))
    print(f"reproduce: {results['data_source']}, weights {results['encoder_weights_used']}, "
          f"{cfg.seeds} seed(s): {scores}; results in {cfg.run_path} (the notebooks' output in "
          f"{output_log(cfg.run_path).relative_to(cfg.run_path)}) in {time.perf_counter() - start:.0f} s")
    for slug, first in next(iter(results["external"].values()), {}).items():
        scores = ", ".join(f"model {i} Jaccard {results['external'][m][slug]['macro']['jaccard']['mean']:.3f}"
                           for i, m in enumerate(MODELS, 1) if m in results["external"])
        print(f"reproduce: external test set {first['name']} (original size): {scores}")
    if results.get("data_warnings"):
        print(f"reproduce: {results['data_warnings']} data warning(s); the ids are in {cfg.run_path / DATA_WARNINGS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
