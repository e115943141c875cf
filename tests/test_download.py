"""Tests of helpers.download against a real HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import download
from helpers.download import Archive, DownloadError, download_isic2016

REPO = Path(__file__).resolve().parent.parent

# The real ISIC 2016 Part 1 names, with three files each.
ARCH = tuple(dataclasses.replace(a, count=3) for a in download.ARCHIVES)
DATA = ARCH[0]


def payload(archive: Archive, i: int) -> bytes:
    return f"<{archive.folder}-{i}>".encode() * 40


def member_names(archive: Archive) -> list[str]:
    return [f"ISIC_{i:07d}{archive.suffix}" for i in range(archive.count)]


def make_zip(archive: Archive, extra: dict[str, bytes] | None = None,
             top: str | None = None) -> bytes:
    """A stored (uncompressed) zip laid out like the official one: files under a top folder."""
    top = archive.folder + "/" if top is None else top
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        if top:
            zf.writestr(top, b"")  # directory entry
        for i, name in enumerate(member_names(archive)):
            zf.writestr(top + name, payload(archive, i))
        zf.writestr(f"__MACOSX/{top}._ISIC_0000000{archive.suffix}", b"mac junk")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def corrupt(archive: Archive, data: bytes) -> bytes:
    """Flip one byte inside a stored member's data: the zip opens but its CRC check fails."""
    at = data.index(payload(archive, 1)) + 5
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


