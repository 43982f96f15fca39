"""The loader: a few lines from a GOP root to batches of torch tensors.

    loader = make_loader("/data/gops", pattern="stream", batch_size=4)
    for batch in loader:                      # one epoch
        batch["frames"]                       # uint8 (B, cameras, T, H, W, 3), CUDA with a GPU backend
        batch["frame_idx"], batch["clip"], batch["camera"]

Sharding goes through DALI: each rank builds its own loader; ``shard_id``/``num_shards`` default to
torch.distributed's rank/world size (or RANK/WORLD_SIZE as torchrun sets them).
"""
from __future__ import annotations

import os
import queue
import threading
import warnings
from typing import Sequence

from dali_gop.backends import get_backend
from dali_gop.errors import ConfigError
from dali_gop.hooks import DecodeHook
from dali_gop.patterns import AccessPattern, pattern_from_name, shard_from_env
from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from dali_gop._pipeline import OUTPUT_NAMES, build_pipeline

LAST_BATCH_POLICIES = ("FILL", "DROP", "PARTIAL")
WATCHDOG_SECONDS = 2.0


def _dead_processes(pids: list[int]) -> list[int]:
    """Those of ``pids`` that have exited (gone, or a zombie not yet reaped)."""
    dead = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    dead.append(pid)
        except OSError:
            dead.append(pid)
    return dead


def _fetch(iterator, device_id: int | None, requests: queue.Queue, results: queue.Queue) -> None:
    if device_id is not None:   # the current GPU is per thread; DALI's copies go to this one
        import torch
        torch.cuda.set_device(device_id)
    while requests.get():
        try:
            results.put(("batch", next(iterator)))
        except BaseException as e:   # StopIteration included: it ends the caller's epoch
            results.put(("error", e))


