"""The dataset a loader serves: its clips, their frame counts, and the cameras every clip has."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from dali_gop import format as fmt


@dataclass(frozen=True)
class Dataset:
    """What the loader reads: clip ids with frame counts, and the camera videos of each clip."""
    gop_root: str
    clips: dict[str, int]           # clip id -> frames every camera has
    cameras: tuple[str, ...]        # video file names, one per camera, present in every clip

    @classmethod
    def open(cls, gop_root: str | os.PathLike, cameras: Sequence[str] | None = None,
             index_file: str | os.PathLike | None = None) -> "Dataset":
        """From the manifest preprocess wrote (or a seed-shaped ``index_file``)."""
        manifest = fmt.read_manifest(gop_root, index_file)
        if index_file is not None and not manifest.cameras and cameras is None:
            # a seed-shaped index has no camera lists: take them from the GOP root's manifest
            manifest = fmt.DatasetManifest(manifest.video_dirs, fmt.read_manifest(gop_root).cameras)
        clips = manifest.clips()
        if not clips:
            raise fmt.FormatError(f"{gop_root}: the manifest lists no clips")
        if cameras is None:
            first = sorted(clips)[0]
            if first not in manifest.cameras:
                raise fmt.FormatError(f"{index_file or gop_root}: no camera list for clip {first}; "
                                      "pass cameras=[...]")
            cameras = manifest.cameras[first]
        cameras = tuple(cameras)
        for clip in clips:
            listed = manifest.cameras.get(clip)
            missing = [c for c in cameras if listed is not None and c not in listed]
            if missing:
                raise fmt.FormatError(f"{gop_root}/{clip}: cameras {missing} missing (clip has "
                                      f"{listed}); every clip needs every camera")
        return cls(str(gop_root), dict(sorted(clips.items())), cameras)
