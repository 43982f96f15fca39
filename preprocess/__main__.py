"""python -m preprocess --video-root V --gop-root G [--workers N] [--shard i/N] [--force]

Exit status: 0 all done; 1 some videos (or the manifest) failed, one FAILED line each; 2 a user
error, one line; 130 interrupted (Ctrl-C; a second one stops at once).
"""
from __future__ import annotations

import argparse
import sys

from dali_gop.errors import ArgumentParser, run_cli
from preprocess import verify
from preprocess.runner import LAYOUT, preprocess


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m preprocess", formatter_class=argparse.HelpFormatter,
                            description=(
        f"Split every H.264/HEVC video {LAYOUT} into standalone-decodable GOP bins "
        "under --gop-root. Resumable: rerun to finish or refresh; up-to-date videos are skipped."))
    parser.add_argument("--video-root", required=True)
    parser.add_argument("--gop-root", required=True)
    parser.add_argument("--workers", type=_positive, default=None,
                        help="processes (default: all cores)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/N",
                        help="process only shard i of N (the sorted video list, every N-th)")
    parser.add_argument("--force", action="store_true", help="redo videos that are up to date")
    parser.add_argument("--verify", choices=verify.MODES, default="pixels", help=(
        "decode every bin alone before writing it and check it gives the frames its index "
        "promises; pixels (default) also compares each frame with a decode of the whole source; "
        "none trusts the stream (faster; a stream the GOP rule does not cover fails at load time)"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    summary = preprocess(args.video_root, args.gop_root, workers=args.workers,
                         shard_id=args.shard[0], num_shards=args.shard[1], force=args.force,
                         progress=not args.no_progress, verify=args.verify)
    print(summary.format())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m preprocess"))
