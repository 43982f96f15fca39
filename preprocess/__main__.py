"""python -m preprocess --video-root V --gop-root G [--workers N] [--shard i/N] [--force]"""
from __future__ import annotations

import argparse
import sys

from preprocess.runner import preprocess


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess", description=(
        "Split every H.264/HEVC video under --video-root into standalone-decodable GOP bins "
        "under --gop-root. Resumable: rerun to finish or refresh; up-to-date videos are skipped."))
    parser.add_argument("--video-root", required=True)
    parser.add_argument("--gop-root", required=True)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/N",
                        help="process only shard i of N (the sorted video list, every N-th)")
    parser.add_argument("--force", action="store_true", help="redo videos that are up to date")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    summary = preprocess(args.video_root, args.gop_root, workers=args.workers,
                         shard_id=args.shard[0], num_shards=args.shard[1], force=args.force,
                         progress=not args.no_progress)
    print(summary.format())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
