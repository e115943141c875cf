import io
import re
from pathlib import Path

from tqdm import tqdm

from helpers.tools import data
from helpers.progress import plural, progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def ticking(step):
    """A clock that advances ``step`` seconds each time it is read."""
    now = [0.0]

    def clock():
        now[0] += step
        return now[0]
    return clock


def test_piped_output_is_a_few_plain_lines_for_long_work():
    stream = io.StringIO()
    items = list(progress_bar(range(100_000), desc="check train", unit="img", stream=stream,
                              clock=ticking(0.01), interval=5))
    assert items == list(range(100_000))
    out = stream.getvalue()
    lines = out.splitlines()
    assert "\r" not in out and len(lines) <= 11, out
    assert lines[0] == "check train: started, 100000 img"
    assert re.fullmatch(r"check train: 10000/100000 img \(10%\), \d+ s", lines[1]), lines[1]
    assert re.fullmatch(r"check train: done, 100000 img in \d+\.\d s", lines[-1]), lines[-1]


def test_quick_work_gives_only_a_start_and_a_summary_line():
    stream = io.StringIO()
    for _ in progress_bar(range(1000), desc="decode", stream=stream, clock=ticking(0.001), interval=10):
        pass
    assert stream.getvalue().splitlines() == ["decode: started, 1000 it", "decode: done, 1000 it in 1.0 s"]


def test_without_a_total_a_line_comes_every_interval():
    stream = io.StringIO()
    with progress_bar(desc="zip", unit="B", unit_scale=True, stream=stream, clock=ticking(1), interval=30) as bar:
        for _ in range(100):
            bar.update(1 << 20)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "zip: started" and lines[1] == "zip: 30.0MB, 30 s" and len(lines) == 5
    assert lines[-1].startswith("zip: done, 100MB in ")


def test_a_resumed_download_says_what_was_there_before():
    stream = io.StringIO()
    with progress_bar(total=5 << 20, initial=1 << 20, desc="zip", unit="B", unit_scale=True, stream=stream,
                      clock=ticking(0)) as bar:
        bar.update(4 << 20)
    assert stream.getvalue().splitlines() == ["zip: started, 5.00MB (1.00MB done before)", "zip: done, 5.00MB in 0.0 s"]


def test_work_stopped_early_says_so():
    stream = io.StringIO()
    with progress_bar(total=10, desc="synthetic", unit="img", stream=stream, clock=ticking(0)) as bar:
        bar.update(3)
    assert stream.getvalue().splitlines()[-1] == "synthetic: stopped at 3/10 img after 0.0 s"


def test_a_terminal_gets_a_tqdm_bar():
    stream = FakeTerminal()
    bar = progress_bar(range(50), desc="evaluate test", stream=stream, leave=True)
    assert isinstance(bar, tqdm)
    for _ in bar:
        pass
    assert "\r" in stream.getvalue() and "evaluate test" in stream.getvalue() and "50/50" in stream.getvalue()


def test_disabled_progress_prints_nothing():
    for stream in (io.StringIO(), FakeTerminal()):
        assert list(progress_bar(range(5), desc="x", enabled=False, stream=stream)) == list(range(5))
        with progress_bar(total=5, desc="x", enabled=False, stream=stream) as bar:
            bar.update(5)
        assert stream.getvalue() == ""


def test_check_command_piped_writes_plain_progress_lines(tiny_isic, capsys):
    assert data.main(["check", str(tiny_isic)]) == 0  # capsys: stderr is not a terminal, as in a pipe
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert captured.err.splitlines()[0] == "check train: started, 6 img"
    assert any(line.startswith("check test: done, 4 img in ") for line in captured.err.splitlines())
    assert "no problems found" in captured.out


def test_helpers_shows_progress_only_through_progress_bar():
    package = Path(__file__).resolve().parent.parent / "helpers"
    users = sorted(p.name for p in package.rglob("*.py") if re.search(r"^\s*(from|import) tqdm", p.read_text(), re.M))
    assert users == ["progress.py"]


def test_counts_read_as_a_person_writes_them():
    assert [plural(n, "epoch") for n in (0, 1, 2, 25)] == ["0 epochs", "1 epoch", "2 epochs", "25 epochs"]
