"""The dataset a loader serves: its clips, their frame counts, and the cameras every clip has."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from dali_gop import format as fmt
from dali_gop.errors import ConfigError

_NAMED = 3   # clips named in a message; the rest are counted


@dataclass(frozen=True)
class Dataset:
    """What the loader reads: clip ids with frame counts, and the camera videos of each clip."""
    gop_root: str
    clips: dict[str, int]           # clip id -> frames every camera has
    cameras: tuple[str, ...]        # video file names, one per camera, present in every clip
    # (height, width) of the videos the manifest describes, by "clip/camera"
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, gop_root: str | os.PathLike, cameras: Sequence[str] | None = None,
             index_file: str | os.PathLike | None = None,
             skip_incomplete_clips: bool = False) -> "Dataset":
        """From the manifest preprocess wrote (or a seed-shaped ``index_file``).

        Serves ``cameras``, by default every camera any clip has. A clip without all of them is
        refused (its missing camera would otherwise vanish from, or shift, the batch's camera
        axis), or left out with a warning when ``skip_incomplete_clips``.
        """
        manifest = fmt.read_manifest(gop_root, index_file)
        if index_file is not None and not manifest.cameras and cameras is None:
            # a seed-shaped index has no camera lists: take them from the GOP root's manifest
            root_manifest = fmt.read_manifest(gop_root)
            manifest = fmt.DatasetManifest(manifest.video_dirs, root_manifest.cameras,
                                           root_manifest.videos)
        clips = dict(sorted(manifest.clips().items()))
        if not clips:
            raise fmt.FormatError(f"{gop_root}: the manifest lists no clips")
        if cameras is None:
            unlisted = [clip for clip in clips if clip not in manifest.cameras]
            if unlisted:
                raise ConfigError(f"{index_file or gop_root}: no camera list for clip "
                                  f"{unlisted[0]}; pass cameras=[...]")
            cameras = list(dict.fromkeys(c for clip in clips for c in manifest.cameras[clip]))
        cameras = tuple(cameras)
        lacking = {clip: [c for c in cameras if c not in manifest.cameras[clip]]
                   for clip in clips if clip in manifest.cameras}
        lacking = {clip: missing for clip, missing in lacking.items() if missing}
        if lacking and not skip_incomplete_clips:
            raise ConfigError(f"{gop_root}: {_lacking(lacking, len(clips))}: pass cameras=[...] "
                              "to serve only cameras every clip has, or skip_incomplete_clips="
                              "True to leave these clips out (did their preprocessing fail?)")
        if lacking:
            if len(lacking) == len(clips):
                raise ConfigError(f"{gop_root}: {_lacking(lacking, len(clips))}: no clip left "
                                  "to serve")
            warnings.warn(f"{gop_root}: leaving out {_lacking(lacking, len(clips))}",
                          stacklevel=3)
            clips = {clip: n for clip, n in clips.items() if clip not in lacking}
        sizes = {video: (summary.height, summary.width)
                 for video, summary in manifest.videos.items()}
        return cls(str(gop_root), clips, cameras, sizes)

    def videos(self) -> list[str]:
        """Every video served, as "clip/camera"."""
        return [f"{clip}/{camera}" for clip in self.clips for camera in self.cameras]

    def check_one_size(self, video_info: Callable[[str], fmt.VideoSummary],
                       resize: tuple[int, int] | None) -> None:
        """Refuse videos a batch cannot hold together. A sample stacks its cameras, so the
        cameras of a clip need one size; clips may differ when ``resize`` brings every sample to
        one size. ``video_info`` tells the size of a video the manifest does not describe."""
        def size(video: str) -> tuple[int, int]:
            if video not in self.sizes:
                info = video_info(video)
                return info.height, info.width
            return self.sizes[video]

        first: dict[tuple[int, int], str] = {}
        for clip in self.clips:
            own: dict[tuple[int, int], str] = {}
            for camera in self.cameras:
                own.setdefault(size(f"{clip}/{camera}"), f"{clip}/{camera}")
            if len(own) > 1:
                raise ConfigError(f"{self.gop_root}: {_two_sizes(own)}: the cameras of a clip "
                                  "need one size (a sample stacks them), even with resize; "
                                  "resize them in preprocessing")
            for shape, video in own.items():
                first.setdefault(shape, video)
        if len(first) > 1 and resize is None:
            raise ConfigError(f"{self.gop_root}: {_two_sizes(first)}: a batch needs one frame "
                              "size; pass resize=(height, width) to serve them at one size")


def _lacking(lacking: dict[str, list[str]], total: int) -> str:
    named = "; ".join(f"{clip} lacks {missing}" for clip, missing in list(lacking.items())[:_NAMED])
    more = f" and {len(lacking) - _NAMED} more" if len(lacking) > _NAMED else ""
    return f"{len(lacking)} of {total} clips lack cameras the loader serves ({named}{more})"


def _two_sizes(videos: dict[tuple[int, int], str]) -> str:
    (a_size, a), (b_size, b) = list(videos.items())[:2]
    return f"{a} is {a_size[1]}x{a_size[0]}, {b} is {b_size[1]}x{b_size[0]}"
