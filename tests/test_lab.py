"""A real JupyterLab server on 127.0.0.1, as `make lab` starts it, checked through its REST API."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import paths, reproduce


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base, token, path, method="GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        return r.status, (json.loads(body) if body else None)


@pytest.fixture
def lab(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    jupyter = Path(sys.executable).with_name("jupyter")
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--notebook-dir={paths.NOTEBOOKS}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail("JupyterLab did not start: " + proc.stderr.read()[-2000:])
                time.sleep(0.5)
        yield base, token, tmp_path / "runtime"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_jupyterlab_serves_the_notebooks_and_a_project_kernel(lab):
    base, token, runtime = lab
    status, contents = _api(base, token, "/api/contents")
    names = {item["name"] for item in contents["content"]}
    assert set(reproduce.NOTEBOOKS) <= names
    status, specs = _api(base, token, "/api/kernelspecs")
    assert "python3" in specs["kernelspecs"]
    with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10) as page:
        assert page.status == 200

    # start the notebooks' kernel and ask it, over its own channels, which Python it runs
    status, kernel = _api(base, token, "/api/kernels", method="POST")
    assert status == 201
    from jupyter_client import BlockingKernelClient

    outputs = []
    client = BlockingKernelClient(connection_file=str(runtime / f"kernel-{kernel['id']}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive(
            "import sys, helpers.experiment; print(sys.prefix)", timeout=60,
            output_hook=lambda msg: outputs.append(msg["content"]["text"])
            if msg["content"].get("name") == "stdout" else None)
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok"
    assert "".join(outputs).strip() == sys.prefix  # the project's environment, where helpers is installed
    assert _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")[0] == 204

