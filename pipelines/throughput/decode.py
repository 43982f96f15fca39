"""Raw NVDEC decode, no DALI: the ceiling (the GOP bins, read into memory first; PyNvVideoCodec's
sessions, frames left in their buffers, and our own, each frame copied into one scratch frame) and
the PyNvVideoCodec baselines (the mp4 files, demuxed at run time).

``ceiling`` and ``pynvc`` are their rows. All three run on one harness, :func:`in_threads`: a pool of threads, each with its own CUDA stream
and decoders made on first use and reused, as a PyNvVideoCodec user would write it. GPU only.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from dali_gop.backends import create_decoder, packet, pynvvideocodec
from dali_gop.backends import NvdecSession
from dali_gop.format import read_index, video_gop_dir
from pipelines.throughput.bench import Bench
from pipelines.throughput.measure import RANDOM, Result, Timed


class ThreadDecoders:
    """A pool thread's CUDA stream and the decoders it made (``made``, keyed as the work likes)."""

    def __init__(self, device: int):
        import torch
        torch.cuda.set_device(device)   # the current device is per thread
        self.device = device
        self.stream = torch.cuda.Stream()
        self.made: dict = {}

    def get(self, key, make: Callable[[int], object]):
        """The decoder called ``key``, made by ``make(stream handle)`` the first time."""
        if key not in self.made:
            self.made[key] = make(self.stream.cuda_stream)
        return self.made[key]


def in_threads(work: Callable[[ThreadDecoders, object], int], items: list, threads: int,
               device: int) -> Timed:
    """Sum of ``work(thread's decoders, item)`` (frames) over ``items`` in a pool of ``threads``,
    timed; one item per thread first, untimed, so that decoders are made before the clock runs."""
    import torch
    local = threading.local()

    def run(item) -> int:
        if not hasattr(local, "decoders"):
            local.decoders = ThreadDecoders(device)
        return work(local.decoders, item)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, items[:threads]))
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        frames = sum(pool.map(run, items))
        torch.cuda.synchronize(device)
        return Timed(frames, started, time.perf_counter())


