from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_gpu() -> bool:
    # PyNvVideoCodec cannot even be imported without the NVIDIA driver, so ask nvidia-smi first.
    if os.environ.get("DALI_GOP_NO_GPU"):
        return False
    try:
        subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return importlib.util.find_spec("PyNvVideoCodec") is not None


HAS_GPU = _has_gpu()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with NVDEC and PyNvVideoCodec")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def video_cache(tmp_path_factory):
    """Encoded test videos, made once per session and keyed by their parameters."""
    from dali_gop.synthetic import make_video

    root = tmp_path_factory.mktemp("videos")
    made: dict[tuple, Path] = {}

    def get(name: str = "cam0.mp4", **params) -> Path:
        key = (name, tuple(sorted(params.items())))
        if key not in made:
            folder = root / f"v{len(made)}"
            folder.mkdir()
            made[key] = make_video(folder / name, **params)
        return made[key]

    return get
