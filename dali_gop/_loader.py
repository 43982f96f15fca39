"""The loader: a few lines from a GOP root to batches of torch tensors.

    loader = make_loader("/data/gops", pattern="stream", batch_size=4)
    for batch in loader:                      # one epoch
        batch["frames"]                       # uint8 (B, cameras, T, H, W, 3), CUDA with a GPU backend
        batch["frame_idx"], batch["clip"], batch["camera"]

Sharding goes through DALI: each rank builds its own loader; ``shard_id``/``num_shards`` default to
torch.distributed's rank/world size (or RANK/WORLD_SIZE as torchrun sets them).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from dali_gop import _work_queues
from dali_gop import format as fmt
from dali_gop.backends import get_backend
from dali_gop.errors import ConfigError, DaliGopError, WorkerError
from dali_gop.hooks import DecodeHook
from dali_gop.patterns import LAST_BATCH_POLICIES, AccessPattern, pattern_from_name, shard_from_env
from dali_gop.patterns._resume import Layout, Resumed
from dali_gop._budget import DEFAULT_SHARE, Choice, estimate, fit, parse_budget
from dali_gop._dataset import Dataset
from dali_gop._run import Run, release, shutdown_soon
from dali_gop._source import GopSource
from dali_gop._workers import MAIN_GUARD_LINE, spawned_bootstrap

#: make_loader's default: how long a worker may take over one sample's read. Generous, so that
#: slow network storage does not trip it; a hung read still ends the training loop with an error
WORKER_TIMEOUT_SECONDS = 120.0

#: the version of :meth:`GopLoader.state_dict`'s format; a state of another version is refused
STATE_VERSION = 1
#: how long close() waits for a failed run's shutdown on the reaper thread
_STOPPING_SECONDS = 20.0


@dataclass(frozen=True)
class Position:
    """Where a pipeline starts: at batch ``skip`` of ``epoch`` (each rank having delivered that
    many), after the ``earlier`` layouts the epoch ran in at other rank counts or batch sizes
    (:mod:`dali_gop.patterns._resume`)."""
    epoch: int
    skip: int = 0
    earlier: tuple[Layout, ...] = ()


class GopLoader:
    """Iterates batches of one shard, an epoch per ``for``, as PyTorch's DataLoader does: each new
    ``for`` (``iter()``) starts the next epoch, and a ``break`` ends the current one.

    Each batch is a dict of torch tensors: ``frames`` uint8 (B, cameras, T, H, W, 3) RGB or BGR,
    ``frame_idx`` int64 (B, T), ``clip`` int64 (B,) indexing ``clip_names``, ``camera`` int64
    (B, cameras) indexing ``cameras``. CUDA tensors are ready on the stream that was current when
    ``next()`` returned them.

    A ``for`` after a ``break`` (or after an error) builds the pipeline anew at the next epoch:
    its stream decoders and workers carry state from batch to batch, which cannot jump. ``next()``
    after the end of an epoch goes on with the next one.

    :meth:`state_dict` says where the loader is, :meth:`load_state_dict` (or ``make_loader(...,
    state=...)``) goes on from there: a training checkpoint keeps it beside the model's.
    """

    def __init__(self, start: Callable[[Position], Run], worker_timeout: float, *,
                 identity: dict, shard: dict, state: Mapping | None = None,
                 memory_budget: int | None = None, queued_steps: int | None = None):
        self._start = start
        self._queued_steps = queued_steps
        self._queued: collections.deque = collections.deque()   # events on the caller's stream
        self._memory_budget = memory_budget
        self.worker_timeout = worker_timeout
        self._identity = identity
        self._shard = shard
        self._run: Run | None = None
        self._finalizer = None
        self._stopping = None     # a failed run shutting down on the reaper thread
        self._failure: str | None = None
        self._closed = False
        at = Position(0) if state is None else self._resume_point(state)
        self._attach(start(at))
        self.clip_names = list(self.source.dataset.clips)
        self.cameras = list(self.source.dataset.cameras)
        self.batch_size = self.source.batch_size
        self.backend_name = self._run.backend_name   # "nvdec", "cpu" or "dali"

    # -- what the current pipeline is made of -------------------------------------------------
    @property
    def source(self) -> GopSource:
        return self._run.source

    @property
    def pipeline(self):
        return self._run.pipeline

    @property
    def decode_operators(self) -> list:
        """The backend's decode operators (nvdec: decoder sessions; cpu: kept GOPs)."""
        return self._run.operators

    @property
    def settings(self) -> dict:
        """The options the pipeline runs with, after ``memory_budget`` (in bytes; None: no budget)
        lowered what it had to: ``stream_lead``, ``decode_ahead``, ``stream_decoding``,
        ``prefetch_queue_depth`` and (nvdec) ``decode_threads``, ``nvdec_sessions`` (whose NVDEC
        sessions the decode threads hold: "pynvvideocodec" or "own") and ``stream_sessions``
        (each stream slot's camera on a session of its own, in place of kept GOPs) and
        ``kept_gops`` (where stream slots keep decoded GOPs: "device" or pinned "host" memory)."""
        source = self.source
        settings = dict(memory_budget=self._memory_budget, stream_lead=source.stream_lead,
                        decode_ahead=source.decode_ahead, stream_decoding=source.stream_decoding,
                        prefetch_queue_depth=self._run.prefetch_queue_depth)
        settings.update(self._run.decoder_settings)
        return settings

    def memory(self) -> dict[str, dict[str, int]]:
        """Bytes of decoded frames the loader holds now and at its peak, by kind: ``kept_gops``
        (stream slots' GOPs), ``decoded_ahead`` (samples decoded before their batch), ``staging``
        (NV12 of the batches in flight), ``stream_rings`` (frames stream slots' own sessions
        displayed early); on the GPU for ``nvdec``, in host memory for ``cpu`` (which
        keeps GOPs only). With ``settings["kept_gops"]`` "host", nvdec's stream slots keep their
        GOPs in pinned host memory (``kept_gops_host``, in a pool of ``pinned_host`` bytes), and
        each batch's picks of them are copied into one device block (``picks_staging``).
        Counted where the loader allocates, since this pipeline was built; NVDEC's own surfaces,
        DALI's buffers and the allocator's cache are not included."""
        total: dict[str, dict[str, int]] = {}
        for operator in self._run.operators:
            for kind, figures in operator.memory().items():
                mine = total.setdefault(kind, {"now": 0, "peak": 0})
                mine["now"] += figures["now"]
                mine["peak"] += figures["peak"]
        return total

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to (counted from 0)."""
        return self._epoch

    def __len__(self) -> int:
        """Batches of the epoch under way on this rank (those delivered before a resume
        included): every epoch's, but where an epoch was resumed at another number of ranks."""
        return self._length

    # -- resuming -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where this loader is, as a small JSON-serialisable dict: the batch after the last one
        delivered. A training checkpoint keeps it beside the model's and the optimizer's; any
        rank's will do, the ranks delivering their batches in lock-step.

        Keys: ``version``; what must match to resume (``dataset``: a checksum of the clips, their
        frame counts and the cameras; ``pattern`` and its ``options``, ``seed``,
        ``last_batch_policy``); ``epoch`` and ``batches`` (each rank's batches delivered of it);
        ``shard`` (``shard_id``, ``num_shards``, ``batch_size``); ``resharded``: the layouts
        ``[num_shards, batch_size, batches]`` the epoch ran in before, where it was resumed at
        another number of ranks (usually empty)."""
        epoch, batches, earlier = self._epoch, self._delivered, self._earlier
        if batches >= len(self):    # every batch taken: the next one is the next epoch's first
            epoch, batches, earlier = epoch + 1, 0, ()
        return {"version": STATE_VERSION, **self._identity, "epoch": epoch, "batches": batches,
                "shard": dict(self._shard), "resharded": [list(layout) for layout in earlier]}

    def load_state_dict(self, state: Mapping) -> None:
        """Go on where ``state`` (from :meth:`state_dict`, here or in an earlier process) says:
        the next batch is the one after the last it had delivered, and the next ``for``
        continues that epoch. At another number of ranks (or batch size) the rest of the epoch
        is shared out anew (:mod:`dali_gop.patterns._resume`). A state of another dataset,
        pattern, seed or last-batch policy is refused (:class:`ConfigError`)."""
        self._check_open()
        at = self._resume_point(state)
        self._finalizer()
        self._failure = "its pipeline could not be built"
        self._attach(self._start(at))

    def _resume_point(self, state: Mapping) -> Position:
        return resume_point(state, self._identity, self._shard)

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> "GopLoader":
        self.reset()
        return self

    def reset(self) -> None:
        """End the epoch under way: the next batch is the next epoch's first (also after an
        error). Nothing happens at an epoch's start, nor where a resumed loader has not delivered
        a batch yet."""
        self._check_open()
        started = self._delivered > self._resumed_at
        if self._failure is not None:
            self._restart(Position(self._epoch + 1) if started else self._position())
        elif self._delivered >= len(self):
            # every batch taken, the end not yet seen (zip, islice stop early)
            if self._take()[0] == "end":
                self._next_epoch()
            else:   # an error while prefetching past the end: the next epoch, afresh
                self._restart(Position(self._epoch + 1))
        elif started:
            self._restart(Position(self._epoch + 1))

    def __next__(self) -> dict:
        self._check_open()
        if self._failure is not None:
            raise DaliGopError(f"this loader failed ({self._failure}); start a new `for` over "
                               "it, which starts the next epoch afresh, or build a new one")
        self._bound_run_ahead()
        kind, value, ready = self._take()
        if kind == "end":
            self._next_epoch()
            raise StopIteration
        if kind == "error":
            self._fail(value)
            raise value
        self._delivered += 1
        self._request()    # one batch ahead, fetched while the caller trains
        return _hand_over(value[0], ready, self._run.device_id)

    def _bound_run_ahead(self) -> None:
        """With ``queued_steps``: wait, without the GIL, until the GPU has done what the caller
        queued on its stream ``queued_steps`` calls of ``next()`` ago.

        A training thread that queues kernels faster than the GPU runs them fills the driver's
        launch queue, and then waits inside each launch while holding the GIL, so the loader's
        threads (decode threads, DALI's) cannot run and NVDEC idles. Waiting here instead, for
        its own earlier work, it still keeps ``queued_steps`` steps queued for the GPU."""
        if not self._queued_steps or self._run.device_id is None:
            return
        import torch
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self._run.device_id))
        self._queued.append(event)
        while len(self._queued) > self._queued_steps:
            self._queued.popleft().synchronize()

    def _request(self) -> None:
        self._run.request()
        self._pending = True

    def _take(self) -> tuple:
        if not self._pending:
            self._request()
        self._pending = False
        try:
            return self._run.take(self.worker_timeout)
        except BaseException as e:   # WorkerError, KeyboardInterrupt: the run cannot go on
            self._fail(e)
            raise

    def _next_epoch(self) -> None:
        self._length = self._run.next_epoch()
        self._epoch, self._delivered, self._resumed_at, self._earlier = self._epoch + 1, 0, 0, ()

    def _position(self) -> Position:
        return Position(self._epoch, self._delivered, self._earlier)

    # -- the pipeline's life --------------------------------------------------------------------
    def _attach(self, run: Run) -> None:
        self._run = run
        at = run.start
        self._length = at.skip + len(run.iterator)
        # never self: the finalizer must not keep the loader alive
        self._finalizer = weakref.finalize(self, release, run)
        self._finalizer.atexit = False    # interpreter exit: dali_gop._run shuts every run down
        self._epoch, self._delivered, self._failure = at.epoch, at.skip, None
        self._resumed_at, self._earlier = at.skip, at.earlier
        self._pending = False

    def _fail(self, error: BaseException) -> None:
        """The run is beyond use: shut it down now (on the reaper thread where a worker failed;
        close() waits for it), restart later.
        Kept as text: the exception's traceback would tie the loader into a reference cycle."""
        lines = str(error).strip().splitlines()    # DALI's carry tracebacks: the last line says it
        self._failure = f"{type(error).__name__}: {lines[-1] if lines else ''}"
        if isinstance(error, WorkerError):
            # its shutdown may wait seconds for a stopped worker to be reaped: the error first
            self._finalizer.detach()
            self._stopping = self._run
            shutdown_soon(self._run)
        else:
            self._finalizer()

    def _restart(self, at: Position) -> None:
        self._finalizer()
        self._failure = "its pipeline could not be built"
        self._attach(self._start(at))

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this loader is closed: build a new one with make_loader")

    def close(self) -> None:
        """Shut the pipeline down now, from this thread: its worker processes, DALI's threads,
        the decoders' sessions and kept frames. Also at the end of a ``with`` block, and when
        the loader is garbage collected."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()
        if self._stopping is not None:
            self._stopping.down.wait(_STOPPING_SECONDS)

    def __enter__(self) -> "GopLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resume_point(state: Mapping, identity: Mapping, shard: Mapping) -> Position:
    """Where a loader of ``identity`` on ``shard`` goes on from ``state``; refuses a state it
    cannot continue exactly, saying what differs."""
    if not isinstance(state, Mapping) or "version" not in state:
        raise ConfigError(f"a loader state is the dict GopLoader.state_dict() returns, not "
                          f"{type(state).__name__}: pass checkpoint['loader'] or the like")
    if state["version"] != STATE_VERSION:
        raise ConfigError(f"loader state version {state['version']!r}: this dali-gop reads version "
                          f"{STATE_VERSION}; resume with the dali-gop that saved it, or start "
                          "the loader without a state")
    for key, what, fix in (
            ("dataset", "another dataset (its clips, frame counts or cameras differ)",
             "the GOP root, cameras and skip_incomplete_clips it was saved with"),
            ("pattern", "another access pattern", "the pattern it was saved with"),
            ("options", "other pattern options", "the pattern options it was saved with"),
            ("seed", "another seed", "the seed it was saved with"),
            ("last_batch_policy", "another last_batch_policy", "the policy it was saved with")):
        if state.get(key) != identity[key]:
            raise ConfigError(f"the loader state is of {what}: {key} {state.get(key)!r} there, "
                              f"{identity[key]!r} here; build the loader with {fix}, or start "
                              "it without the state")
    try:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        saved = (int(state["shard"]["num_shards"]), int(state["shard"]["batch_size"]))
        earlier = tuple(tuple(int(n) for n in layout) for layout in state.get("resharded", ()))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"the loader state lacks or garbles {e}: pass the dict "
                          "GopLoader.state_dict() returned, unchanged") from None
    if epoch < 0 or batches < 0 or any(len(layout) != 3 for layout in earlier):
        raise ConfigError(f"the loader state's position is garbled (epoch {epoch}, batches "
                          f"{batches}, resharded {earlier}): pass the dict "
                          "GopLoader.state_dict() returned, unchanged")
    if saved == (shard["num_shards"], shard["batch_size"]):
        return Position(epoch, batches, earlier)
    if not batches:
        return Position(epoch, 0, earlier)
    return Position(epoch, 0, earlier + (saved + (batches,),))


def _identity(dataset: Dataset, access: AccessPattern, seed: int, policy: str) -> dict:
    """What a state must share with a loader to be resumed by it, as JSON has it."""
    fingerprint = json.dumps({"clips": dataset.clips, "cameras": list(dataset.cameras)},
                             sort_keys=True)
    if dataclasses.is_dataclass(access):
        options = {f.name: getattr(access, f.name) for f in dataclasses.fields(access)}
    else:
        options = {"repr": repr(access)}
    return json.loads(json.dumps({
        "dataset": f"{fmt.checksum(fingerprint.encode()):08x}", "pattern": access.name,
        "options": options, "seed": seed, "last_batch_policy": policy}))


def _hand_over(batch: dict, ready, device_id: int | None) -> dict:
    """The fetch thread's batch, made safe to use on the caller's current stream."""
    batch["clip"] = batch["clip"].view(-1)
    if ready is not None:
        import torch
        stream = torch.cuda.current_stream(device_id)
        stream.wait_event(ready)
        for tensor in batch.values():
            if tensor.is_cuda:
                # memory of torch's allocator (an iterator that copies DALI's outputs) goes back to
                # the fetch thread's stream only once this one is done with it. DALI's own outputs,
                # handed over without a copy, are DALI's to keep from reuse: a GPU test drops
                # batches whose kernels are still queued and checks their frames
                # (tests/test_gpu_overlap.py, the training far ahead of the GPU)
                tensor.record_stream(stream)
    return batch


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
                      "or use stream_decoding=False", UserWarning, stacklevel=3)


def _host_memory() -> int:
    """Bytes of the host's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _default_budget(decoder, device_id: int | None) -> int:
    """:data:`DEFAULT_SHARE` of the memory the backend keeps frames in: the GPU's, or the host's."""
    if decoder.device == "gpu":
        import torch
        total = torch.cuda.get_device_properties(device_id).total_memory
    else:
        total = _host_memory()
    return int(DEFAULT_SHARE * total)


def _host_share(decoder) -> int | None:
    """The pinned host memory a budget may plan for kept GOPs beyond what it must:
    :data:`DEFAULT_SHARE` of the host's memory, split between the processes of this node
    (torchrun's ``LOCAL_WORLD_SIZE``; else one a visible GPU); None for a backend that keeps
    frames in host memory anyway."""
    if decoder.device != "gpu":
        return None
    import torch
    processes = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or torch.cuda.device_count()
    return int(DEFAULT_SHARE * _host_memory()) // max(processes, 1)


def _within(budget: int, source: GopSource, dataset, access, source_options: dict, decoder,
            prefetch_queue_depth: int, strict: bool = True) -> tuple[GopSource, int]:
    """``source``, or one with options lowered until the loader's estimate fits ``budget``
    (``source_options`` updated to match, for later pipelines; ``decoder.threads`` lowered where
    the budget lowers decode threads), and the ``prefetch_queue_depth`` to run with. Not
    ``strict`` (the default budget): where nothing fits, the least choice, with a warning, rather
    than a refusal."""
    frame_bytes = source.frame_bytes()
    how = dict(staging=decoder.name == "nvdec", rgb_factor=1 if decoder.device == "gpu" else 2,
               session_bytes=lambda frames, sessions: decoder.session_bytes(frame_bytes, frames,
                                                                            sessions),
               gop_frames=source.longest_gop(),
               ring_frames=decoder.ring_frames[source.reorders()])
    wanted = Choice(source.stream_lead, source.decode_ahead, source.stream_decoding,
                    decoder.threads, decoder.sessions, prefetch_queue_depth,
                    decoder.stream_sessions, decoder.kept_gops or "")
    choice, held = fit(budget, source, wanted, strict, host_limit=_host_share(decoder), **how)
    if choice == wanted:
        return source, prefetch_queue_depth
    if sum(held.values()) > budget:
        warnings.warn(f"the default memory_budget ({budget / 2**30:.1f} GiB, a quarter of the "
                      f"memory frames are kept in) is less than this loader needs at the least "
                      f"({sum(held.values()) / 2**30:.1f} GiB): it runs with the least; pass "
                      "memory_budget= (None: no budget)", UserWarning, stacklevel=3)
    if wanted.stream_decoding and not choice.stream_decoding:
        least = sum(estimate(source, replace(choice, stream_decoding=True), **how).values())
        warnings.warn(f"memory_budget: stream decoding is off to fit it (every sample is decoded "
                      f"from its keyframe, many times slower); {least / 2**30:.1f} GiB keeps it",
                      UserWarning, stacklevel=3)
    decoder.threads, decoder.sessions = choice.threads, choice.sessions
    decoder.stream_sessions = choice.stream_sessions
    if decoder.kept_gops:
        decoder.kept_gops = choice.kept_gops
    source_options.update(stream_lead=choice.stream_lead, decode_ahead=choice.decode_ahead,
                          stream_decoding=choice.stream_decoding)
    return GopSource(dataset, access, **source_options), choice.prefetch


def make_loader(gop_root: str | os.PathLike, pattern: str | AccessPattern = "stream", *,
                batch_size: int = 4, backend: str = "auto", cameras: Sequence[str] | None = None,
                skip_incomplete_clips: bool = False,
                seed: int = 0, shard_id: int | None = None, num_shards: int | None = None,
                last_batch_policy: str = "PARTIAL", color: str = "RGB",
                color_matrix: str | None = None,
                resize: tuple[int, int] | None = None, stream_decoding: bool = True,
                stream_lead: int = 30, decode_ahead: int = 2, num_workers: int = 4,
                worker_timeout: float = WORKER_TIMEOUT_SECONDS,
                device_id: int | None = None, decode_threads: int | None = None,
                hooks: Sequence[DecodeHook] = (), index_file: str | os.PathLike | None = None,
                fix_gop_size: int | None = None, persistent_index: bool = True,
                verify_checksums: bool = False, num_threads: int = 4,
                prefetch_queue_depth: int = 2, state: Mapping | None = None,
                memory_budget: int | str | None = "auto",
                queued_steps: int | None = None) -> GopLoader:
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
        cameras: the camera videos to serve, by file name (``"CAM_FRONT.mp4"``); default: every
            camera any clip has. A clip lacking one is refused, naming it.
        skip_incomplete_clips: leave clips that lack a served camera out (with a warning naming
            them) instead of refusing the dataset.
        seed: seeds every epoch's order (``(seed, epoch)`` fixes the samples of an epoch).
        shard_id, num_shards: this rank's part of every epoch; default: torch.distributed's rank
            and world size, or ``RANK``/``WORLD_SIZE``, or one shard.
        last_batch_policy: DALI's ``"PARTIAL"`` (a short last batch), ``"FILL"`` (filled up from
            the epoch's start) or ``"DROP"``.
        color: ``"RGB"`` or ``"BGR"``.
        color_matrix: ``"bt601"`` or ``"bt709"`` replaces every video's YUV matrix; default: the
            video's tag, BT.709 where untagged (range: as tagged, limited where untagged).
        resize: ``(height, width)`` to resize to on the decode device; needed to serve clips of
            different sizes together.
        stream_decoding: stream pattern: decode each GOP once per slot, ahead, and keep it; False
            decodes every sample from its keyframe.
        stream_lead: stream pattern: how many batches before a slot reaches a GOP it is sent to the
            decoder (the first slot; later slots down to about half of it, staggered).
        decode_ahead: random and sequence access on nvdec: how many batches before its turn a
            sample is decoded (its frames wait on the GPU); 0 decodes each batch in its turn.
        num_workers: reader processes (DALI's ``py_num_workers``); they only read files.
        worker_timeout: seconds a worker may spend on one sample's read, and the training loop
            may wait for a batch, before :class:`dali_gop.errors.WorkerError` names the worker
            and what it was reading (a hung network file system).
        device_id: the GPU; default ``LOCAL_RANK`` or 0. Ignored by the cpu backend.
        decode_threads: nvdec decode threads, each on an NVDEC session of our own (default 48
            where slots stream; else 24: there they map and copy only the frames a sample
            wants, not every frame decoded on the way from its GOP start).
        hooks: :class:`dali_gop.hooks.DecodeHook` objects the nvdec operator calls (measurement).
        index_file, fix_gop_size, persistent_index: the reference loader's options of the same
            names (a seed-shaped index file; bin names from the frame number without an index;
            indexes re-read every epoch when False).
        verify_checksums: check every bin's CRC-32 as it is read.
        num_threads, prefetch_queue_depth: DALI's pipeline options.
        state: a :meth:`GopLoader.state_dict` from a checkpoint: the loader goes on with the batch
            after the last one it had delivered (see :meth:`GopLoader.load_state_dict`).
        memory_budget: bytes, or a size such as ``"8GiB"``, for what the loader holds (on the GPU
            for nvdec: decoded frames and its NVDEC sessions; in host memory for cpu: decoded
            frames): it lowers ``decode_threads`` (each holds an NVDEC session) eight at a time
            to 16 (from PyNvVideoCodec's sessions, where a backend was given those, it turns to
            ours first, at most 24), then (nvdec) keeps stream slots' decoded GOPs in pinned
            host memory (the picks of each batch copied to the GPU), then ``stream_lead``, then
            ``decode_ahead``, then ``prefetch_queue_depth`` to 1, then ``decode_threads`` to 8,
            then turns stream decoding off (with a warning: much
            slower) until its estimate fits. Where it keeps the GOPs of slots that only stream
            on the host, it runs 16 decode threads at most and doubles ``stream_lead`` (where
            those frames fit a quarter of the host's memory, shared by its processes)
            (``dali_gop._budget``; :attr:`GopLoader.settings` says what it chose), and refuses a
            budget nothing fits, naming the least that would. Default
            ``"auto"``: a quarter of the memory frames are kept in (the GPU's for nvdec and dali,
            the host's for cpu), which never refuses (where nothing fits it warns and runs with
            the least); None: no budget, the options as given.
        queued_steps: GPU backends: at most this many training steps queued on the GPU ahead
            of the training thread; ``next()`` waits (without the GIL) until the GPU is that
            close. A training loop that queues kernels much faster than the GPU runs them
            otherwise waits inside kernel launches holding the GIL, which starves the loader's
            threads. None (default): no bound.

    Returns:
        A :class:`GopLoader`: each ``for`` over it is one epoch of batches (dicts of torch tensors).
        ``close()`` it (or use ``with``) to free its workers and GPU memory at once.
    """
    if spawned_bootstrap():
        raise ConfigError(MAIN_GUARD_LINE)
    if last_batch_policy not in LAST_BATCH_POLICIES:
        raise ConfigError(f"last_batch_policy {last_batch_policy!r}: choose one of "
                          f"{LAST_BATCH_POLICIES}")
    if not worker_timeout > 0:
        raise ConfigError(f"worker_timeout must be > 0 seconds, not {worker_timeout!r}")
    if queued_steps is not None and (not isinstance(queued_steps, int) or queued_steps < 1):
        raise ConfigError(f"queued_steps must be a number of steps (1 or more) or None, not "
                          f"{queued_steps!r}")
    if shard_id is None or num_shards is None:
        shard_id, num_shards = shard_from_env()
    dataset = Dataset.open(gop_root, cameras=cameras, index_file=index_file,
                           skip_incomplete_clips=skip_incomplete_clips)
    access = pattern_from_name(pattern) if isinstance(pattern, str) else pattern
    options = {"hooks": tuple(hooks)} if hooks else {}
    if decode_threads is not None:
        options["threads"] = decode_threads
    if color_matrix is not None:
        options["color_matrix"] = color_matrix
    decoder = get_backend(backend, color=color, **options)
    if decoder.name == "nvdec":
        _work_queues.warn_if_narrow()
    # the source plans only what the backend can do: a backend without decoder state decodes every
    # sample from its keyframe, and only nvdec keeps frames decoded ahead
    source_options = dict(batch_size=batch_size, seed=seed, shard_id=shard_id,
                          num_shards=num_shards, fix_gop_size=fix_gop_size,
                          verify_checksums=verify_checksums,
                          stream_decoding=stream_decoding and decoder.stateful,
                          persistent_index=persistent_index, stream_lead=stream_lead,
                          decode_ahead=decode_ahead if decoder.decodes_ahead else 0,
                          last_batch_policy=last_batch_policy)
    source = GopSource(dataset, access, **source_options)
    decoder.settle(bool(source.stream_pairs()))
    if decoder.device == "cpu":
        device_id = None
    elif device_id is None:
        device_id = int(os.environ.get("LOCAL_RANK", 0))
    strict = memory_budget != "auto"
    if memory_budget is not None:
        memory_budget = parse_budget(memory_budget) if strict else \
            _default_budget(decoder, device_id)
        source, prefetch_queue_depth = _within(memory_budget, source, dataset, access,
                                               source_options, decoder, prefetch_queue_depth,
                                               strict)
    if decoder.threads:    # settled and fitted: the same for the pipelines a resume builds
        options.update(threads=decoder.threads, sessions=decoder.sessions,
                       stream_sessions=decoder.stream_sessions, kept_gops=decoder.kept_gops)
    dataset.check_one_size(source.store.video_info, resize)
    decoder.check_videos(source.store, dataset.videos())
    if decoder.device == "gpu" and memory_budget is None and decoder.kept_gops != "host":
        _warn_if_kept_gops_crowd_the_gpu(source.kept_gop_bytes(), device_id)
    run_options = dict(last_batch_policy=last_batch_policy, batch_size=batch_size,
                       num_workers=num_workers, device_id=device_id, num_threads=num_threads,
                       prefetch_queue_depth=prefetch_queue_depth, resize=resize, seed=seed)
    decoders = [decoder]

    def start(at: Position) -> Run:
        """A pipeline whose first batch is ``at``'s, with a decoder of its own."""
        run_source = source
        if at != Position(0):
            run_source = GopSource(dataset, Resumed(access, at.epoch, at.skip, at.earlier),
                                   **source_options)
            size = run_source.shard_size(0)
            if not (size // batch_size if last_batch_policy == "DROP" else size):
                return start(Position(at.epoch + 1))   # this rank has delivered all of it
        run_decoder = decoders.pop() if decoders else get_backend(decoder.name, color=color,
                                                                  **options)
        return Run(run_source, run_decoder, start=at, **run_options)

    return GopLoader(start, worker_timeout, state=state,
                     identity=_identity(dataset, access, seed, last_batch_policy),
                     shard=dict(shard_id=shard_id, num_shards=num_shards, batch_size=batch_size),
                     memory_budget=memory_budget, queued_steps=queued_steps)
