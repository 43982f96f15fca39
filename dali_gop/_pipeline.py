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
              resize: tuple[int, int] | None = None, frame_shape: tuple[int, int, int] | None = None):
    """Inside ``pipeline_def``: DataNodes ``frames`` (cameras, T, H, W, 3) uint8, ``frame_idx`` (T,),
    ``clip`` (1,), ``camera`` (cameras,).

    ``resize=(height, width)`` resizes on the backend's device; it needs ``frame_shape``, the
    decoded (cameras, T, H, W), to fold cameras and time into one sequence for ``fn.resize``.
    """
    from nvidia.dali import fn, types

    data, plan, frame_idx, clip, camera = fn.external_source(
        source=source, num_outputs=len(SOURCE_OUTPUTS), batch=False, parallel=True,
        prefetch_queue_depth=prefetch_queue_depth,
        dtype=[types.UINT8, types.INT64, types.INT64, types.INT64, types.INT64])
    backend.bind(len(source.dataset.cameras))
    frames = backend.decode(data, plan)
    if resize is not None:
        cameras, length, height, width = frame_shape
        sequence = fn.reshape(frames, shape=[cameras * length, height, width, 3], layout="FHWC")
        sequence = fn.resize(sequence, resize_y=resize[0], resize_x=resize[1])
        frames = fn.reshape(sequence, shape=[cameras, length, resize[0], resize[1], 3])
    return frames, frame_idx, clip, camera


def build_pipeline(source: GopSource, backend: DecodeBackend, *, batch_size: int, num_threads: int,
                   device_id: int | None, py_num_workers: int, prefetch_queue_depth: int = 2,
                   resize: tuple[int, int] | None = None, frame_shape=None, seed: int = 0):
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  py_num_workers=py_num_workers, py_start_method="spawn", seed=seed,
                  prefetch_queue_depth=prefetch_queue_depth)
    def gop_pipeline():
        return gop_video(source, backend, prefetch_queue_depth=prefetch_queue_depth, resize=resize,
                         frame_shape=frame_shape)

    return gop_pipeline()
