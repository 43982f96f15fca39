"""The backend interface, and choosing a backend by name."""
from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod

from dali_gop.backends._color import VideoColors


class DecodeBackend(ABC):
    """Adds the decode to the pipeline being defined (call inside ``pipeline_def``)."""

    name: str = ""
    device: str = "cpu"         # where the frames it returns live: "cpu" or "gpu"
    # whether decoders keep their place between samples, so the loader may send stream steps
    # (a GOP's bytes once per stream slot); a stateless backend needs stream_decoding=False
    stateful: bool = True
    # whether it keeps frames decoded ahead for later samples (GopSource.decode_ahead)
    decodes_ahead: bool = False
    # decode threads that each hold an NVDEC session (0: none), and whose sessions they are: what
    # a memory budget may change (dali_gop._budget)
    threads: int = 0
    sessions: str = ""
    # whether each stream slot's camera decodes on an NVDEC session of its own, as its picks go,
    # instead of keeping whole decoded GOPs; and the frames its ring holds (video in display order,
    # video that reorders frames)
    stream_sessions: bool = False
    ring_frames: tuple[int, int] = (0, 0)
    # where stream slots keep their decoded GOPs: "device", or "host" (pinned host memory, the
    # picks copied to the device each batch): None where the backend can keep them on the device
    # only, or on the host only (cpu)
    kept_gops: str | None = None

    def __init__(self, color: str = "RGB", color_matrix: str | None = None):
        if color not in ("RGB", "BGR"):
            raise ValueError(f"color must be 'RGB' or 'BGR', not {color!r}")
        self.color = color
        # each video's YUV -> RGB conversion (the colour contract, backends/_color.py);
        # color_matrix ("bt601", "bt709") replaces every video's matrix
        self.colors = VideoColors(color_matrix)

    def check_videos(self, store, videos) -> dict[str, tuple[str, str]]:
        """Refuse, before any decoding, videos this backend would decode wrong, and learn each
        video's colour conversion from its index: {video: (matrix, range)}. A backend that
        refuses more calls this first."""
        return self.colors.learn(store, videos)

    def session_bytes(self, frame_bytes: int, frames_per_call: int,
                      sessions: str | None = None) -> int:
        """Device bytes each of :attr:`threads` holds for frames of ``frame_bytes``; 0 without
        NVDEC sessions."""
        return 0

    def settings(self) -> dict[str, int]:
        """The budget's knobs as the loader reports them (``GopLoader.settings``)."""
        if not self.threads:
            return {}
        return {"decode_threads": self.threads, "nvdec_sessions": self.sessions,
                "stream_sessions": self.stream_sessions, "kept_gops": self.kept_gops}

    def settle(self, streams: bool) -> None:
        """Called before :meth:`bind` with whether any sample streams (stream slots): a backend
        whose best settings depend on it fixes them here."""

    def bind(self, num_cameras: int) -> None:
        """Called before :meth:`decode` with the cameras every sample holds; a backend whose graph
        has one branch per camera keeps it."""

    @abstractmethod
    def decode(self, data, plan):
        """DataNodes in, a DataNode of frames (cameras, T, H, W, 3) uint8 out."""


def gpu_available() -> bool:
    """An NVIDIA driver answers. Asked of nvidia-smi because PyNvVideoCodec cannot even be imported
    without the driver."""
    try:
        subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, timeout=20)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def get_backend(name: str = "auto", **options) -> DecodeBackend:
    """``nvdec`` (PyNvVideoCodec on the GPU), ``dali`` (DALI's own ``fn.decoders.video`` on the
    GPU, for comparison) or ``cpu`` (FFmpeg through PyAV); ``auto`` is ``nvdec`` when a GPU is
    present, else ``cpu``."""
    if name == "auto":
        name = "nvdec" if gpu_available() else "cpu"
    if name == "cpu":
        from dali_gop.backends._cpu import CpuBackend
        return CpuBackend(**options)
    if name == "nvdec":
        if not gpu_available():
            raise RuntimeError("the 'nvdec' backend needs an NVIDIA GPU and driver (nvidia-smi found "
                               "none); use backend='cpu' (or 'auto') on this machine")
        from dali_gop.backends._nvdec import NvdecBackend
        return NvdecBackend(**options)
    if name == "dali":
        if not gpu_available():
            raise RuntimeError("the 'dali' backend needs an NVIDIA GPU and driver (nvidia-smi found "
                               "none); use backend='cpu' (or 'auto') on this machine")
        from dali_gop.backends._dali import DaliBackend
        return DaliBackend(**options)
    raise ValueError(f"unknown decode backend {name!r}: choose auto, nvdec, dali or cpu")
