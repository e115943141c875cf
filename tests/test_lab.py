"""A real JupyterLab server on 127.0.0.1, as `make lab` starts it, checked through its REST API."""

import subprocess
import sys
import urllib.request

import pytest

from helpers import paths
from helpers.tools import reproduce

from conftest import lab_api, running_lab


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path / "lab", tmp_path / "jupyter") as (base, token):
        yield base, token, tmp_path / "jupyter" / "runtime"


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks_and_a_project_kernel(lab):
    base, token, runtime = lab
    status, contents = lab_api(base, token, "/api/contents")
    names = {item["name"] for item in contents["content"]}
    assert set(reproduce.NOTEBOOKS) <= names
    status, specs = lab_api(base, token, "/api/kernelspecs")
    assert "python3" in specs["kernelspecs"]
    with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10) as page:
        assert page.status == 200

    # start the notebooks' kernel and ask it, over its own channels, which Python it runs
    status, kernel = lab_api(base, token, "/api/kernels", method="POST")
    assert status == 201
    from jupyter_client import BlockingKernelClient

    outputs = []
    client = BlockingKernelClient(connection_file=str(runtime / f"kernel-{kernel['id']}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive(
            "import sys, helpers.training; print(sys.prefix)", timeout=60,
            output_hook=lambda msg: outputs.append(msg["content"]["text"])
            if msg["content"].get("name") == "stdout" else None)
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok"
    assert "".join(outputs).strip() == sys.prefix  # the project's environment, where helpers is installed
    assert lab_api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")[0] == 204



def test_lab_works_on_copies_without_outputs_and_keeps_a_copy_you_worked_in(tmp_path):
    import nbformat

    from helpers.tools.lab import working_copies

    source, work, said = tmp_path / "notebooks", tmp_path / "lab", []
    source.mkdir()
    for name in reproduce.NOTEBOOKS:
        (source / name).write_bytes((paths.NOTEBOOKS / name).read_bytes())
    copies = working_copies(source, work, log=said.append)
    assert [c.name for c in copies] == list(reproduce.NOTEBOOKS) and len(said) == 5
    for copy in copies:
        nb = nbformat.read(copy, as_version=4)
        assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
        assert nb.cells[1].source == nbformat.read(source / copy.name, as_version=4).cells[1].source

    # a copy you have worked in stays; a changed source is said, never written over your copy
    worked = nbformat.read(copies[1], as_version=4)
    worked.cells[1].source = "EPOCHS = 1  # mine"
    nbformat.write(worked, copies[1])
    nb = nbformat.read(source / copies[1].name, as_version=4)
    nb.cells[0].source += "\n\nA new paragraph."
    nbformat.write(nb, source / copies[1].name)
    said.clear()
    working_copies(source, work, log=said.append)
    assert said == [f"{copies[1]}: your working copy is kept, but notebooks/{copies[1].name} has changed since it "
                    f"was copied; delete {copies[1]} to get the new one"]
    assert nbformat.read(copies[1], as_version=4).cells[1].source == "EPOCHS = 1  # mine"
    copies[1].unlink()
    working_copies(source, work, log=said.append)
    assert "A new paragraph." in nbformat.read(copies[1], as_version=4).cells[0].source


def test_what_a_lab_session_writes_is_ignored_by_git():
    """A notebook run in `make lab` writes its copy, runs/interactive, figures and the cache: git ignores them all."""
    written = ["lab/02_model1_frozen_encoder.ipynb", "lab/.ipynb_checkpoints/02_model1_frozen_encoder-checkpoint.ipynb",
               "runs/interactive/model1_frozen/seed0/checkpoint.pt", "figures/fig03_model1_loss.png",
               "data/cache/train-128.pt", "data/synthetic/synthetic.json"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=paths.ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == written
    proc = subprocess.run(["git", "check-ignore", "--no-index", "notebooks/02_model1_frozen_encoder.ipynb"],
                          cwd=paths.ROOT, capture_output=True, text=True)
    assert proc.returncode == 1  # the committed notebooks are not ignored: nbval checks them