class GopLoader:
    """Iterates batches of one shard, epoch after epoch (``auto_reset``): a ``for`` loop is an epoch.

    Each batch is a dict of torch tensors: ``frames`` uint8 (B, cameras, T, H, W, 3) RGB or BGR,
    ``frame_idx`` int64 (B, T), ``clip`` int64 (B,) indexing ``clip_names``, ``camera`` int64
    (B, cameras) indexing ``cameras``.
    """

    def __init__(self, pipeline, source: GopSource, last_batch_policy: str, backend):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.source = source
        self.clip_names = list(source.dataset.clips)
        self.cameras = list(source.dataset.cameras)
        self.batch_size = source.batch_size
        self.pipeline = pipeline
        self.backend_name = backend.name
        # the nvdec backend's operators, for resource checks (decoder sessions)
        self.decode_operators = getattr(backend, "operators", [])
        self._iterator = DALIGenericIterator(
            [pipeline], list(OUTPUT_NAMES), size=source.shard_size(),
            last_batch_policy=getattr(LastBatchPolicy, last_batch_policy),
            # the source pads the shard's last batch itself, wrapping to the epoch's start, and ends
            # the epoch after it: every epoch starts fresh
            last_batch_padded=True, auto_reset=True, prepare_first_batch=False)

        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._fetcher: threading.Thread | None = None
        self._broken: str | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = self._next_batch()[0]
        out["clip"] = out["clip"].view(-1)
        return out

    def _next_batch(self):
        """DALI's iterator runs in a helper thread while this one watches the worker processes.

        If a DALI worker dies (killed, out of memory), DALI 2.4 can block forever handing it the
        next task; the training loop gets an error instead, within ``WATCHDOG_SECONDS``.
        """
        if self._broken:
            raise RuntimeError(self._broken)
        if self._fetcher is None:
            # the thread holds the iterator, not the loader: dropping the loader stops it (__del__),
            # and with it go the pipeline, its workers and its decoders
            self._fetcher = threading.Thread(
                target=_fetch, daemon=True, name="dali-gop-fetch",
                args=(self._iterator, getattr(self.pipeline, "device_id", None), self._requests,
                      self._results))
            self._fetcher.start()
        self._requests.put(True)
        while True:
            try:
                kind, value = self._results.get(timeout=WATCHDOG_SECONDS)
                break
            except queue.Empty:
                dead = _dead_processes(self._worker_pids())
                if dead:
                    self._broken = (f"DALI worker process(es) {dead} died (killed, or out of "
                                    "memory): the pipeline cannot go on; build a new loader")
                    raise RuntimeError(self._broken) from None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop the helper thread and free the decoders (NVDEC sessions, kept GOPs) now, not at
        garbage collection: DALI keeps a pipeline's python operators alive past the pipeline.
        Also on ``del`` and at the end of a ``with`` block."""
        self._requests.put(False)
        if self._fetcher is not None:
            self._fetcher.join(timeout=10)
        for operator in self.decode_operators:
            operator.close()

    def __enter__(self) -> "GopLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if hasattr(self, "_requests"):
            self._requests.put(False)
            for operator in self.decode_operators:
                operator.close()

    def _worker_pids(self) -> list[int]:
        pool = getattr(self.pipeline, "_py_pool", None)
        return list(pool.pids()) if pool is not None else []

    def __len__(self) -> int:
        return len(self._iterator)

    def reset(self) -> None:
        self._iterator.reset()


def _warn_if_kept_gops_crowd_the_gpu(kept: int, device_id: int, total: int | None = None) -> None:
    """Stream decoding keeps decoded GOPs on the GPU; say so before it runs out of memory."""
    if not kept:
        return
    if total is None:
        import torch
        total = torch.cuda.get_device_properties(device_id).total_memory
    if kept > total / 2:
        warnings.warn(f"stream decoding will keep up to {kept / 2**30:.1f} GiB of decoded GOPs on "
                      f"GPU {device_id} ({total / 2**30:.0f} GiB): lower stream_lead or batch_size, "
                      "or use stream_decoding=False", ResourceWarning, stacklevel=3)


def make_loader(gop_root: str | os.PathLike, pattern: str | AccessPattern = "stream", *,
                batch_size: int = 4, backend: str = "auto", cameras: Sequence[str] | None = None,
                seed: int = 0, shard_id: int | None = None, num_shards: int | None = None,
                last_batch_policy: str = "PARTIAL", color: str = "RGB",
                resize: tuple[int, int] | None = None, stream_decoding: bool = True,
                stream_lead: int = 30, decode_ahead: int = 2, num_workers: int = 4,
                device_id: int | None = None, decode_threads: int | None = None,
                hooks: Sequence[DecodeHook] = (), index_file: str | os.PathLike | None = None,
                fix_gop_size: int | None = None, persistent_index: bool = True,
                verify_checksums: bool = False, num_threads: int = 4,
                prefetch_queue_depth: int = 2) -> GopLoader:
    """Build the DALI pipeline and the iterator over one rank's shard of a GOP store.

    Args:
        gop_root: what ``python -m preprocess`` wrote (``manifest.json`` and one folder per clip).
        pattern: ``"stream"``, ``"random"``, ``"sequence"`` (windows of 4 consecutive frames), or a
            pattern object for other options: :class:`StreamPattern`, :class:`RandomPattern`
            (``samples_per_epoch``), :class:`SequencePattern` (``length``, ``stride``,
            ``random_starts``, ``samples_per_epoch``).
        batch_size: samples (clips at one time point, every camera) per batch.
        backend: ``"nvdec"`` (NVDEC through PyNvVideoCodec, frames on the GPU), ``"cpu"`` (FFmpeg,
            frames in host memory), ``"dali"`` (DALI's own decoder, for comparison), or
            ``"auto"``: nvdec where an NVIDIA driver answers, else cpu.
        cameras: the camera videos to serve, by file name (``"CAM_FRONT.mp4"``); default: those of
            the first clip.
        seed: seeds every epoch's order (``(seed, epoch)`` fixes the samples of an epoch).
        shard_id, num_shards: this rank's part of every epoch; default: torch.distributed's rank
            and world size, or ``RANK``/``WORLD_SIZE``, or one shard.
        last_batch_policy: DALI's ``"PARTIAL"`` (a short last batch), ``"FILL"`` (filled up from
            the epoch's start) or ``"DROP"``.
        color: ``"RGB"`` or ``"BGR"``.
        resize: ``(height, width)`` to resize to on the decode device.
        stream_decoding: stream pattern: decode each GOP once per slot, ahead, and keep it; False
            decodes every sample from its keyframe.
        stream_lead: stream pattern: how many batches before a slot reaches a GOP it is sent to the
            decoder (the first slot; later slots down to about half of it, staggered).
        decode_ahead: random and sequence access on nvdec: how many batches before its turn a
            sample is decoded (its frames wait on the GPU); 0 decodes each batch in its turn.
        num_workers: reader processes (DALI's ``py_num_workers``); they only read files.
        device_id: the GPU; default ``LOCAL_RANK`` or 0. Ignored by the cpu backend.
        decode_threads: nvdec decode threads (default 48).
        hooks: :class:`dali_gop.hooks.DecodeHook` objects the nvdec operator calls (measurement).
        index_file, fix_gop_size, persistent_index: the reference loader's options of the same
            names (a seed-shaped index file; bin names from the frame number without an index;
            indexes re-read every epoch when False).
        verify_checksums: check every bin's CRC-32 as it is read.
        num_threads, prefetch_queue_depth: DALI's pipeline options.

    Returns:
        A :class:`GopLoader`: each ``for`` over it is one epoch of batches (dicts of torch tensors).
    """
    if last_batch_policy not in LAST_BATCH_POLICIES:
        raise ConfigError(f"last_batch_policy {last_batch_policy!r}: choose one of "
                          f"{LAST_BATCH_POLICIES}")
    if shard_id is None or num_shards is None:
        shard_id, num_shards = shard_from_env()
    dataset = Dataset.open(gop_root, cameras=cameras, index_file=index_file)
    access = pattern_from_name(pattern) if isinstance(pattern, str) else pattern
    options = {"hooks": tuple(hooks)} if hooks else {}
    if decode_threads is not None:
        options["threads"] = decode_threads
    decoder = get_backend(backend, color=color, **options)
    # the source plans only what the backend can do: a backend without decoder state decodes every
    # sample from its keyframe, and only nvdec keeps frames decoded ahead
    source = GopSource(dataset, access, batch_size=batch_size, seed=seed, shard_id=shard_id,
                       num_shards=num_shards, fix_gop_size=fix_gop_size,
                       verify_checksums=verify_checksums,
                       stream_decoding=stream_decoding and decoder.stateful,
                       persistent_index=persistent_index, stream_lead=stream_lead,
                       decode_ahead=decode_ahead if decoder.decodes_ahead else 0,
                       last_batch_policy=last_batch_policy)
    decoder.check_videos(source.store, [f"{clip}/{camera}" for clip in dataset.clips
                                         for camera in dataset.cameras])
    if decoder.device == "cpu":
        device_id = None
    elif device_id is None:
        device_id = int(os.environ.get("LOCAL_RANK", 0))
    if decoder.device == "gpu":
        _warn_if_kept_gops_crowd_the_gpu(source.kept_gop_bytes(), device_id)
    frame_shape = None
    if resize is not None:
        info = source.store.video_info(f"{next(iter(dataset.clips))}/{dataset.cameras[0]}")
        length = len(source.samples(0)[0].frames)
        frame_shape = (len(dataset.cameras), length, info.height, info.width)
    pipeline = build_pipeline(source, decoder, batch_size=batch_size, num_threads=num_threads,
                              device_id=device_id, py_num_workers=num_workers,
                              prefetch_queue_depth=prefetch_queue_depth, resize=resize,
                              frame_shape=frame_shape, seed=seed)
    return GopLoader(pipeline, source, last_batch_policy, decoder)