# -- the ceiling: the GOP bins -----------------------------------------------------------------
def read_bins(gop_root: Path, videos: list[str]) -> list[tuple[str, np.ndarray, tuple, int]]:
    """(codec, bytes, NV12 frame shape, frames) of every GOP bin of ``videos``, in memory, so that
    the ceiling times NVDEC and not the disk."""
    bins = []
    for video in videos:
        index = read_index(gop_root, video)
        folder = video_gop_dir(gop_root, video)
        shape = (index.height * 3 // 2, index.width)
        bins += [(index.codec, np.fromfile(folder / gop.file, dtype=np.uint8), shape, gop.count)
                 for gop in index.gops]
    return bins


def decode_bins(bins: list, threads: int, device: int, rgb: bool = False) -> Timed:
    """Each bin decoded whole on PyNvVideoCodec's sessions: one ``Decode`` call with all its bytes,
    then a flush, as the loader's nvdec backend feeds a GOP."""
    def decode(decoders: ThreadDecoders, item) -> int:
        codec, data, _, _ = item
        decoder = decoders.get((codec, rgb),
                               lambda stream: create_decoder(codec, stream, device, rgb=rgb))
        return len(decoder.Decode(packet(data))) + len(decoder.Decode(packet(None)))

    return in_threads(decode, bins, threads, device)


def decode_bins_own(bins: list, threads: int, device: int) -> Timed:
    """Each bin decoded whole on our own sessions, every frame copied into one scratch frame of the
    thread's (the copy waits for the decode, so the clock does not stop before NVDEC does)."""
    import torch

    def decode(decoders: ThreadDecoders, item) -> int:
        codec, data, shape, count = item
        session = decoders.get(("own", codec), lambda stream: NvdecSession(codec, stream))
        scratch = decoders.get(("scratch", shape), lambda stream: torch.empty(
            shape, dtype=torch.uint8, device=f"cuda:{device}"))
        # a bin outputs its frames and, in an open GOP, the next keyframe: one more
        return session.decode(data, [(p, scratch.data_ptr()) for p in range(count + 1)], shape)

    return in_threads(decode, bins, threads, device)


# -- PyNvVideoCodec on the mp4 files -------------------------------------------------------------
def decode_files(paths: list[Path], codec: str, threads: int, device: int) -> Timed:
    """Each file demuxed (CreateDemuxer) and decoded whole to RGB, as a PyNvVideoCodec user
    would."""
    nvc = pynvvideocodec()

    def decode(decoders: ThreadDecoders, path: Path) -> int:
        decoder = decoders.get(codec, lambda stream: create_decoder(codec, stream, device,
                                                                    rgb=True))
        frames = sum(len(decoder.Decode(packet)) for packet in nvc.CreateDemuxer(filename=str(path)))
        return frames + len(decoder.Decode(packet(None)))

    return in_threads(decode, paths, threads, device)


def fetch_frames(requests: list[tuple[Path, int]], threads: int, device: int) -> Timed:
    """Frame ``index`` of video ``path`` for each request, through a SimpleDecoder kept per thread
    (RGB, device memory) and reconfigured to the request's video; it seeks to the keyframe before
    the frame and decodes forward."""
    nvc = pynvvideocodec()

    def fetch(decoders: ThreadDecoders, request: tuple[Path, int]) -> int:
        path, index = request
        decoder = decoders.made.get("simple")
        if decoder is None:
            decoders.made["simple"] = decoder = nvc.SimpleDecoder(
                str(path), gpu_id=device, use_device_memory=True,
                output_color_type=nvc.OutputColorType.RGB)
        else:
            decoder.reconfigure_decoder(str(path))
        decoder[index]
        return 1

    return in_threads(fetch, requests, threads, device)


# -- the rows --------------------------------------------------------------------------------------
def ceiling_rows(b: Bench) -> list[Result]:
    threads, note = b.args.threads, "raw decode of the bins, no DALI"
    bins = read_bins(b.gops, b.my_videos)
    # NV12 is what the loader decodes to; NVDEC's own RGB, for comparison. The ceiling is the best
    rows = [b.measure(f"NVDEC ceiling NV12, {t} threads", lambda t=t: decode_bins(bins, t, b.device),
                      note=note) for t in threads]
    rows.append(b.measure(f"NVDEC ceiling RGB, {max(threads)} threads",
                          lambda: decode_bins(bins, max(threads), b.device, rgb=True), note=note))
    # our own sessions: what a memory budget turns to
    rows += [b.measure(f"NVDEC ceiling NV12, our sessions, {t} threads",
                       lambda t=t: decode_bins_own(bins, t, b.device), note=note)
             for t in threads]
    return rows


def pynvc_rows(b: Bench) -> list[Result]:
    a = b.args
    threads = max(a.threads)
    paths = [b.videos / rel for rel in b.my_videos]
    # the loader's random access: random clips at random frames, every camera of each
    clips = sorted(b.clips)
    rng = np.random.default_rng([0, b.rank])
    requests = []
    for _ in range(a.baseline_batches * a.random_group_num):
        clip = clips[rng.integers(len(clips))]
        frame = int(rng.integers(b.clips[clip]))
        requests += [(b.videos / clip / camera, frame) for camera in b.cameras]
    return [
        b.measure("PyNvVideoCodec stream (mp4 demux)",
                  lambda: decode_files(paths, a.codec, threads, b.device),
                  method="PyNvVideoCodec (mp4)", note=f"whole files, {threads} threads"),
        b.measure("PyNvVideoCodec random (SimpleDecoder)",
                  lambda: fetch_frames(requests, threads, b.device),
                  method="PyNvVideoCodec (mp4)", access=RANDOM,
                  note=f"seek to the keyframe, decode forward, {threads} threads"),
    ]
