"""Atomic file output: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the final file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise no_space(path) from None
        raise
    except Exception as exc:  # torch.save says a full disk as RuntimeError("... file write failed")
        if disk_full(path.parent):
            raise no_space(path) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of ``folder`` has less than ``margin`` bytes left for this user."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < margin


def no_space(path: Path) -> OSError:
    """The OSError of a full disk, naming the file that could not be written."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Rows of equal keys as CSV (header from the first row); floats keep full precision."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike, text_columns: tuple[str, ...] = ("id",)) -> list[dict]:
    """CSV written by :func:`write_csv`; every column but ``text_columns`` as float."""
    with open(path, newline="") as f:
        return [{k: (v if k in text_columns else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