class Handler(BaseHTTPRequestHandler):
    """Serves server.files[name] (a list: the i-th request gets version i, the last one after)."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        srv = self.server
        name = self.path.lstrip("/")
        srv.log.append((name, "HEAD"))
        versions = srv.files.get(name)
        if getattr(srv, "head_status", None) or not versions:
            self.send_error(getattr(srv, "head_status", None) or 404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(versions[-1])))
        self.end_headers()

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        srv.log.append((name, rng))
        versions = srv.files.get(name)
        if not versions:
            self.send_error(404, "Not Found")
            return
        srv.counts[name] = srv.counts.get(name, 0) + 1
        data = versions[min(srv.counts[name], len(versions)) - 1]
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:  # first request only: send part of the body, hang up
            body, srv.drop_after = body[: srv.drop_after], None
        self.wfile.write(body)
        srv.sent += len(body)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.log, httpd.counts = {}, [], {}
    httpd.ignore_range, httpd.drop_after, httpd.sent = False, None, 0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def publish(server, archives=ARCH):
    for a in archives:
        server.files[a.name] = [make_zip(a)]


def fetch(root, server, archives=ARCH, **kw):
    return download_isic2016(root, server.url, archives, progress=False, timeout=5, **kw)


def assert_layout(root: Path, archives=ARCH):
    for a in archives:
        folder = root / a.folder
        assert sorted(p.name for p in folder.iterdir()) == member_names(a)
        for i, name in enumerate(member_names(a)):
            assert (folder / name).read_bytes() == payload(a, i)
    assert not list(root.glob(".extract-*"))


def assert_nothing_left(root: Path, archive: Archive):
    assert not (root / archive.folder).exists()
    assert not list(root.glob(".extract-*"))


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fresh_download_then_noop(tmp_path, server, capsys):
    publish(server)
    root = tmp_path / "isic"
    assert fetch(root, server) == root
    assert_layout(root)
    assert sorted(name for name, _ in server.log) == sorted(a.name for a in ARCH)
    assert not (root / ".downloads").exists()  # archives deleted, empty folder removed
    assert "4 archives ready under" in capsys.readouterr().out
    server.log.clear()
    fetch(root, server)
    assert server.log == []
    out = capsys.readouterr().out
    assert out.count("already present") == 5  # four folders + the summary
    assert "(downloaded 0, already present 4)" in out


def test_keep_archives(tmp_path, server):
    publish(server, (DATA,))
    fetch(tmp_path, server, (DATA,), keep_archives=True)
    assert (tmp_path / ".downloads" / DATA.name).read_bytes() == server.files[DATA.name][0]


def test_archive_placed_by_hand_needs_no_network(tmp_path):
    (tmp_path / ".downloads").mkdir()
    for a in ARCH:
        (tmp_path / ".downloads" / a.name).write_bytes(make_zip(a))
    download_isic2016(tmp_path, f"http://127.0.0.1:{dead_port()}/", ARCH, progress=False)
    assert_layout(tmp_path)


def test_resume_with_range(tmp_path, server):
    publish(server, (DATA,))
    data = server.files[DATA.name][0]
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / (DATA.name + ".part")).write_bytes(data[:100])
    fetch(tmp_path, server, (DATA,))
    assert server.log == [(DATA.name, "bytes=100-")]
    assert server.sent == len(data) - 100
    assert_layout(tmp_path, (DATA,))


def test_server_ignoring_range_restarts(tmp_path, server):
    publish(server, (DATA,))
    server.ignore_range = True
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / (DATA.name + ".part")).write_bytes(b"X" * 100)  # would corrupt if kept
    fetch(tmp_path, server, (DATA,))
    assert server.log == [(DATA.name, "bytes=100-")]
    assert_layout(tmp_path, (DATA,))


def test_complete_part_answered_416_is_verified_and_used(tmp_path, server):
    publish(server, (DATA,))
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / (DATA.name + ".part")).write_bytes(server.files[DATA.name][0])
    fetch(tmp_path, server, (DATA,))
    assert server.sent == 0
    assert_layout(tmp_path, (DATA,))


def test_dropped_connection_resumes(tmp_path, server):
    publish(server, (DATA,))
    half = len(server.files[DATA.name][0]) // 2
    server.drop_after = half
    fetch(tmp_path, server, (DATA,))
    assert server.log == [(DATA.name, None), (DATA.name, f"bytes={half}-")]
    assert_layout(tmp_path, (DATA,))


def test_interrupt_keeps_part_and_rerun_resumes(tmp_path, server, monkeypatch):
    publish(server, (DATA,))
    monkeypatch.setattr(download, "CHUNK", 64)
    real_bar = download.progress_bar

    def interrupt(n=1):
        raise KeyboardInterrupt

    def interrupting_bar(*args, **kwargs):
        bar = real_bar(*args, **kwargs)
        bar.update = interrupt
        return bar

    monkeypatch.setattr(download, "progress_bar", interrupting_bar)
    with pytest.raises(KeyboardInterrupt):
        fetch(tmp_path, server, (DATA,))
    assert (tmp_path / ".downloads" / (DATA.name + ".part")).stat().st_size == 64
    monkeypatch.setattr(download, "progress_bar", real_bar)
    fetch(tmp_path, server, (DATA,))
    assert server.log[-1] == (DATA.name, "bytes=64-")
    assert_layout(tmp_path, (DATA,))


def test_corrupt_zip_is_retried_once_and_succeeds(tmp_path, server, capsys):
    good = make_zip(DATA)
    server.files[DATA.name] = [corrupt(DATA, good), good]
    fetch(tmp_path, server, (DATA,))
    assert server.log == [(DATA.name, None), (DATA.name, None)]
    assert "CRC check failed" in capsys.readouterr().out
    assert_layout(tmp_path, (DATA,))


def test_corrupt_zip_twice_fails(tmp_path, server):
    server.files[DATA.name] = [corrupt(DATA, make_zip(DATA))]
    with pytest.raises(DownloadError, match=rf"{DATA.name}.*CRC check failed"):
        fetch(tmp_path, server, (DATA,))
    assert len(server.log) == 2
    assert not list((tmp_path / ".downloads").iterdir())
    assert_nothing_left(tmp_path, DATA)


def test_not_a_zip_fails(tmp_path, server):
    server.files[DATA.name] = [b"<html>Access Denied</html>"]
    with pytest.raises(DownloadError, match="not a readable zip"):
        fetch(tmp_path, server, (DATA,))
    assert len(server.log) == 2


@pytest.mark.parametrize("good", [True, False])
def test_sha256(tmp_path, server, good):
    data = make_zip(DATA)
    digest = hashlib.sha256(data).hexdigest() if good else "0" * 64
    pinned = dataclasses.replace(DATA, sha256=digest)
    server.files[DATA.name] = [data]
    if good:
        fetch(tmp_path, server, (pinned,))
        assert_layout(tmp_path, (pinned,))
        return
    with pytest.raises(DownloadError, match=f"sha256 is {hashlib.sha256(data).hexdigest()}, expected 0{{64}}"):
        fetch(tmp_path, server, (pinned,))
    assert len(server.log) == 2
    assert_nothing_left(tmp_path, DATA)


def test_wrong_member_count(tmp_path, server):
    publish(server, (DATA,))
    four = dataclasses.replace(DATA, count=4)
    with pytest.raises(DownloadError, match=r"holds 3 files ending with \.jpg, expected 4"):
        fetch(tmp_path, server, (four,))
    assert len(server.log) == 1
    assert_nothing_left(tmp_path, DATA)


def test_files_at_top_level_are_accepted(tmp_path, server):
    server.files[DATA.name] = [make_zip(DATA, top="")]
    fetch(tmp_path, server, (DATA,))
    assert_layout(tmp_path, (DATA,))


def test_incomplete_folder_is_replaced(tmp_path, server, capsys):
    publish(server, (DATA,))
    (tmp_path / DATA.folder).mkdir()
    (tmp_path / DATA.folder / "ISIC_0000000.jpg").write_bytes(b"old")
    fetch(tmp_path, server, (DATA,))
    assert "incomplete (1 of 3 files); replacing it" in capsys.readouterr().out
    assert_layout(tmp_path, (DATA,))


def test_404_names_url(tmp_path, server):
    with pytest.raises(DownloadError, match=re.escape(f"{server.url}{DATA.name}: HTTP 404")):
        fetch(tmp_path, server, (DATA,))
    assert len(server.log) == 1


def test_no_network_fails_fast(tmp_path):
    url = f"http://127.0.0.1:{dead_port()}/"
    began = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_isic2016(tmp_path, url, (DATA,), progress=False)
    assert time.monotonic() - began < 10
    message = str(info.value)
    assert message.startswith(f"cannot reach {url}{DATA.name}: ")
    assert str(tmp_path / ".downloads") in message and "by hand" in message
    assert_nothing_left(tmp_path, DATA)


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp_evil_abs.txt", "ok/../../evil.txt"])
def test_path_traversal_rejected(tmp_path, server, evil):
    root = tmp_path / "root"
    server.files[DATA.name] = [make_zip(DATA, extra={evil: b"pwned"})]
    with pytest.raises(DownloadError, match="unsafe member path"):
        fetch(root, server, (DATA,))
    assert not (tmp_path / "evil.txt").exists()
    assert_nothing_left(root, DATA)


def test_disk_full_while_extracting(tmp_path, server, monkeypatch):
    publish(server, (DATA,))
    real_copy, calls = download.shutil.copyfileobj, []

    def copy_then_fill_disk(src, dst, length=0):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst, length)

    monkeypatch.setattr(download.shutil, "copyfileobj", copy_then_fill_disk)
    with pytest.raises(DownloadError, match=rf"disk full while extracting {DATA.name} into .*: free \d+ MB"):
        fetch(tmp_path, server, (DATA,))
    assert_nothing_left(tmp_path, DATA)
    assert (tmp_path / ".downloads" / DATA.name).exists()  # kept: a rerun needs no download


def test_cli_success_and_error(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setattr(download, "ARCHIVES", (DATA,))
    publish(server, (DATA,))
    assert download.main([str(tmp_path / "ok"), "--base-url", server.url, "--timeout", "5"]) == 0
    assert_layout(tmp_path / "ok", (DATA,))
    capsys.readouterr()
    server.files.clear()
    assert download.main([str(tmp_path / "bad"), "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download ") and "404" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_module_runs_as_script():
    done = subprocess.run([sys.executable, "-m", "helpers.download", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--keep-archives" in done.stdout
