"""The embedded default: make a small synthetic multi-camera dataset, preprocess it, show the result.

    python -m preprocess.demo [--data DIR]

Every decode here is FFmpeg on the CPU, so it runs on any machine.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from dali_gop import format as fmt
from dali_gop.errors import ArgumentParser, run_cli
from dali_gop.reference import decode_annexb
from dali_gop.synthetic import make_dataset, read_frame_number
from preprocess.runner import preprocess

DEMO_DATASET = dict(clips=4, cameras=6, frames=48, width=256, height=144, fps=12, gop=12,
                    codec="hevc", bframes=2, open_gop=True)


def make_demo_gop_store(data: Path, workers: int | None = None) -> Path:
    """Videos under ``data/videos``, GOP store under ``data/gops``; both reused when present."""
    videos, gops = data / "videos", data / "gops"
    videos.mkdir(parents=True, exist_ok=True)   # a --data that cannot hold them: said first
    make_dataset(videos, workers=workers, **DEMO_DATASET)
    summary = preprocess(videos, gops, workers=workers, progress=True)
    print(summary.format())
    if not summary.ok:
        raise SystemExit(1)
    return gops


def show(gops: Path) -> None:
    manifest = fmt.DatasetManifest.from_json((gops / fmt.MANIFEST_FILENAME).read_text())
    clips = manifest.clips()
    print(f"\n{gops / fmt.MANIFEST_FILENAME}: {len(clips)} clips x "
          f"{len(next(iter(manifest.cameras.values())))} cameras, frames per clip {clips}")
    clip = sorted(clips)[0]
    rel = f"{clip}/{manifest.cameras[clip][0]}"
    index = fmt.read_index(gops, rel)
    print(f"{gops / rel}/: {index.codec} {index.width}x{index.height} {index.frame_rate} fps, "
          f"{index.num_frames} frames, B-frames: {index.has_b_frames}")
    for gop in index.gops:
        tail = f", carries the next keyframe + {gop.tail - 1} leading picture(s)" if gop.tail else ""
        print(f"  {gop.file:<16} {gop.size:>7,} bytes  frames {gop.start}..{gop.end - 1}  "
              f"{len(gop.packet_sizes)} packets{tail}")
    rng = random.Random(0)
    print("\nrandom frames read back through the store and decoded on the CPU:")
    for clip in sorted(clips):
        frame = rng.randrange(clips[clip])
        read = store.read([(f"{clip}/{cam}", [frame]) for cam in manifest.cameras[clip]])
        shown = []
        for request in read.plan.requests:
            (segment, position), = request.picks
            s = read.plan.segments[segment]
            image = decode_annexb(index.codec, read.data[s.offset:s.offset + s.size],
                                  s.packet_sizes, pixel_format="rgb24")[position]
            shown.append(read_frame_number(image))
        status = "ok" if shown == [frame] * len(shown) else "WRONG"
        print(f"  {clip} frame {frame:>3}: cameras show {shown}  {status}")
        if status != "ok":
            raise SystemExit(f"{clip}: wanted frame {frame}, decoded frames show {shown}")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m preprocess.demo", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    show(make_demo_gop_store(args.data, args.workers))


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m preprocess.demo"))
