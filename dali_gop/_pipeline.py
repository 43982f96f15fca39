"""DALI pipeline definitions over a GOP store.

``gop_video`` is the reader-like building block: call it inside your own ``@pipeline_def`` and chain
any DALI operator after it (crop, normalize, flip ... on the GPU). ``build_pipeline`` is the
ready-made pipeline the loader uses.
"""
from __future__ import annotations

from dali_gop.backends import DecodeBackend
from dali_gop._source import SOURCE_OUTPUTS, GopSource

OUTPUT_NAMES = ("frames", "frame_idx", "clip", "camera")


def gop_video(source: GopSource, backend: DecodeBackend, *, prefetch_queue_depth: int = 2,
              resize: tuple[int, int] | None = None):
    """Inside ``pipeline_def``: DataNodes ``frames`` (cameras, T, H, W, 3) uint8, ``frame_idx`` (T,),
    ``clip`` (1,), ``camera`` (cameras,).

    ``resize=(height, width)`` resizes on the backend's device, sample by sample: clips of
    different sizes come out at one size.
    """
    from nvidia.dali import fn, types

    data, plan, frame_idx, clip, camera = fn.external_source(
        source=source, num_outputs=len(SOURCE_OUTPUTS), batch=False, parallel=True,
        prefetch_queue_depth=prefetch_queue_depth,
        dtype=[types.UINT8, types.INT64, types.INT64, types.INT64, types.INT64])
    cameras = len(source.dataset.cameras)
    backend.settle(bool(source.stream_pairs()))
    backend.bind(cameras)
    frames = backend.decode(data, plan)
    if resize is not None:
        # cameras and time folded into one sequence for fn.resize; the frame size is each
        # sample's own (dims 2-4 kept, dim 0 takes the rest)
        sequence = fn.reshape(frames, src_dims=[0, 2, 3, 4], rel_shape=[-1, 1, 1, 1],
                              layout="FHWC")
        sequence = fn.resize(sequence, resize_y=resize[0], resize_x=resize[1])
        frames = fn.reshape(sequence, shape=[cameras, -1, resize[0], resize[1], 3])
    return frames, frame_idx, clip, camera


def build_pipeline(source: GopSource, backend: DecodeBackend, *, batch_size: int, num_threads: int,
                   device_id: int | None, py_num_workers: int, prefetch_queue_depth: int = 2,
                   resize: tuple[int, int] | None = None, seed: int = 0):
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  py_num_workers=py_num_workers, py_start_method="spawn", seed=seed,
                  prefetch_queue_depth=prefetch_queue_depth)
    def gop_pipeline():
        return gop_video(source, backend, prefetch_queue_depth=prefetch_queue_depth, resize=resize)

    return gop_pipeline()
