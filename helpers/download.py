"""Fetch, verify and extract the official ISIC 2016 Part 1 archives.

``download_isic2016(root)`` leaves four flat folders under ``root``::

    ISBI2016_ISIC_Part1_Training_Data/        900 ISIC_*.jpg
    ISBI2016_ISIC_Part1_Training_GroundTruth/ 900 ISIC_*_Segmentation.png
    ISBI2016_ISIC_Part1_Test_Data/            379 ISIC_*.jpg
    ISBI2016_ISIC_Part1_Test_GroundTruth/     379 ISIC_*_Segmentation.png

Folders already complete are left alone. Archives are streamed to
``root/.downloads/<name>.part`` (resumed with HTTP Range after an interruption),
checked (size, CRC, optional sha256, member count), then extracted through a
temporary folder and renamed into place, so a folder under ``root`` is either
complete or absent. An archive placed by hand in ``root/.downloads/`` is used as is.
Run as ``python -m helpers.download ROOT``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from helpers.errors import DownloadError, ProjectError
from helpers.progress import progress_bar

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2016/"
CHUNK = 1 << 20          # bytes read and written at a time
ATTEMPTS = 3             # tries in a row without progress before giving up on a transfer
RETRY_DELAY = 0.5        # seconds before the first retry; doubled after each further one


@dataclass(frozen=True)
class Archive:
    """One official zip: its file name, the folder it gives under root, and what it holds."""

    name: str
    folder: str
    suffix: str
    count: int
    sha256: str | None = None


ARCHIVES: tuple[Archive, ...] = (
    Archive("ISBI2016_ISIC_Part1_Training_Data.zip", "ISBI2016_ISIC_Part1_Training_Data", ".jpg", 900),
    Archive("ISBI2016_ISIC_Part1_Training_GroundTruth.zip", "ISBI2016_ISIC_Part1_Training_GroundTruth",
            "_Segmentation.png", 900),
    Archive("ISBI2016_ISIC_Part1_Test_Data.zip", "ISBI2016_ISIC_Part1_Test_Data", ".jpg", 379),
    Archive("ISBI2016_ISIC_Part1_Test_GroundTruth.zip", "ISBI2016_ISIC_Part1_Test_GroundTruth",
            "_Segmentation.png", 379),
)


def _count_files(folder: Path, suffix: str) -> int | None:
    """Number of files in ``folder`` ending with ``suffix`` (any case); None if no folder."""
    if not folder.is_dir():
        return None
    return sum(1 for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffix.lower()))


def _wanted(zf: zipfile.ZipFile, archive: Archive) -> list[zipfile.ZipInfo]:
    """Members that are real files ending with the archive's suffix (no dirs, __MACOSX, ._*)."""
    out = []
    for info in zf.infolist():
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.is_dir() or not parts or "__MACOSX" in parts or parts[-1].startswith("._"):
            continue
        if parts[-1].lower().endswith(archive.suffix.lower()):
            out.append(info)
    return out


def _verify(path: Path, archive: Archive, total: int | None) -> str | None:
    """Say what is wrong with a downloaded archive (size, sha256, zip, CRC), or None if fine."""
    size = path.stat().st_size
    if total is not None and size != total:
        return f"size is {size} bytes, expected {total}"
    if archive.sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        if digest.hexdigest() != archive.sha256.lower():
            return f"sha256 is {digest.hexdigest()}, expected {archive.sha256.lower()}"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        return f"not a readable zip ({exc})"
    return None if bad is None else f"CRC check failed for member {bad}"


