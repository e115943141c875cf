"""The notebooks as a person meets them: a real Chromium, driven by Playwright, against JupyterLab
started the way `make lab` starts it, and against the executed notebooks and report.html of a headless run.

Needs Debian's `chromium` (`.ci/run` installs it); without it the test is skipped in one line.
`make screenshots` reruns it and writes the two screenshots that docs/notebooks.md shows.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from helpers.tools import reproduce

from conftest import lab_api, running_lab
from nbtiny import NOTEBOOKS, ROOT, figure_names, tiny_parameters, tiny_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: install Debian's chromium package "
                                                         "(apt-get install chromium) to run the browser test")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
FIGURES = {p.name: len(figure_names(p)) for p in NOTEBOOKS}  # the figures each notebook saves
TRAIN_CALL = re.compile(r"train_seeds\(|train_and_evaluate\(")  # the cell that trains
TRAINING = {p.name for p in NOTEBOOKS if TRAIN_CALL.search(p.read_text())}  # the notebooks that train a model
NB = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show (others opened before stay in hidden tabs)
SHOTS = {"03_model2_finetuned.ipynb": "lab_model2_training.png", "05_comparison.ipynb": "lab_comparison.png"}


def _api(base, token, path):
    return lab_api(base, token, path)[1]


def _edited(cell_source: str, values: dict) -> str:
    """The parameters cell with the values of ``values`` written over its own."""
    lines = []
    for line in cell_source.splitlines():
        name = line.split("=")[0].strip()
        lines.append(f"{name} = {values[name]!r}  # the browser test's tiny setting" if name in values else line)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def work(headless_run):
    """The lab's working folder: the folder of the headless run, so the lab can open its notebooks."""
    return headless_run.root


@pytest.fixture(scope="module")
def lab(work):
    """JupyterLab as `make lab` starts it, on ``work``, with no news prompt over the page."""
    settings = work / "jupyter" / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    with running_lab(work, work / "jupyter", {"JUPYTER_DATA_DIR": str(work / "jupyter" / "data")}) as lab:
        yield lab


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _rendered_images(page, scope: str, expected: int = 0) -> list[tuple[int, int]]:
    """(naturalWidth, naturalHeight) of every image under ``scope``, once each has loaded. JupyterLab renders
    a long notebook's outputs a while after it opens: wait up to 30 s for ``expected`` images to be there
    (fewer are returned as they are, for the caller's assertion to name)."""
    if expected:
        try:
            page.wait_for_function(f"document.querySelectorAll({scope!r}).length >= {expected}", timeout=30_000)
        except Exception:  # playwright's TimeoutError: the count is checked by the caller
            pass
    page.wait_for_function(f"[...document.querySelectorAll({scope!r})].every(i => i.complete)")
    return page.eval_on_selector_all(scope, "els => els.map(i => [i.naturalWidth, i.naturalHeight])")


def _wait_for_run(page, timeout: float, shot: str, watch=None) -> None:
    """Until the notebook's kernel has been busy and is idle again with no cell waiting to run;
    ``watch(page)`` is called every few tenths of a second meanwhile; a screenshot at ``shot`` if not."""
    indicator = f"{NB} .jp-Notebook-ExecutionIndicator"
    deadline, busy_seen = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        if watch:
            watch(page)
        status = page.get_attribute(indicator, "data-status")
        prompts = page.eval_on_selector_all(f"{NB} .jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent)")
        waiting = any("*" in p for p in prompts)
        busy_seen |= status == "busy" or waiting
        if busy_seen and status == "idle" and not waiting:
            return
        page.wait_for_timeout(250)
    page.screenshot(path=shot)
    raise AssertionError(f"the notebook still runs after {timeout} s: see {shot}")


