"""Command line for an ISIC 2016 Part 1 data folder: ``python -m helpers.tools.data {check,download,synthetic} ROOT``.

The folder layout and its validation are in :mod:`helpers.folders`, the preprocessing cache and the
Datasets in :mod:`helpers.cache`, the download in :mod:`helpers.download` and the synthetic demo set
in :mod:`helpers.synthetic`.
"""

from __future__ import annotations

from pathlib import Path

from ..folders import WORKING_SIZE, check_dataset, format_check
from ..images import DEFAULT_MAX_PIXELS


def main(argv: list[str] | None = None) -> int:
    """python -m helpers.tools.data {check,download,synthetic} ROOT [options]"""
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    commands = ("check", "download", "synthetic")
    if not argv or argv[0] not in commands:
        print("usage: python -m helpers.tools.data {check,download,synthetic} ROOT [options]\n"
              "  check ROOT      validate an ISIC 2016 Part 1 folder and summarise it\n"
              "  download ROOT   fetch the official ISIC 2016 Part 1 archives into ROOT\n"
              "  synthetic ROOT  write the synthetic demo set in the ISIC 2016 layout",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "download":
        from ..download import main as download_main
        return download_main(rest)
    if command == "synthetic":
        from ..synthetic import main as synthetic_main
        return synthetic_main(rest)
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.data check")
    parser.add_argument("root", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse files of more pixels than this, before decoding them "
                             f"(default {DEFAULT_MAX_PIXELS:,}: a guard against decompression bombs)")
    parser.add_argument("--image-size", type=int, default=WORKING_SIZE,
                        help="the working size: images with a side below half of it are named in a warning")
    args = parser.parse_args(rest)
    report = check_dataset(args.root, progress=not args.quiet, max_pixels=args.max_pixels, image_size=args.image_size)
    print(format_check(report))
    if report["problems"]:
        first = " ".join(report["problems"][0].split())
        print(f"error: {args.root}: {len(report['problems'])} problem(s) (listed above), the first: {first}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