def _fetch(url: str, part: Path, timeout: float, progress: bool, downloads: Path) -> int | None:
    """Stream ``url`` into ``part``, resuming what is there; return the full size if known."""
    failures, last = 0, ""
    while failures < ATTEMPTS:
        if failures:
            time.sleep(RETRY_DELAY * 2 ** (failures - 1))
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "isic2016-mobilenet-seg"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and have:  # nothing after what we hold: maybe complete
                m = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", ""))
                return int(m.group(1)) if m else None
            if exc.code < 500:
                raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
            failures, last = failures + 1, f"HTTP {exc.code} {exc.reason}"
            continue
        except (urllib.error.URLError, OSError) as exc:
            failures, last = failures + 1, str(getattr(exc, "reason", exc))
            continue
        with response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            start = 0
            if response.status == 206:
                m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
                start = int(m.group(1)) if m else -1
                if start != have:  # not the range we asked for: start over
                    part.unlink()
                    failures, last = failures + 1, "server sent an unexpected range"
                    continue
                total = int(m.group(2)) if m.group(2) != "*" else None
            elif have:
                print(f"{part.name}: server ignored the resume request; starting again from zero")
            got = start
            try:
                with open(part, "ab" if start else "wb") as f, progress_bar(
                        total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5],
                        enabled=progress, leave=True) as bar:
                    while block := response.read(CHUNK):
                        f.write(block)
                        got += len(block)
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise DownloadError(f"disk full while downloading {url} into {downloads}: "
                                        f"free space and rerun (the partial file is kept)") from None
                last = f"connection lost ({str(exc) or type(exc).__name__})"
            else:
                if total is None or got >= total:
                    return total
                last = f"connection lost after {got} of {total} bytes"
            failures = 0 if got > have else failures + 1  # progress made: keep going
    if last.startswith("connection lost"):
        raise DownloadError(f"download of {url} kept failing: {last}; rerun to resume")
    raise DownloadError(f"cannot reach {url}: {last}. Check your connection, or download the four "
                        f"ISIC 2016 Part 1 archives by hand into {downloads}{os.sep} and rerun")


def _obtain(archive: Archive, downloads: Path, base_url: str, timeout: float, progress: bool) -> Path:
    """Return a verified copy of ``archive`` in ``downloads``, downloading it if needed."""
    url = base_url + ("" if base_url.endswith("/") else "/") + archive.name
    final, part = downloads / archive.name, downloads / (archive.name + ".part")
    if final.exists():
        problem = _verify(final, archive, None)
        if problem is None:
            print(f"{archive.name}: using {final}")
            part.unlink(missing_ok=True)
            return final
        print(f"{archive.name}: {final} is invalid ({problem}); deleting it and downloading")
        final.unlink()
    downloads.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        total = _fetch(url, part, timeout, progress, downloads)
        problem = _verify(part, archive, total)
        if problem is None:
            os.replace(part, final)
            return final
        part.unlink()
        if attempt == 1:
            print(f"{archive.name}: {problem}; deleted, downloading again from scratch")
    raise DownloadError(f"{archive.name} from {url} is invalid after two downloads: {problem}")


def _safe(name: str) -> bool:
    """True if a zip member name stays inside the folder it is extracted to."""
    name = name.replace("\\", "/")
    return not (name.startswith("/") or re.match(r"^[A-Za-z]:", name)
                or ".." in PurePosixPath(name).parts)


