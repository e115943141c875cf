"""Progress output that fits where it goes: a live bar where someone watches, a few plain lines elsewhere.

    for item in progress_bar(items, desc="check train", enabled=show):   # wrap an iterable
        ...
    with progress_bar(total=n_bytes, desc="archive", unit="B", unit_scale=True) as bar:
        bar.update(len(block))                                       # or count by hand

On a terminal (``stream.isatty()``) this is a tqdm bar written to ``stream``. In a notebook that a
person runs in JupyterLab, Notebook or VS Code (:func:`live_notebook`) it is tqdm's widget bar.
Anywhere else (a pipe, a log file, a notebook run headless by papermill, nbconvert or nbval) it
writes plain lines, never a carriage return: one when the work
starts, one each time another 10% of ``total`` is done but no sooner than ``interval`` seconds after
the previous line (so quick work gives no line between the first and the last, and long work at
most nine; with no ``total``, one every ``interval`` seconds), and one summary line at the end.
``enabled=False`` writes nothing; ``plain=False`` writes nothing where no live bar can be drawn
(for a bar whose plain lines would repeat what the caller already logs).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, TextIO

from tqdm import tqdm

INTERVAL = 10.0  # seconds, at least, between two plain progress lines
STEP = 0.1  # fraction of the total done between two plain progress lines


def plural(n: int, noun: str) -> str:
    """"1 epoch", "2 epochs": a count and its noun, for lines a person reads."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, unit_scale: bool = False, initial: int = 0, leave: bool = False,
             stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
             interval: float = INTERVAL, plain: bool = True):
    """A progress reporter over ``iterable`` (or counted by ``update(n)``), used as tqdm is
    (``set_postfix`` included: a live bar shows it, plain lines do not).

    ``total`` defaults to ``len(iterable)``; ``unit_scale`` shows counts as 1.2 MB (divisor 1024);
    ``stream`` defaults to sys.stderr; ``clock`` (seconds) and ``interval`` pace the plain lines;
    ``leave`` keeps the finished bar on a terminal or in the notebook; ``plain=False``: silent
    unless a live bar can be drawn.
    """
    stream = sys.stderr if stream is None else stream
    kwargs = dict(total=total, desc=desc, unit=unit, unit_scale=unit_scale, initial=initial)
    if enabled and _isatty(stream):
        return tqdm(iterable, unit_divisor=1024, leave=leave, file=stream, **kwargs)
    if enabled and stream in (sys.stderr, sys.stdout) and live_notebook():
        from tqdm.notebook import tqdm as widget_bar

        return widget_bar(iterable, unit_divisor=1024, leave=leave, **kwargs)
    return PlainProgress(iterable, enabled=enabled and plain, stream=stream, clock=clock, interval=interval, **kwargs)


def live_notebook() -> bool:
    """True when this code runs in a Jupyter kernel for a frontend where a person watches it, so a
    widget renders and can be redrawn in place.

    That is an IPython kernel (the test tqdm.auto makes), with ipywidgets installed, whose current
    execute request says its frontend can answer an input prompt (the messaging protocol's
    ``allow_stdin``): JupyterLab, Notebook and VS Code say so; papermill, nbconvert and nbval, which
    run notebooks headless and save what they print, do not.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or "IPKernelApp" not in shell.config:
        return False
    try:
        request = shell.kernel.get_parent()
        import ipywidgets  # noqa: F401  (tqdm's widget bar needs it)
    except (AttributeError, ImportError):
        return False
    return bool((request or {}).get("content", {}).get("allow_stdin", False))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """Plain-line progress (see the module docstring); ``enabled=False`` makes it silent."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it", enabled=True, unit_scale=False,
                 initial=0, stream=None, clock=time.monotonic, interval=INTERVAL):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.last_n = iterable, total, initial, initial
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.enabled, self.stream, self.clock, self.interval = enabled, stream, clock, interval
        self.closed = False
        self.start = self.last_time = clock()
        before = f" ({self._amount(initial)} done before)" if initial else ""
        self._write("started" if total is None else f"started, {self._amount(total)}{before}")

    def _count(self, n) -> str:
        return tqdm.format_sizeof(n, divisor=1024) if self.unit_scale else str(n)

    def _amount(self, n) -> str:
        return tqdm.format_sizeof(n, self.unit, 1024) if self.unit_scale else f"{n} {self.unit}"

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"{self.desc}: {text}\n" if self.desc else f"{text}\n")
            self.stream.flush()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; write a line when the pace above says so."""
        self.n += n
        now = self.clock()
        if now - self.last_time < self.interval:
            return
        if self.total is None:
            line = self._amount(self.n)
        elif self.n - self.last_n >= STEP * self.total and self.n < self.total:
            line = f"{self._count(self.n)}/{self._amount(self.total)} ({self.n / self.total:.0%})"
        else:
            return
        self._write(f"{line}, {now - self.start:.0f} s")
        self.last_time, self.last_n = now, self.n

    def set_postfix(self, *args, **kwargs) -> None:
        """Accepted for tqdm's sake; plain lines carry no postfix."""

    def close(self) -> None:
        """Write the summary line (once)."""
        if self.closed:
            return
        self.closed = True
        seconds = self.clock() - self.start
        if self.total is None or self.n >= self.total:
            self._write(f"done, {self._amount(self.n)} in {seconds:.1f} s")
        else:
            self._write(f"stopped at {self._count(self.n)}/{self._amount(self.total)} after {seconds:.1f} s")

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
