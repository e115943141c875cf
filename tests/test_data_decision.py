"""Where the main job's data comes from: present, downloaded from the ISIC archive (a server on
127.0.0.1 stands in for it), or the synthetic demo set with a one-line reason. No test here touches
the real network."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import time
import zipfile

import pytest

from helpers import data, download, paths
from helpers.tools import reproduce
from helpers.folders import SPLITS
from helpers.errors import DataError
from helpers.data import resolve_source
from helpers.settings import RunConfig

from conftest import write_pair
from test_download import Handler, no_proxy, server  # noqa: F401 (fixtures)

TINY = {"train": 6, "test": 4}
ARCHIVES = tuple(dataclasses.replace(a, count=TINY["train" if "Training" in a.name else "test"])
                 for a in download.ARCHIVES)


def publish_tiny_isic(server, tmp_path):
    """Serve the four archives (official names and layout) of a 6 + 4 image ISIC-style set."""
    src = tmp_path / "src"
    for i in range(TINY["train"]):
        write_pair(src, "train", i, size=(40 + 4 * i, 30 + 2 * i))
    for i in range(TINY["train"], TINY["train"] + TINY["test"]):
        write_pair(src, "test", i, size=(48, 36))
    for a in ARCHIVES:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted((src / a.folder).iterdir()):
                zf.write(f, f"{a.folder}/{f.name}")
        server.files[a.name] = [buf.getvalue()]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """data/isic2016 and data/synthetic under tmp_path, and the archive list of the tiny set."""
    monkeypatch.setattr(paths, "ISIC2016", tmp_path / "data" / "isic2016")
    monkeypatch.setattr(paths, "SYNTHETIC", tmp_path / "data" / "synthetic")
    monkeypatch.setattr(download, "ARCHIVES", ARCHIVES)
    return tmp_path


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/2016/"


def cfg(tmp_path, **kw) -> RunConfig:
    return RunConfig(synthetic_train=8, synthetic_test=4, image_size=32, run_dir=str(tmp_path / "run"),
                     cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def test_probe_states_the_archive_sizes(server, tmp_path):
    publish_tiny_isic(server, tmp_path)
    sizes = download.probe_archive(server.url, ARCHIVES, timeout=2)
    assert sizes == {a.name: len(server.files[a.name][0]) for a in ARCHIVES}
    assert [entry[1] for entry in server.log] == ["HEAD"] * 4  # nothing downloaded


def test_auto_downloads_when_the_archive_answers(server, isolated):
    publish_tiny_isic(server, isolated)
    lines = []
    source, root, decision = resolve_source(cfg(isolated, isic_url=server.url), log=lines.append)
    assert (source, root) == ("isic2016", paths.ISIC2016)
    total = sum(len(server.files[a.name][0]) for a in ARCHIVES)
    assert lines and lines[0].startswith("data: ISIC 2016 Part 1 is not in") and f"{total / 1e6:,.0f} MB" in lines[0]
    assert "downloaded from" in decision
    for split, n in TINY.items():
        assert all(len(list((root / folder).iterdir())) == n for folder in SPLITS[split])
    # present now: no request at all the second time
    server.log.clear()
    assert resolve_source(cfg(isolated, isic_url=server.url), log=lines.append)[0] == "isic2016" and not server.log


@pytest.mark.parametrize("how", ["closed port", "silent server", "refused"])
def test_auto_falls_back_to_synthetic_within_seconds(isolated, server, how, monkeypatch):
    url = closed_port_url()
    if how == "refused":
        server.head_status, url = 403, server.url
    silent = None
    if how == "silent server":  # accepts the connection and never answers
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    lines = []
    start = time.perf_counter()
    try:
        source, root, decision = resolve_source(cfg(isolated, isic_url=url), log=lines.append)
    finally:
        probe_seconds = time.perf_counter() - start
        if silent:
            silent.close()
    assert source == "synthetic" and root == paths.SYNTHETIC and (root / "synthetic.json").is_file()
    assert len(lines) == 1 and lines[0] == decision and "\n" not in decision
    assert decision.startswith("data: SYNTHETIC demo set, because") and "make data" in decision
    assert ("HTTP 403" in decision) if how == "refused" else ("did not answer" in decision)
    assert probe_seconds < 10  # the probe gives up after PROBE_TIMEOUT; then 12 tiny synthetic images are written
    assert data.PROBE_TIMEOUT <= 5


def test_isic2016_fails_clearly_when_it_cannot_download(isolated):
    with pytest.raises(DataError, match=r"isic2016: ISIC 2016 Part 1 data not found and not downloaded: the ISIC "
                                        r"archive did not answer"):
        resolve_source(cfg(isolated, data="isic2016", isic_url=closed_port_url()), log=lambda line: None)
    assert not paths.SYNTHETIC.exists()  # never swapped for the demo set


def test_synthetic_never_touches_the_network(server, isolated):
    source, _, decision = resolve_source(cfg(isolated, data="synthetic", isic_url=server.url), log=lambda line: None)
    assert source == "synthetic" and "DATA=synthetic" in decision and server.log == []


def test_main_job_downloads_and_hands_the_downloaded_data_to_every_notebook(server, isolated, capsys, monkeypatch):
    """The headless job with DATA=auto, ISIC 2016 fetched from the local server: every notebook is given the
    downloaded folder, where the data the notebooks read holds every downloaded image. (The notebooks
    themselves run in the tiny pipeline tests: here only the data handling is under test, so nothing trains.)"""
    publish_tiny_isic(server, isolated)
    given = []

    def notebook(source, output, parameters, stream=None):
        given.append((source.name, parameters))
        return 0.0

    monkeypatch.setattr(reproduce, "run_notebook", notebook)
    monkeypatch.setattr(reproduce, "collect_results", lambda cfg, timings, decision: {"decision": decision})
    run = isolated / "runs" / "dl"
    cfg = RunConfig(data="auto", isic_url=server.url, image_size=32, epochs=1, batch_size=4, device="cpu",
                    encoder_weights=None, run_dir=str(run), figures_dir=str(isolated / "figures"),
                    cache_dir=str(isolated / "cache"), progress=False)
    results = reproduce.reproduce(cfg, html=False)
    out = capsys.readouterr().out
    assert "downloading the 4 archives" in out and "downloaded from" in results["decision"]
    assert [name for name, _ in given] == list(reproduce.NOTEBOOKS)
    for _, parameters in given:
        assert parameters["DATA"] == "isic2016" and parameters["DATA_DIR"] == str(paths.ISIC2016)
    d = data.prepare_data(dataclasses.replace(cfg, data="isic2016", data_dir=str(paths.ISIC2016)), log=print)
    assert (len(d.train), len(d.test), d.scored_name) == (TINY["train"], TINY["test"], "test")
    assert d.label.startswith("ISIC 2016 Part 1") and json.loads((run / "results.json").read_text())


def test_a_partial_download_in_data_isic2016_is_completed_not_used_as_a_training_only_folder(server, isolated):
    publish_tiny_isic(server, isolated)
    download.download_isic2016(paths.ISIC2016, server.url, ARCHIVES[:2], progress=False)  # the test split is missing
    lines = []
    source, root, decision = resolve_source(cfg(isolated, isic_url=server.url), log=lines.append)
    assert source == "isic2016" and "downloaded from" in decision
    assert all((root / folder).is_dir() for pair in SPLITS.values() for folder in pair)
