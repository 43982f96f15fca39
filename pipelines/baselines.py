"""The baselines of the throughput benchmark: what a DALI or PyNvVideoCodec user runs today on the
mp4 files, with no GOP store. Each returns (frames, seconds) of its timed part, for
:func:`pipelines.throughput.measure`; GPU only (DALI's video reader and PyNvVideoCodec need NVDEC).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


# -- DALI's video reader on the mp4 files -------------------------------------------------------

def timed_in_threads(work, items: list, threads: int, device: int) -> tuple[int, float]:
    """Sum of ``work(item)`` over ``items`` in a pool of ``threads``, and the seconds it took; one
    item per thread first, untimed (each thread makes its decoder then)."""
    import torch
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, items[:threads]))
        started = time.perf_counter()
        frames = sum(pool.map(work, items))
        torch.cuda.synchronize(device)
        return frames, time.perf_counter() - started

def reader_run(paths: list[str], *, batch_size: int, sequence_length: int, random_shuffle: bool,
               device: int, warmup: int, batches: int, shard_id: int = 0, num_shards: int = 1):
    """fn.readers.video(device="gpu"): ``warmup`` untimed batches, then ``batches`` timed ones;
    frames counted from the delivered batches' shapes."""
    import torch
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=4, device_id=device, seed=0)
    def reader():
        return fn.readers.video(device="gpu", filenames=paths, sequence_length=sequence_length,
                                random_shuffle=random_shuffle, shard_id=shard_id,
                                num_shards=num_shards, name="reader",
                                # file lists only; set so DALI does not warn of a changing default
                                file_list_include_preceding_frame=True)

    pipe = reader()
    pipe.build()
    try:
        for _ in range(warmup):
            pipe.run()
        torch.cuda.synchronize(device)
        started, frames = time.perf_counter(), 0
        for _ in range(batches):
            (video,) = pipe.run()
            frames += sum(shape[0] for shape in video.shape())
        torch.cuda.synchronize(device)
        return frames, time.perf_counter() - started
    finally:
        del pipe


# -- PyNvVideoCodec on the mp4 files, demuxed at run time ---------------------------------------
def pynvc_stream(paths: list[Path], codec: str, threads: int, device: int):
    """Each file demuxed (nvc.CreateDemuxer) and decoded whole to RGB by a decoder kept per
    thread; frames not copied, as in the ceiling. Warm-up: one file per thread."""
    import PyNvVideoCodec as nvc
    import torch

    from dali_gop.backends._nvdec import create_decoder
    local = threading.local()

    def decode(path: Path) -> int:
        if not hasattr(local, "decoder"):
            torch.cuda.set_device(device)
            local.stream = torch.cuda.Stream()
            local.decoder = create_decoder(codec, local.stream.cuda_stream, device)
        frames = 0
        for packet in nvc.CreateDemuxer(filename=str(path)):
            frames += sum(1 for _ in local.decoder.Decode(packet))
        return frames + sum(1 for _ in local.decoder.Decode(nvc.PacketData()))   # flush

    return timed_in_threads(decode, paths, threads, device)


def pynvc_random(requests: list[tuple[Path, int]], threads: int, device: int):
    """Frame ``index`` of video ``path`` for each request, through a SimpleDecoder kept per thread
    (RGB, device memory), reconfigured to the request's video. Warm-up: one request per thread."""
    import PyNvVideoCodec as nvc
    local = threading.local()

    def fetch(request: tuple[Path, int]) -> int:
        path, index = request
        if not hasattr(local, "decoder"):
            local.decoder = nvc.SimpleDecoder(str(path), gpu_id=device, use_device_memory=True,
                                              output_color_type=nvc.OutputColorType.RGB)
        else:
            local.decoder.reconfigure_decoder(str(path))
        local.decoder[index]
        return 1

    return timed_in_threads(fetch, requests, threads, device)