def _extract(zip_path: Path, archive: Archive, root: Path) -> None:
    """Extract the wanted members flat into ``root/<folder>``, all or nothing."""
    tmp, need_mb = None, 0
    try:
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
        with zipfile.ZipFile(zip_path) as zf:
            unsafe = [n for n in zf.namelist() if not _safe(n)]
            if unsafe:
                raise DownloadError(f"{zip_path}: unsafe member path {unsafe[0]!r} "
                                    f"(absolute or '..'); refusing to extract")
            members = _wanted(zf, archive)
            need_mb = -(-sum(m.file_size for m in members) // 1_000_000)
            if len(members) != archive.count:
                raise DownloadError(f"{zip_path} holds {len(members)} files ending with "
                                    f"{archive.suffix}, expected {archive.count}; "
                                    f"delete it and rerun if it is the wrong file")
            parents = {PurePosixPath(m.filename.replace("\\", "/")).parent for m in members}
            if len(parents) > 1:
                raise DownloadError(f"{zip_path}: the {archive.suffix} files are spread over "
                                    f"{len(parents)} folders, expected one")
            dest = tmp / archive.folder
            dest.mkdir()
            for m in members:
                with zf.open(m) as src, open(dest / PurePosixPath(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        got = _count_files(dest, archive.suffix)
        if got != archive.count:
            raise DownloadError(f"{archive.name}: extracted {got} files, expected {archive.count}")
        target = root / archive.folder
        if target.exists() or target.is_symlink():
            print(f"{target} is incomplete ({_count_files(target, archive.suffix) or 0} of "
                  f"{archive.count} files); replacing it")
            os.replace(target, tmp / "incomplete")
        os.replace(dest, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(f"disk full while extracting {archive.name} into {root}: "
                                f"free {need_mb} MB and rerun") from None
        raise DownloadError(f"cannot extract {archive.name} into {root}: {exc}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def probe_archive(base_url: str = BASE_URL, archives: tuple[Archive, ...] = ARCHIVES, timeout: float = 5.0
                  ) -> dict[str, int | None]:
    """Ask the archive server for the size of each archive (HTTP HEAD) without downloading anything.

    The first request is the reachability check: no answer within ``timeout`` seconds, or a refusal,
    raises DownloadError at once with the reason. Returns {archive name: size in bytes, or None
    where the server states none}.
    """
    sizes = {}
    for archive in archives:
        url = base_url + ("" if base_url.endswith("/") else "/") + archive.name
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "isic2016-mobilenet-seg"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
        except urllib.error.HTTPError as exc:
            exc.close()
            raise DownloadError(f"the ISIC archive refused {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc or type(exc).__name__
            raise DownloadError(f"the ISIC archive did not answer at {url} within {timeout:g} s: {reason}") from None
        sizes[archive.name] = int(length) if length and length.isdigit() else None
    return sizes


def download_isic2016(root, base_url: str = BASE_URL, archives: tuple[Archive, ...] = ARCHIVES, *,
                      timeout: float = 30.0, progress: bool = True, keep_archives: bool = False) -> Path:
    """Make sure every archive's folder is complete under ``root``; return ``root`` as a Path.

    Raises DownloadError (a ProjectError) with a one-line message when an archive cannot
    be fetched, verified or extracted. A KeyboardInterrupt keeps the ``.part`` file so a
    rerun resumes.
    """
    began, root = time.monotonic(), Path(root)
    downloads = root / ".downloads"
    fetched = present = 0
    for archive in archives:
        if _count_files(root / archive.folder, archive.suffix) == archive.count:
            print(f"{archive.folder}: already present ({archive.count} files)")
            present += 1
            continue
        root.mkdir(parents=True, exist_ok=True)
        zip_path = _obtain(archive, downloads, base_url, timeout, progress)
        _extract(zip_path, archive, root)
        if not keep_archives:
            zip_path.unlink()
        fetched += 1
    if fetched and not keep_archives:
        try:
            downloads.rmdir()  # only when empty
        except OSError:
            pass
    print(f"isic2016: {len(archives)} archives ready under {root} (downloaded {fetched}, "
          f"already present {present}) in {time.monotonic() - began:.1f} s")
    return root


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m helpers.download ROOT [--base-url URL] [--timeout S] [--keep-archives]``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.download",
                                     description="Download and extract the ISIC 2016 Part 1 archives.")
    parser.add_argument("root", metavar="ROOT", type=Path, help="folder to hold the four data folders")
    parser.add_argument("--base-url", default=BASE_URL, metavar="URL", help=f"default {BASE_URL}")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait on the network (default 30)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zips after extraction")
    args = parser.parse_args(argv)
    try:
        download_isic2016(args.root, args.base_url, ARCHIVES, timeout=args.timeout, keep_archives=args.keep_archives)
    except ProjectError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: partial downloads kept in {args.root / '.downloads'}; rerun to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
