"""One run at a time in a run folder: a lock file beside it, which the kernel releases when its holder dies.

    with hold_run_folder(Path("runs/default")):   # RunFolderBusy at once if another process holds it
        ...

The lock is ``runs/<name>.lock``, beside the folder rather than in it, because ``--overwrite`` moves
the folder aside. It is an ``fcntl.flock`` lock on that file, held for as long as the block runs:
the kernel drops it when the process ends in any way, so a killed run leaves no lock behind, only
perhaps the file, which the next run takes over. The file holds the holder's pid and start time,
for the message the next run gives; it is removed when the block ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from ..errors import ProjectError


class RunFolderBusy(ProjectError):
    """Another process holds the run folder; the message names the folder and that process."""


def lock_path(run: str | os.PathLike) -> Path:
    run = Path(run)
    return run.with_name(f"{run.name}.lock")


def _holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    return f"pid {text[0]}, started {' '.join(text[1:])}" if text else "pid unknown: it is just starting"


@contextlib.contextmanager
def hold_run_folder(run: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of the run folder ``run`` while the block runs; yield the lock file's path."""
    run, path = Path(run), lock_path(run)
    made_parent = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"{run} is in use by another run ({holder}); wait for it to finish or choose "
                                "another NAME") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # else the holder removed the file between our open and our lock: open it afresh
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the lock is released, so no one locks a file about to go
        os.close(fd)
        if made_parent:  # leave no empty runs/ behind a run that stopped before writing anything
            with contextlib.suppress(OSError):
                path.parent.rmdir()
