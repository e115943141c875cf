"""JupyterLab on working copies of the notebooks, so a session never changes the committed ones.

    python -m helpers.tools.lab [JUPYTER LAB OPTIONS]      (what `make lab` runs)

The committed notebooks in ``notebooks/`` are what papermill runs and nbval checks: they carry no
outputs but those of the nbval-checked cells. JupyterLab saves every output into the file it has
open, so it opens copies instead: ``lab/`` (ignored by git) gets a copy of each notebook that it
lacks, without outputs, and JupyterLab starts there. A copy you have worked in is never replaced;
when its source has changed since it was copied, one line says so (delete the copy to get the new one).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nbformat

from .. import paths
from ..io import write_text
from .notebooks import KERNEL_CONFIG, NOTEBOOKS

SOURCE_KEY = "copied_from"  # notebook metadata: the source notebook and its SHA-256 when copied


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def working_copies(source: Path = paths.NOTEBOOKS, work: Path = paths.LAB, log=print) -> list[Path]:
    """Copy each notebook of ``source`` that ``work`` lacks, outputs cleared; say which kept copies
    are older than their source. Returns the copies in numbered order."""
    copies = []
    for name in NOTEBOOKS:
        src, copy = source / name, work / name
        digest = _digest(src)
        if not copy.exists():
            nb = nbformat.read(src, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
            nb.metadata[SOURCE_KEY] = {"path": f"notebooks/{name}", "sha256": digest}
            write_text(copy, nbformat.writes(nb))
            log(f"{copy}: copied from notebooks/{name}")
        else:
            try:
                copied = nbformat.read(copy, as_version=4).metadata.get(SOURCE_KEY, {}).get("sha256")
            except Exception:  # a copy JupyterLab cannot open either; the user sees it there
                copied = None
            if copied != digest:
                log(f"{copy}: your working copy is kept, but notebooks/{name} has changed since it was copied; "
                    f"delete {copy} to get the new one")
        copies.append(copy)
    return copies


def lab_command(args: list[str], work: Path = paths.LAB) -> list[str]:
    """The jupyter lab command line: the working copies' folder, encrypted kernel channels, ``args``."""
    jupyter = Path(sys.executable).with_name("jupyter")
    encryption = [f"--KernelManager.{k}={v}" for k, v in KERNEL_CONFIG["KernelManager"].items()]
    return [str(jupyter), "lab", f"--notebook-dir={work}", *encryption, *args]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.tools.lab", description=__doc__.split("\n\n")[0],
                                     epilog="Every other option goes to jupyter lab.")
    parser.add_argument("--work-dir", default=str(paths.LAB), help="the working copies' folder (default lab/)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    work = Path(args.work_dir).expanduser().resolve()
    working_copies(work=work)
    command = lab_command(rest, work)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
