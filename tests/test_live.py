"""Live progress in a real Jupyter kernel: a widget bar and a loss curve redrawn in place for a
frontend a person watches (one that takes input), plain lines and no extra output for a headless one."""

import pytest
from jupyter_client import KernelManager

from helpers.tools.reproduce import KERNEL_CONFIG

WIDGET = "application/vnd.jupyter.widget-view+json"
CODE = """
%matplotlib inline
from helpers import plots
from helpers.progress import live_notebook, progress_bar
print("live:", live_notebook())
bar = progress_bar(total=3, desc="Model 2, seed 0", unit="epoch", leave=True, plain=False)
for epoch in range(3):
    bar.set_postfix({"train loss": "0.5"})
    bar.update()
bar.close()
for _ in progress_bar(range(4), desc="decode"):
    pass
redraw = plots.live_loss_curve("Model 2, seed 0", "a note", "Model 2: loss (live)")
print("curve:", redraw is not None)
for n in (1, 2, 3):
    redraw and redraw([{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e} for e in range(1, n + 1)])
"""


@pytest.fixture(scope="module")
def kernel():
    km = KernelManager(kernel_name="python3", transport_encryption=KERNEL_CONFIG["KernelManager"]["transport_encryption"])
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _run(kc, allow_stdin: bool) -> list[dict]:
    messages = []
    reply = kc.execute_interactive(CODE, allow_stdin=allow_stdin, timeout=120, output_hook=messages.append,
                                   stdin_hook=lambda msg: pytest.fail("the code asked for input"))
    assert reply["content"]["status"] == "ok", reply["content"]
    return [{"type": m["msg_type"], **m["content"]} for m in messages]


def _text(messages, name):
    return "".join(m["text"] for m in messages if m["type"] == "stream" and m["name"] == name)


@pytest.mark.slow
def test_a_frontend_a_person_watches_gets_a_widget_bar_and_a_curve_redrawn_in_place(kernel):
    messages = _run(kernel, allow_stdin=True)
    out = _text(messages, "stdout")
    assert "live: True" in out and "curve: True" in out
    widgets = [m for m in messages if m["type"] == "display_data" and WIDGET in m["data"]]
    assert len(widgets) == 2  # the epoch bar and the decode bar
    assert "decode: started" not in _text(messages, "stderr")  # no plain lines beside the widgets
    shown = [m for m in messages if m["type"] == "display_data" and "image/png" in m["data"]]
    updates = [m for m in messages if m["type"] == "update_display_data"]
    assert len(shown) == 1 and len(updates) == 2  # drawn once, then redrawn in place after each epoch
    display_id = shown[0]["transient"]["display_id"]
    assert all(u["transient"]["display_id"] == display_id and "image/png" in u["data"] for u in updates)
    assert shown[0]["data"]["text/plain"] == "[figure: Model 2: loss (live)]"


def test_a_headless_frontend_gets_plain_lines_and_no_extra_output(kernel):
    messages = _run(kernel, allow_stdin=False)  # as papermill, nbconvert and nbval ask
    out, err = _text(messages, "stdout"), _text(messages, "stderr")
    assert "live: False" in out and "curve: False" in out
    assert not [m for m in messages if m["type"] in ("display_data", "update_display_data")]
    assert err.splitlines() == ["decode: started, 4 it", err.splitlines()[-1]] and "decode: done, 4 it in" in err
    assert "\r" not in err and "Model 2, seed 0" not in err  # the epoch bar is silent where it cannot be live