def _open_notebook(page, base, token, path):
    """Open ``path``: the first by its URL, the others from the file browser, as a person would."""
    if "/lab" not in page.url:
        page.goto(f"{base}/lab/tree/{path}?token={token}")
    else:
        folder, _, name = path.rpartition("/")
        page.goto(f"{base}/lab/tree/{folder}?token={token}") if folder else None
        page.dblclick(f'.jp-DirListing-item[title^="Name: {name}"]')
    page.wait_for_selector(f"{NB} .jp-Notebook .jp-Cell", timeout=60_000)
    try:  # JupyterLab may ask which kernel to start; take the one it proposes (the notebook's python3)
        page.click('.jp-Dialog button:has-text("Select")', timeout=3_000)
    except Exception:
        pass
    page.wait_for_selector(f'{NB} .jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)


def _menu(page, top: str, item: str) -> None:
    page.click(f'.lm-MenuBar-itemLabel:text-is("{top}")')
    page.click(f'.lm-Menu-itemLabel:text-is("{item}")')


def test_notebooks_in_jupyterlab_show_figures_tables_and_live_training(lab, browser, work, headless_run):
    headless_run = headless_run.run
    base, token = lab
    shots_dir = Path(os.environ.get("SCREENSHOTS_DIR") or work / "screenshots")
    shots_dir.mkdir(parents=True, exist_ok=True)
    tiny = tiny_parameters(work / "interactive")
    tiny["SETTINGS"] = str(tiny_settings(work / "interactive", progress=True))  # the rest of the tiny setting
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # run live: a training notebook (its progress bar and loss curve redrawn as it trains); the others are
    # opened below as the headless run executed them
    live_values = {"03_model2_finetuned.ipynb": {**tiny, "EPOCHS": 4}}  # time to see it train
    for name, values in live_values.items():
        _open_notebook(page, base, token, name)
        # edit the parameters cell as a person would: select its text and paste the new settings
        editor = page.locator(f"{NB} .jp-Notebook .jp-Cell").nth(1).locator(".cm-content")
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.insert_text(_edited(nbformat.read(ROOT / "notebooks" / name, as_version=4).cells[1].source,
                                          values))
        page.keyboard.press("Escape")
        seen = {"widget": False, "live_curve": False}

        def watch(p, name=name, seen=seen):
            if name not in TRAINING:
                return
            training_cell = p.locator(f"{NB} .jp-CodeCell", has_text=TRAIN_CALL)
            if training_cell.locator(".widget-progress, .widget-hprogress").count():
                seen["widget"] = True
            if training_cell.locator(".jp-OutputArea-output img").count():
                seen["live_curve"] = True
                # the docs' screenshot: halfway through the training, its curve and bar live
                if name in SHOTS and not seen.get("shot") and "2/4 [" in training_cell.inner_text():
                    training_cell.scroll_into_view_if_needed()
                    p.screenshot(path=str(shots_dir / SHOTS[name]))
                    seen["shot"] = True

        _menu(page, "Run", "Run All Cells")
        _wait_for_run(page, timeout=240, shot=str(work / f"timeout-{name}.png"), watch=watch)
        if name in SHOTS and name in TRAINING and not seen.get("shot"):  # training too quick to catch halfway
            page.locator(f"{NB} .jp-CodeCell", has_text=TRAIN_CALL).scroll_into_view_if_needed()
            page.screenshot(path=str(shots_dir / SHOTS[name]))
        page.keyboard.press("Control+s")
        page.wait_for_timeout(1000)

        saved = _api(base, token, f"/api/contents/{name}")["content"]
        outputs = [o for c in saved["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
        errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
        assert not errors, f"{name}: {errors}"
        assert all(c["execution_count"] for c in saved["cells"] if c["cell_type"] == "code"), \
            f"{name}: cells not run: {[c['execution_count'] for c in saved['cells'] if c['cell_type'] == 'code']}"
        live = 1 if name in TRAINING else 0  # the loss curve redrawn in place while training
        images = _rendered_images(page, f"{NB} .jp-OutputArea-output img", FIGURES[name] + live)
        assert len(images) == FIGURES[name] + live, f"{name}: {len(images)} images"
        assert all(w > 0 and h > 0 for w, h in images), f"{name}: an image of zero size: {images}"
        assert "<Figure size" not in page.inner_text(f"{NB} .jp-Notebook")
        if name in TRAINING:
            assert seen["widget"], f"{name}: no progress widget appeared while the model trained"
            assert seen["live_curve"], f"{name}: no live loss curve appeared while the model trained"
    # the executed notebooks of the headless run (its run folder is inside the lab's folder), in the same JupyterLab
    for name in reproduce.NOTEBOOKS:
        if name in live_values:
            continue
        executed = headless_run / "notebooks" / name
        _open_notebook(page, base, token, executed.relative_to(work).as_posix())
        images = _rendered_images(page, f"{NB} .jp-OutputArea-output img", FIGURES[name])
        assert len(images) == FIGURES[name] and all(w > 0 and h > 0 for w, h in images), (name, images)
        assert not page.locator(f"{NB} .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']",
                                has_text="Traceback").count(), name
        if name == "05_comparison.ipynb":
            tables = page.eval_on_selector_all(f"{NB} .jp-RenderedHTMLCommon table",
                                               "ts => ts.map(t => t.querySelectorAll('tbody tr').length)")
            assert len(tables) >= 4 and all(rows > 0 for rows in tables), tables
            page.locator(f"{NB} .jp-MarkdownCell", has_text="Test metrics at the working resolution") \
                .scroll_into_view_if_needed()
            page.wait_for_timeout(1500)  # JupyterLab draws the cells that scroll into view
            page.screenshot(path=str(shots_dir / SHOTS[name]))

    for shot in SHOTS.values():
        with Image.open(shots_dir / shot) as img:
            assert img.width >= 1000 and img.height >= 600
    if os.environ.get("SCREENSHOTS_DIR"):
        _shrink(shots_dir)

    # report.html stands alone: opened from disk, its 15 figures render
    page.goto((headless_run / "report.html").as_uri())
    images = _rendered_images(page, "img")
    assert len(images) == len(reproduce.FIGURES) and all(w > 0 and h > 0 for w, h in images), images
    assert "without encryption" not in (work / "jupyter" / "lab.log").read_text()  # the lab's kernels too


def _shrink(folder: Path) -> None:
    """Make the docs' screenshots small: 1000 px wide, 256 colours."""
    for shot in SHOTS.values():
        with Image.open(folder / shot) as img:
            small = img.convert("RGB").resize((1000, round(img.height * 1000 / img.width)), Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(folder / shot, optimize=True)
