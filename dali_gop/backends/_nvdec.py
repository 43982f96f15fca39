"""The ``nvdec`` backend: PyNvVideoCodec decoders inside the DALI pipeline, at NVDEC speed.

Data path, per batch::

    workers --(bytes, plan)--> BitstreamStash (CPU python_function: keeps the host bytes)
                               plan.gpu() --> NvdecBatchDecoder (GPU dl_tensor_python_function)
                                              pops the host bytes, feeds NVDEC from host memory,
                                              copies NV12 frames into the batch's staging or a
                                              stream slot's kept GOP, and converts them to RGB
                                              from there on DALI's stream

NVDEC parses bitstreams from host memory, and DALI lets a GPU operator take GPU inputs only, so
the bytes never go to the GPU at all: the CPU operator hands them over in order through a FIFO
(DALI runs each stage's iterations in order), and only the small plan crosses to the GPU, where
its shape lets the GPU side check that the FIFO is in step.

Decoders are made once per (thread, codec) and reused across iterations and epochs; each thread
has its own CUDA stream, and DALI's stream waits on events, so there is no device-wide
synchronization. Frames leave the decoder by driver-API device copies from their plane pointers,
one call per ``Decode`` call (PyNvVideoCodec reuses its output buffers at the next ``Decode``):
wrapping every frame in a tensor first cost more than half of NVDEC's throughput
(docs/results.md).

NVDEC decodes to NV12 and the operator converts to RGB itself (backends/_color.py), because
NVDEC's own RGB picks the matrix of untagged video by frame size, against the colour contract
every backend keeps. Everything held between decode and delivery (kept GOPs, frames decoded
ahead) is NV12: half the bytes of RGB.
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np

from dali_gop._budget import OWN_THREADS
from dali_gop.backends._base import DecodeBackend
from dali_gop.backends._color import Conversion, VideoColors, convert_frames
from dali_gop.backends._cuda import CudaDriver, DriverEvent
from dali_gop.backends._nvdec_session import NvdecSession, decode_many, submit_many
from dali_gop.backends._stream_sessions import EXTRA_SURFACES as STREAM_EXTRA_SURFACES
from dali_gop.backends._stream_sessions import (REORDER_RING_FRAMES, RING_FRAMES, SentGop,
                                                StreamPair)
from dali_gop.backends._assemble import (DecodeError, Held, KeptGops, check_outputs,
                                         check_position, frames_shape, passed_frame)
from dali_gop.hooks import DecodeHook, annotate, nested
from dali_gop.plan import RELEASE_FRAMES, Plan, Segment, segment_names

DEFAULT_THREADS = 48   # where stream slots decode whole GOPs: it kept NVDEC busiest (docs/results.md)
# Device memory of one NVDEC session beside its output buffers (decode surfaces and the decoder's
# own), in frames of its video: PyNvVideoCodec sizes it, the caller cannot.
SESSION_FRAMES = 30
REORDER_FRAMES = 4     # frames a flush may output at once beyond a call's packets (B-frames)


#: Device memory of one of our own sessions (csrc/nvdec_session.c): the decode surfaces the parser
#: asks for, two more and one output surface, with NVDEC's buffers for each, in frames of its video
#: (a bound on what sessions were measured to hold: docs/results.md)
OWN_SESSION_FRAMES = 24
#: the same for a stream slot's camera (dali_gop.backends._stream_sessions), its ring aside: its
#: session (no surfaces beyond the parser's minimum) and what else the loader holds for the pair.
#: The session alone is smaller, but with only it counted, pairs held more than the memory budget
#: they were planned for; this bounds what they held in the loader (docs/results.md)
STREAM_SESSION_FRAMES = 27
#: threads of the stream pairs, at most (fewer where there are fewer decode threads): every
#: thread runs Python for each pass over its pairs, and the operator's thread waits for the GIL
#: after each of its short calls; 8 fed NVDEC best of 4, 8 and 16 (docs/results.md)
STREAM_LANES = 8
#: whether a thread decodes its pairs' packets in one call, their pictures queued on NVDEC
#: together and their frames given back after one sync (else a pair per call, each frame its own
#: sync): faster in the loader and in the pair probe (docs/results.md)
STREAM_AT_ONCE = True
#: groups a thread feeds its pairs in, with :data:`STREAM_AT_ONCE`: it queues one group's pictures
#: on NVDEC before it waits for the group fed last and runs its Python, so that NVDEC has its
#: pictures all the while (one group: nothing of the thread's while its Python runs); three, as
#: the loader's stream row on pairs ran faster with three than with two on average over runs of
#: both taking turns on one machine, though single runs overlap (docs/results.md)
STREAM_GROUPS = 3
#: nice steps the decode threads run below the thread that made them (0: the same priority):
#: where they and a training thread want the same cores, the OS gives the training thread its
#: core first; an A/B of the benchmark (``--decode_nice``) until a training step beside the
#: loader shows what it does
DECODE_NICE = 0
#: what a session holds whatever the frame size (either kind)
SESSION_BASE = 4 << 20


def session_bytes(frame_bytes: int, frames_per_call: int, sessions: str = "pynvvideocodec") -> int:
    """Device bytes one NVDEC session holds for frames of ``frame_bytes`` (NV12): a decoder
    thread's (``sessions`` "own" or "pynvvideocodec") or a stream slot camera's ("stream").
    Ours hold no frames between calls. PyNvVideoCodec's, when a ``Decode`` call outputs up to
    ``frames_per_call`` frames, keep every frame of a call valid until the next call, in output
    buffers that stay with the decoder (and grow past one call's frames: twice that bounds what
    was measured, docs/results.md)."""
    if sessions == "own":
        return SESSION_BASE + OWN_SESSION_FRAMES * frame_bytes
    if sessions == "stream":
        return SESSION_BASE + STREAM_SESSION_FRAMES * frame_bytes
    return SESSION_BASE + (SESSION_FRAMES + 2 * frames_per_call + REORDER_FRAMES) * frame_bytes


def pynvvideocodec():
    import PyNvVideoCodec as nvc   # needs the NVIDIA driver: import only when decoding
    return nvc


def create_decoder(codec: str, stream_handle: int, device_id: int, *, rgb: bool = False):
    """A PyNvVideoCodec decoder on ``stream_handle``: NV12 out of NVDEC, or NVDEC's own RGB with
    ``rgb`` (whose matrix for untagged video depends on the frame size: the benchmark's ceiling
    only)."""
    nvc = pynvvideocodec()
    options = dict(gpuid=device_id, codec=getattr(nvc.cudaVideoCodec, {"h264": "H264", "hevc": "HEVC"}[codec]),
                   cudacontext=0, cudastream=stream_handle, usedevicememory=True)
    if rgb:
        options["outputColorType"] = nvc.OutputColorType.RGB
    return nvc.CreateDecoder(**options)


def packet(buffer: np.ndarray | None):
    """A PacketData over ``buffer`` (not copied); None: the flush packet."""
    made = pynvvideocodec().PacketData()
    if buffer is not None:
        made.bsl_data = buffer.ctypes.data
        made.bsl = buffer.size
    return made


def decode_calls(decoder, data: np.ndarray, segment: Segment,
                 sink: Callable[[int, list], None]) -> int:
    """Feed a segment in one ``Decode`` call, then flush, calling ``sink(first_position, frames)``
    with the frames each call output (display order) while they are valid (PyNvVideoCodec reuses
    its buffers at the next ``Decode``). Returns the frames output."""
    return _decode_and_flush(decoder, data[segment.offset:segment.offset + segment.size], sink)


def _decode_and_flush(decoder, data: np.ndarray, sink: Callable[[int, list], None]) -> int:
    position = 0
    for data_or_flush in (data, None):
        frames = decoder.Decode(packet(data_or_flush))
        if frames:
            sink(position, frames)
            position += len(frames)
    return position


def frame_sink(driver: CudaDriver, targets: Callable[[int], Sequence[int]], frame_shape: tuple[int, ...],
               stream: int, device: int) -> Callable[[int, list], None]:
    """A :func:`decode_calls` sink copying output ``position`` to each of
    ``targets(position)`` (device pointers to dense ``frame_shape`` uint8 buffers: (H*3/2, W)
    for NV12) on ``stream``: one driver call per ``Decode`` call."""
    nbytes = math.prod(frame_shape)
    checked = False

    def sink(first, frames):
        nonlocal checked
        if not checked:
            _check_frame(frames[0], frame_shape)
            checked = True
        destinations, sources = [], []
        for offset, frame in enumerate(frames):
            pointers = targets(first + offset)
            if pointers:
                plane = frame.GetPtrToPlane(0)
                for pointer in pointers:
                    destinations.append(pointer)
                    sources.append(plane)
        if destinations:
            driver.copy_many(destinations, sources, [nbytes] * len(destinations), stream,
                           device)

    return sink


def _check_frame(frame, frame_shape: tuple[int, ...]) -> None:
    shape, strides = tuple(frame.shape), tuple(frame.strides)
    if shape != tuple(frame_shape):
        raise DecodeError(f"NVDEC frame {shape} does not fit the sample's "
                          f"{tuple(frame_shape)} (cameras or clips of different sizes?)")
    if strides != _dense_strides(shape):
        raise DecodeError(f"PyNvVideoCodec gave a padded frame (strides {strides}); "
                          "this backend expects dense frames")


def decode_failure(error: Exception, name: str, codec: str, frame_shape) -> DecodeError:
    """The error of a session's failed decode, naming the bin and what to do."""
    if "cuvidCreateDecoder" in str(error):   # the video itself is beyond this GPU's NVDEC
        height, width = frame_shape[0] * 2 // 3, frame_shape[1]
        failure = DecodeError(
            f"{name}: this GPU's NVDEC cannot decode {codec} at {width}x{height} "
            "(below its minimum size, e.g. 144x144 for HEVC, or above its maximum); use "
            "backend='cpu' for these videos, or re-encode them")
    elif isinstance(error, DecodeError):
        failure = error if str(error).startswith(name) else DecodeError(f"{name}: {error}")
    else:
        failure = DecodeError(f"{name}: NVDEC failed ({error})")
        failure.__cause__ = error
    failure.__suppress_context__ = True
    return failure


class PyNvVideoCodecSession:
    """PyNvVideoCodec's decoder behind :class:`NvdecSession`'s face, so that the operator feeds
    either kind alike: ``decode`` copies each wanted output of a segment's bytes to its pointers,
    one driver call per ``Decode`` call, on the thread's ``stream``."""

    def __init__(self, codec: str, stream: int, device: int, driver: CudaDriver):
        self._decoder = create_decoder(codec, stream, device)   # NV12
        self._stream, self._device, self._driver = stream, device, driver

    def decode(self, data: np.ndarray, targets: Sequence[tuple[int, int]],
               frame_shape: tuple[int, int]) -> int:
        by_position = collections.defaultdict(list)
        for position, pointer in targets:
            by_position[position].append(pointer)
        sink = frame_sink(self._driver, lambda p: by_position.get(p, ()), frame_shape,
                          self._stream, self._device)
        return _decode_and_flush(self._decoder, data, sink)

    def close(self) -> None:
        self._decoder = None


def _dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


class BitstreamStash:
    """FIFO from the CPU operator to the GPU operator: host bytes and plans of each batch."""

    def __init__(self):
        self._batches: collections.deque = collections.deque()

    def put(self, datas, plans):
        # DALI's input buffers live only during this call: keep copies
        self._batches.append(([np.array(d) for d in datas], [np.array(p) for p in plans]))
        return [np.array(p) for p in plans]

    def __len__(self) -> int:
        return len(self._batches)

    def take(self, wait: bool = True):
        """The oldest stashed batch; None if there is none and ``wait`` is False."""
        if not self._batches:
            if wait:
                raise DecodeError("nvdec: GPU stage ran ahead of the CPU stage (no stashed batch)")
            return None
        return self._batches.popleft()


class _DecodePool:
    """Daemon threads running (function, args) jobs in submission order.

    Not ``ThreadPoolExecutor``: its ``submit`` costs DALI's thread far more (its idle semaphore and
    thread-count checks contend with the workers) than a ``queue.SimpleQueue`` put.
    """

    def __init__(self, threads: int, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        lower_priority(DECODE_NICE)
        self._work()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            _run_job(job)

    def shutdown(self) -> None:
        """Cancel what has not started, let running jobs end, stop the threads."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def lower_priority(steps: int) -> None:
    """The calling thread ``steps`` nice steps below where it is (Linux: a thread's own nice value;
    raising it needs no privilege); nothing where the OS will not."""
    if steps <= 0:
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + steps)
    except OSError:
        pass


def _run_job(job) -> None:
    future, fn, args = job
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args))
    except BaseException as e:   # the consumer of the future raises it
        future.set_exception(e)


class _Lane(_DecodePool):
    """One decode thread for some stream pairs: their picks first, in the order submitted, and
    between picks the frames ahead of them (``ahead(lane)``: whether it did any), as far as their
    rings have room; it sleeps when there is neither, until the next picks. ``land(lane)``
    finishes the packets it left on NVDEC (``in_flight``) when it stops."""

    def __init__(self, name: str, ahead: Callable[["_Lane"], bool],
                 land: Callable[["_Lane"], bool]):
        self._ahead, self._land = ahead, land
        self.pairs: list = []
        self.cursor = 0          # the pair the next pass of ``ahead`` begins with
        self.group = 0           # the group of pairs the next pass feeds first (STREAM_GROUPS)
        self.in_flight = None    # (Submitted, its pairs): packets on NVDEC, frames not copied
        super().__init__(1, name)

    def waiting(self) -> bool:
        """Whether picks are queued (``ahead`` then stops, so that they wait one call, not a pass
        over every pair)."""
        return not self._queue.empty()

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                try:
                    if self._ahead(self):
                        continue
                except Exception:     # the picks that want the frames meet it again
                    pass
                job = self._queue.get()
            if job is None:
                self._land(self)
                return
            _run_job(job)


@dataclass
class _ThreadDecoders:
    stream: object
    device_id: int = 0
    decoders: dict = field(default_factory=dict)


class PinnedChunks:
    """Pinned host memory for the chunks of GOPs kept on the host (the backend's ``kept_gops``
    "host"): slabs carved into chunks of one size each, a chunk back in the pool once nothing
    refers to it (:class:`PinnedChunk`).

    A chunk's reads are DALI's stream's copies of picked frames, and a chunk comes back with
    :attr:`reads`, an event DALI's stream records after the latest of them: a decode writing a
    chunk waits for that event alone, not for everything queued on DALI's stream (as the device
    chunks, stream-ordered by torch's allocator, must). Chunks are taken oldest first, and while
    the oldest is still being read the pool pins another slab: a decode thread then waits on
    neither, where it would otherwise block at its first frame until DALI's stream caught up.
    Slabs stay until :meth:`clear`: pinning memory takes milliseconds."""

    #: chunks a slab holds, about: torch's pinned allocator rounds a request up to a power of two,
    #: so a slab is that power of two, filled with as many chunks as fit
    SLAB_CHUNKS = 16

    def __init__(self, held: Held):
        self._free: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self._slabs: list = []
        self._held = held
        #: DALI's thread's CudaDriver, which asks whether a chunk's reads are done (None: no one
        #: asks, and a chunk being read is taken as it comes)
        self.driver: CudaDriver | None = None
        #: DriverEvent after the latest reads of chunks queued on DALI's stream (None: none yet)
        self.reads = None

    def take(self, nbytes: int) -> "PinnedChunk":
        """A chunk of ``nbytes``; its ``after`` is the event its writes must wait for (None: none).
        Taken on DALI's thread only."""
        free = self._free[nbytes]
        if not free or (len(free) < self.SLAB_CHUNKS and not self._done(free[0][1])):
            self._grow(nbytes)
        pointer, after = free.popleft()
        return PinnedChunk(self, nbytes, pointer, after)

    def _done(self, event) -> bool:
        return event is None or self.driver is None or self.driver.done(event.handle)

    def give_back(self, nbytes: int, pointer: int) -> None:
        # a deque: safe from any thread's garbage; every read of the chunk was queued before
        # ``reads`` was recorded, since the batches that read it hold it until then
        self._free[nbytes].append((pointer, self.reads))

    def _grow(self, nbytes: int) -> None:
        import torch
        slab_bytes = 1 << (nbytes * self.SLAB_CHUNKS - 1).bit_length()
        count = slab_bytes // nbytes
        slab = torch.empty(count * nbytes, dtype=torch.uint8, pin_memory=True)
        self._slabs.append(slab)
        self._held.add("pinned_host", slab_bytes)
        # fresh chunks first: nothing reads them
        self._free[nbytes].extendleft((slab.data_ptr() + i * nbytes, None)
                                      for i in reversed(range(count)))

    def clear(self) -> None:
        self._free.clear()
        self._slabs.clear()
        self.reads = None
        self._held.add("pinned_host", -self._held.now["pinned_host"])


class PinnedChunk:
    """A chunk of :class:`PinnedChunks`, back in its pool when dropped; ``after``: the event after
    its last reads, or None."""

    __slots__ = ("_pool", "_nbytes", "_pointer", "after")

    def __init__(self, pool: PinnedChunks, nbytes: int, pointer: int, after=None):
        self._pool, self._nbytes, self._pointer, self.after = pool, nbytes, pointer, after

    def data_ptr(self) -> int:
        return self._pointer

    def __del__(self):
        self._pool.give_back(self._nbytes, self._pointer)


class DecodedGop:
    """A whole GOP a stream slot will pick from, decoded once by a pool thread while earlier batches
    go by, into NV12 chunks of :attr:`CHUNK_FRAMES` frames ((frames, H*3/2, W) each), on the
    device or in pinned host memory. A slot's picks of a kept GOP move forward
    (:class:`dali_gop.plan.StreamStep`), so the chunks below a pick are let go
    (:meth:`release_below`): a slot then holds about one GOP, not the one it picks from and the
    next one whole."""

    CHUNK_FRAMES = RELEASE_FRAMES

    def __init__(self, name: str, count: int, frame_shape: tuple[int, ...]):
        self.name = name
        self.count = count
        self.frame_shape = tuple(frame_shape)
        self.frame_bytes = math.prod(self.frame_shape)
        self.chunks: list = []               # allocated on DALI's stream (:meth:`allocate`)
        self.pointers: tuple[int, ...] = ()  # of each frame, for the pool thread's copies
        self.on_host = False                 # chunks of pinned host memory
        self.released = 0                    # leading chunks let go
        self.future: Future | None = None    # -> CUDA event recorded after the last frame's copy
        self._ready_for: int | None = None   # the consumer stream that already waits for it

    def allocate(self, pinned: PinnedChunks | None = None) -> None:
        """The chunks, on the current stream, or of ``pinned`` where given."""
        import torch
        size = self.CHUNK_FRAMES
        counts = [min(size, self.count - first) for first in range(0, self.count, size)]
        self.on_host = pinned is not None
        if self.on_host:   # whole chunks, so that every chunk of the pool fits every GOP's
            self.chunks = [pinned.take(size * self.frame_bytes) for _ in counts]
        else:
            self.chunks = [torch.empty((frames, *self.frame_shape), dtype=torch.uint8,
                                       device="cuda") for frames in counts]
        self.pointers = tuple(chunk.data_ptr() + i * self.frame_bytes
                              for chunk, frames in zip(self.chunks, counts)
                              for i in range(frames))

    def writes_after(self, allocated: DriverEvent) -> list:
        """The events the decode into the chunks waits for: on the host, each chunk's last reads
        (once each event); on the device, ``allocated``, after everything DALI's stream queued
        before the chunks were allocated, which is how torch's allocator orders their reuse."""
        if not self.on_host:
            return [allocated]
        return list({id(c.after): c.after for c in self.chunks if c.after is not None}.values())

    def kept_bytes(self) -> int:
        return (self.count - min(self.released * self.CHUNK_FRAMES, self.count)) * self.frame_bytes

    def check_pick(self, position: int, frame_shape: tuple[int, ...]) -> int:
        """``position`` for a sample of frames ``frame_shape``, checked: a raw copy must never
        overrun or scramble, nor read a chunk let go."""
        check_position(position, self.count, self.name)
        if frame_shape != self.frame_shape:
            raise DecodeError(f"{self.name}: frames of {self.frame_shape} do not fit the "
                              f"sample's {frame_shape} (clips of different sizes?)")
        if position // self.CHUNK_FRAMES < self.released:
            raise passed_frame(self.name, position)
        return position

    def release_below(self, position: int) -> list:
        """Let go of the chunks wholly below frame ``position``, and return them: the caller keeps
        them until its batch's copies are queued on DALI's stream, which waits for the decode
        first; only then may the allocator hand their blocks out again."""
        upto = min(position // self.CHUNK_FRAMES, len(self.chunks))
        if upto <= self.released:
            return []
        freed = self.chunks[self.released:upto]
        self.chunks[self.released:upto] = [None] * len(freed)
        self.released = upto
        return freed

    def source(self, position: int, consumer_stream: int, driver: CudaDriver) -> int:
        """Device pointer of frame ``position``, once ``consumer_stream`` (DALI's) waits for the
        decode; it waits once, the slot's later picks queue behind that wait."""
        if self._ready_for != consumer_stream:
            decoded = self.future.result()     # a decode error surfaces here
            driver.wait(consumer_stream, decoded.cuda_event)
            self._ready_for = consumer_stream
        return self.pointers[position]


@dataclass
class _Decoded:
    """Frames of a sample decoded ahead: its NV12 staging, the decodes writing it, and each
    camera's conversion."""
    frames: object
    futures: list
    conversions: list


class _PairPicks(NamedTuple):
    """A stream step's picks of one (slot, camera) with a session of its own, for its lane."""
    key: tuple[int, int]         # (slot, camera)
    gop: SentGop                 # picked from
    positions: list[int]
    pointers: list[int]          # where each pick's frame goes (the batch's staging)
    restart: bool                # the slot begins again here
    sent: list                   # [(SentGop, the position of the slot's first pick)] sent now


@dataclass
class _Job:
    """One batch in flight: each sample's frames (cameras, T, H, W), its NV12 staging (cameras, T,
    H*3/2, W; None where every frame is picked from a kept GOP) and each camera's conversion to
    RGB, futures of its plain segments, and its stream picks."""
    plan_shapes: list
    staging: list
    conversions: list
    shapes: list
    staging_bytes: int = 0   # of the samples decoded for this batch (not ahead)
    futures: list = field(default_factory=list)
    stream_picks: list = field(default_factory=list)  # (DecodedGop, position, (sample, frame))
    picked: dict = field(default_factory=dict)        # (sample, frame) -> NV12 in a kept GOP
    host_picked: dict = field(default_factory=dict)   # (sample, frame) -> bytes, kept on the host
    pair_picks: list = field(default_factory=list)    # _PairPicks
    pair_futures: list = field(default_factory=list)  # -> an event after their copies
    released: list = field(default_factory=list)      # chunks let go, alive until it is done
    errors: list = field(default_factory=list)


class NvdecBatchDecoder:
    """GPU python operator: a batch of (host bytes, plan) -> frames (cameras, T, H, W, 3) per sample,
    converted from NVDEC's NV12 as ``colors`` says for each video.

    Decoding runs ahead three ways. Whatever the CPU stage has stashed (in practice the next
    batch: DALI runs that stage one batch ahead of this one) is scheduled at once. Plain samples
    reach the operator some batches before their turn when the source decodes ahead
    (``GopSource.decode_ahead``): their frames are decoded into tensors kept until then, so the
    pool always has batches queued and NVDEC does not idle at batch barriers. Stream slots get
    their GOPs some batches before they reach them (see :class:`dali_gop._source.GopSource`).
    Each is decoded whole, once, in the background, and the slot's samples only copy frames out;
    or, with ``stream_sessions`` (the backend's, off by default: not yet at NVDEC's speed), each
    (slot, camera) has a session of ours that decodes the frames as the slot picks them, a few
    ahead (:mod:`dali_gop.backends._stream_sessions`), on a thread it is pinned to, so that its
    picks are decoded in order.

    The batch's Python runs in DALI's thread while dozens of decode threads want the GIL too, so
    it is kept short and keeps the GIL: one staging allocation per batch (and one per GOP a stream
    slot is sent, all on DALI's stream), driver calls that hold the GIL (:class:`CudaDriver`), the
    stream picks converted where they lie in their kept GOPs.
    """

    def __init__(self, stash: BitstreamStash, color: str = "RGB", threads: int = DEFAULT_THREADS,
                 hooks: Sequence[DecodeHook] = (), colors: VideoColors | None = None,
                 sessions: str = "pynvvideocodec", stream_sessions: bool = False,
                 kept_gops: str = "device"):
        self.hooks = tuple(hooks)
        self.stash = stash
        self.sessions = sessions
        self.stream_sessions = stream_sessions
        self.bgr = color == "BGR"
        self.colors = colors or VideoColors()
        self.threads = threads
        self._dali_streams: dict[int, object] = {}
        self.held = Held()
        # stream slots' GOPs in pinned host memory ("host"), each batch's picks copied to the
        # device: what they hold leaves the device, for PCIe traffic of twice the frames
        self._pinned = PinnedChunks(self.held) if kept_gops == "host" else None
        self._picks_staging = None        # their picks on the device (:meth:`_from_host`)
        self.kept = KeptGops(self.held, lambda gop: gop.kept_bytes(),
                             "kept_gops_host" if self._pinned else "kept_gops")
        self.pairs: dict[tuple[int, int], StreamPair] = {}
        self._lanes: list[_Lane] = []         # threads of the stream pairs
        self._device_id = 0
        self.ahead: dict[int, _Decoded] = {}
        self._driver: CudaDriver | None = None         # DALI's thread: keeps the GIL
        self._pool_driver: CudaDriver | None = None    # decode threads: drop it
        self._pool: _DecodePool | None = None
        self._local = threading.local()
        self._thread_decoders: list[_ThreadDecoders] = []
        self._pending: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    # -- resources ------------------------------------------------------------------------------
    def decoder_count(self) -> int:
        return sum(len(t.decoders) for t in self._thread_decoders) + \
            sum(pair.session is not None for pair in list(self.pairs.values()))

    def memory(self) -> dict[str, dict[str, int]]:
        """Bytes of frames this operator holds, by kind, now and at peak (:class:`Held`): on the
        device, but for "kept_gops_host" and "pinned_host" (its pool) in pinned host memory.
        NVDEC's own surfaces and DALI's buffers are not among them."""
        return self.held.report()

    def _thread_state(self, device_id: int) -> _ThreadDecoders:
        import torch
        state = getattr(self._local, "state", None)
        if state is None:
            torch.cuda.set_device(device_id)
            # a stream of the thread's own (CudaDriver.new_stream says why not torch's)
            stream = torch.cuda.ExternalStream(self._pool_driver.new_stream(device_id),
                                               device=device_id)
            state = self._local.state = _ThreadDecoders(stream, device_id)
            with self._lock:
                self._thread_decoders.append(state)
        return state

    def _decoder(self, state: _ThreadDecoders, codec: str, device_id: int):
        decoder = state.decoders.get(codec)
        if decoder is None:
            stream = state.stream.cuda_stream
            decoder = state.decoders[codec] = NvdecSession(codec, stream) \
                if self.sessions == "own" else \
                PyNvVideoCodecSession(codec, stream, device_id, self._pool_driver)
        return decoder

    def close(self) -> None:
        """Free the NVDEC sessions, kept GOPs and frames decoded ahead; later batches fail with a
        clear error."""
        self._closed = True
        for pool in [self._pool, *self._lanes]:
            if pool is not None:
                pool.shutdown()
        with self._lock:
            for state in self._thread_decoders:
                for decoder in state.decoders.values():
                    decoder.close()
                state.decoders.clear()
                if self._pinned is not None:
                    # its copies into pinned chunks end before the pool lets them go: torch's
                    # pinned cache would hand them out at once, to anyone
                    state.stream.synchronize()
                # its thread is gone; what it queued still runs to its end
                self._pool_driver.destroy_stream(state.stream.cuda_stream, state.device_id)
            self._thread_decoders.clear()
        for pair in self.pairs.values():
            pair.close()
            pair.ring = None
        self.pairs.clear()
        self.kept.clear()
        self.ahead.clear()
        self._pending.clear()
        if self._pinned is not None:
            self._pinned.clear()
        self._picks_staging = None
        self.held.clear()

    def _submit(self, fn, *args, lane: int | None = None) -> Future:
        """``fn(*args)`` on a decode thread; on the thread of ``lane`` where given."""
        if self._closed:
            raise DecodeError("nvdec: the loader was closed")
        if lane is not None:
            return self._lanes[lane].submit(fn, *args)
        if self._pool is None:
            self._pool = _DecodePool(self.threads, "nvdec")
        return self._pool.submit(fn, *args)

    # -- the operator ---------------------------------------------------------------------------
    def __call__(self, plan_tokens):
        with annotate("decode (nvdec)", color="red"), \
                self._hooked("batch", len(self.stash)):
            return self._decode_batch(plan_tokens)

    def _hooked(self, method: str, *args):
        return nested(self.hooks, method, *args) if self.hooks else contextlib.nullcontext()

    def _decode_batch(self, plan_tokens):
        import torch
        from nvidia.dali import python_function_plugin
        from torch.utils.dlpack import from_dlpack, to_dlpack

        if self._driver is None:
            self._driver, self._pool_driver = CudaDriver(hold_gil=True), CudaDriver(hold_gil=False)
            if self._pinned is not None:
                self._pinned.driver = self._driver
        shapes = [tuple(from_dlpack(t).shape) for t in plan_tokens]
        device_id = torch.cuda.current_device()
        handle = python_function_plugin.current_dali_stream()
        dali_stream = self._dali_streams.get(handle)
        if dali_stream is None:
            dali_stream = self._dali_streams[handle] = torch.cuda.ExternalStream(handle,
                                                                                 device=device_id)
        with self._hooked("schedule"):
            job = self._pending.popleft() if self._pending else \
                self._start(self.stash.take(), device_id, dali_stream)
            while (upcoming := self.stash.take(wait=False)) is not None:
                self._pending.append(self._start(upcoming, device_id, dali_stream))
        if job.plan_shapes != shapes:
            raise DecodeError("nvdec: stashed bytes do not match this batch's plans (pipeline out "
                              "of step); rebuild the pipeline")
        try:
            with self._hooked("finish"):
                with self._hooked("wait"):
                    self._finish(job, handle)
                with torch.cuda.stream(dali_stream):
                    outputs = self._to_rgb(job, handle, device_id)
        finally:
            self.held.add("staging", -job.staging_bytes)
        return [to_dlpack(out) for out in outputs]

    def _to_rgb(self, job: _Job, dali_stream: int, device_id: int) -> list:
        """The batch's frames, converted on the current (DALI's) stream from where each lies in NV12
        (its sample's staging, or the kept GOP a stream slot picked it from): one kernel for the
        frames of each conversion, into one tensor when the samples agree in shape."""
        import torch
        self._from_host(job, dali_stream, device_id)
        if len(set(job.shapes)) == 1:
            block = torch.empty((len(job.shapes), *job.shapes[0], 3), dtype=torch.uint8,
                                device="cuda")
            outputs = list(block.unbind(0))
        else:
            outputs = [torch.empty((*shape, 3), dtype=torch.uint8, device="cuda")
                       for shape in job.shapes]
        groups: dict[tuple, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
        for i, (out, (cameras, length, height, width)) in enumerate(zip(outputs, job.shapes)):
            rgb_bytes, nv12_bytes = height * width * 3, height * 3 // 2 * width
            staging = job.staging[i].data_ptr() if job.staging[i] is not None else None
            for camera in range(cameras):
                sources, destinations = groups[(job.conversions[i][camera], height, width)]
                for frame in range(camera * length, (camera + 1) * length):
                    picked = job.picked.get((i, frame))
                    sources.append(picked if picked is not None else staging + frame * nv12_bytes)
                    destinations.append(out.data_ptr() + frame * rgb_bytes)

        def copy(destinations, sources, sizes):
            self._driver.copy_many(destinations, sources, sizes, dali_stream, device_id)
        for (conversion, height, width), (sources, destinations) in groups.items():
            convert_frames(sources, destinations, height, width, conversion, self.bgr,
                           outputs[0].device, copy)
        return outputs

    def _from_host(self, job: _Job, dali_stream: int, device_id: int) -> None:
        """The batch's picks of GOPs kept on the host, copied on the current (DALI's) stream into
        one device block, which :attr:`_Job.picked` then points into. The block stays for the
        next batches (``picks_staging``), whose copies DALI's stream orders behind this batch's
        reads, so the allocator is not asked for a block of another size beside the outputs'
        every batch."""
        import torch
        if not job.host_picked:
            return
        keys = list(job.host_picked)
        sizes = [job.host_picked[key] for key in keys]
        needed = sum(sizes)
        block = self._picks_staging
        if block is None or block.numel() < needed:
            if block is not None:
                self.held.add("picks_staging", -block.numel())
            block = self._picks_staging = torch.empty(needed, dtype=torch.uint8, device="cuda")
            self.held.add("picks_staging", block.numel())
        destinations, at = [], block.data_ptr()
        for nbytes in sizes:
            destinations.append(at)
            at += nbytes
        self._driver.copy_many(destinations, [job.picked[key] for key in keys], sizes,
                               dali_stream, device_id)
        self._pinned.reads = DriverEvent(self._driver, dali_stream)
        job.picked.update(zip(keys, destinations))

    def _finish(self, job: _Job, dali_stream: int) -> None:
        """Make DALI's stream wait for the batch's decodes (the stream pairs' copies among them)
        and find its picks of kept GOPs; the first error of the batch is raised."""
        errors = list(job.errors)
        for future in job.futures:
            try:
                self._driver.wait(dali_stream, future.result().cuda_event)
            except Exception as e:
                errors.append(e)
        for future in job.pair_futures:
            try:
                self._driver.wait(dali_stream, future.result().cuda_event)
            except Exception as e:
                errors.append(e)
        failed: set[DecodedGop] = set()
        for gop, position, frame in job.stream_picks:
            if gop in failed:
                continue
            try:
                job.picked[frame] = gop.source(position, dali_stream, self._driver)
                if gop.on_host:
                    job.host_picked[frame] = gop.frame_bytes
            except Exception as e:
                failed.add(gop)
                errors.append(e)
        if errors:
            raise errors[0]

    def _start(self, batch, device_id: int, dali_stream) -> _Job:
        """Allocate a batch's outputs (and its samples' decoded ahead) on DALI's stream and
        schedule the decodes, in batch order: the stream slots' bookkeeping relies on it."""
        import torch
        datas, plans = batch
        decoded = [Plan.from_array(p) for p in plans]
        names = [segment_names(d, p.names_offset) for d, p in zip(datas, decoded)]
        job = _Job([p.shape for p in plans], [None] * len(plans), [None] * len(plans),
                   [None] * len(plans))
        now = [i for i, plan in enumerate(decoded) if plan.kept_key < 0]
        ahead = [i for i, plan in enumerate(decoded) if plan.ahead_key >= 0]
        for i, plan in enumerate(decoded):
            if plan.kept_key >= 0:
                kept = self.ahead.pop(plan.kept_key, None)
                if kept is None:
                    job.errors.append(DecodeError(
                        f"nvdec: sample {plan.kept_key >> 32}:{plan.kept_key & 0xffffffff} was "
                        "never decoded ahead (pipeline out of step); rebuild the pipeline"))
                    continue
                job.staging[i], job.conversions[i] = kept.frames, kept.conversions
                cameras, length, rows, width = kept.frames.shape
                job.shapes[i] = (cameras, length, rows * 2 // 3, width)
                job.futures += kept.futures
                self.held.add("decoded_ahead", -kept.frames.numel())
        tasks, sends = [], []
        for i in now:
            job.shapes[i] = frames_shape(decoded[i].own_requests, names[i])
        # frames picked from kept GOPs are converted where they lie: no staging for them
        staged = [i for i in now if self.stream_sessions or
                  any(r.stream is None for r in decoded[i].own_requests)]
        # allocated on DALI's stream, which reads them last: a block freed and reused is then
        # written only after DALI's reads (the decode threads wait for ``allocated``)
        with torch.cuda.stream(dali_stream):
            fresh = self._allocate([job.shapes[i] for i in staged])
            later = self._allocate([frames_shape(decoded[i].ahead_requests, names[i])
                                    for i in ahead])
        job.staging_bytes = sum(out.numel() for out in fresh)
        self.held.add("staging", job.staging_bytes)
        for i, out in zip(staged, fresh):
            job.staging[i] = out
        for i in now:
            mine, job.conversions[i] = self._plan_tasks(
                datas[i], decoded[i], names[i], decoded[i].own_requests, job.staging[i], job,
                sends, i)
            tasks += mine
        ahead_tasks = []
        for i, out in zip(ahead, later):
            mine, conversions = self._plan_tasks(datas[i], decoded[i], names[i],
                                                 decoded[i].ahead_requests, out, job, sends, None)
            ahead_tasks.append((decoded[i].ahead_key, out, mine, conversions))
        with torch.cuda.stream(dali_stream):
            # the GOPs too: one allocator pool (DALI's stream) for everything the operator holds,
            # not one per decode thread, each caching blocks only that thread can reuse
            for gop, _, _ in sends:
                gop.allocate(self._pinned)
        allocated = DriverEvent(self._driver, dali_stream.cuda_stream)
        tasks.sort(key=lambda t: -t[1].size)     # longest first: the batch ends sooner
        job.futures += [self._submit(self._decode_segment, *t, device_id, [allocated])
                        for t in tasks]
        lanes = collections.defaultdict(list)
        for picks in job.pair_picks:
            lanes[self.pairs[picks.key].lane].append(picks)
        self._device_id = device_id
        for lane, items in lanes.items():
            job.pair_futures.append(self._submit(self._pick_pairs, items, device_id, allocated,
                                                 lane=lane))
        for gop, data, segment in sends:    # after this batch's own segments: needed later
            gop.future = self._submit(self._decode_gop, gop, data, segment, device_id,
                                      gop.writes_after(allocated))
        for key, out, mine, conversions in ahead_tasks:  # needed last
            self.ahead[key] = _Decoded(out, [self._submit(self._decode_segment, *t, device_id,
                                                          [allocated]) for t in mine], conversions)
            self.held.add("decoded_ahead", out.numel())
        return job

    def _plan_tasks(self, data, plan: Plan, name_list: list[str], requests, out, job: _Job,
                    sends: list, sample: int | None) -> tuple[list, list[Conversion]]:
        """The segment decodes that fill ``out`` (cameras, T, H*3/2, W) with ``requests``' frames,
        and each camera's conversion; stream steps become picks of kept GOPs
        (``job.stream_picks``, of frames of the batch's ``sample``), and the GOPs they send new
        ``sends``. ``out`` is None where every request is such a step."""
        _, length, height, width = frames_shape(requests, name_list)
        frame_shape = (height * 3 // 2, width)
        nbytes = math.prod(frame_shape)
        base = out.data_ptr() if out is not None else None
        wanted: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
        conversions = []
        for camera, request in enumerate(requests):
            if request.stream is None:
                first = base + camera * length * nbytes    # frame (camera, 0) of the sample
                conversions.append(self.colors.of_segment(name_list[request.picks[0][0]]))
                for t, (segment, position) in enumerate(request.picks):
                    wanted[segment].append((position, first + t * nbytes))
                continue

            sent = []      # SentGops of this step, and the position of the slot's first pick

            def send(send):
                segment = plan.segments[send.segment]
                if self.stream_sessions and segment.packet_sizes is not None:
                    sent.append((SentGop.of(name_list[send.segment], data, segment, frame_shape),
                                 send.first))
                    return sent[-1][0]
                gop = DecodedGop(name_list[send.segment], segment.num_outputs, frame_shape)
                sends.append((gop, data, segment))
                return gop
            try:
                gop = self.kept.step(camera, request.stream, send)
            except DecodeError as e:
                job.errors.append(e)
                conversions.append(None)
                continue
            conversions.append(self.colors.of_segment(gop.name))
            if isinstance(gop, SentGop):
                try:
                    gop.check_shape(frame_shape)
                except DecodeError as e:
                    job.errors.append(e)
                    continue
                key = (request.stream.slot, camera)
                if key not in self.pairs:    # pinned to a thread, round robin
                    self._add_pair(key)
                first = base + camera * length * nbytes
                job.pair_picks.append(_PairPicks(
                    key, gop, [position for _, position in request.picks],
                    [first + t * nbytes for t in range(len(request.picks))],
                    request.stream.restart, sent))
                continue
            try:
                job.stream_picks += [
                    (gop, gop.check_pick(position, frame_shape), (sample, camera * length + t))
                    for t, (_, position) in enumerate(request.picks)]
            except DecodeError as e:
                job.errors.append(e)
                continue
            job.released += self.kept.let_go_below(request.stream, gop,
                                                    min(p for _, p in request.picks),
                                                    DecodedGop.release_below)
        return [(data, plan.segments[segment], name_list[segment], targets, frame_shape)
                for segment, targets in wanted.items()], conversions

    @staticmethod
    def _allocate(frame_shapes: list[tuple[int, int, int, int]]) -> list:
        """NV12 staging, (cameras, T, H*3/2, W) each, for samples of frames (cameras, T, H, W):
        views of one block when the samples agree in shape (one allocation, not one per
        sample)."""
        import torch
        if not frame_shapes:
            return []
        shapes = [(cameras, length, height * 3 // 2, width)
                  for cameras, length, height, width in frame_shapes]
        if len(set(shapes)) == 1:
            block = torch.empty((len(shapes), *shapes[0]), dtype=torch.uint8, device="cuda")
            return list(block.unbind(0))
        return [torch.empty(shape, dtype=torch.uint8, device="cuda") for shape in shapes]

    def _run_decoder(self, segment: Segment, name: str, data, targets: list[tuple[int, int]],
                     frame_shape, device_id: int, after: Sequence[DriverEvent],
                     whole_gop: bool = False):
        """Pool thread: decode a segment from its keyframe on the thread's decoder, copying output
        ``position`` to ``pointer`` for each of ``targets``, once the events ``after`` are passed
        (the targets' earlier reads); flush; return an event after it all."""
        import torch
        state = self._thread_state(device_id)
        stream = state.stream.cuda_stream
        for event in after:
            self._pool_driver.wait(stream, event.handle)
        decoder = self._decoder(state, segment.codec, device_id)
        try:
            with self._hooked("decode", name, whole_gop):
                produced = decoder.decode(data[segment.offset:segment.offset + segment.size],
                                          targets, frame_shape)
        except Exception as e:
            state.decoders.pop(segment.codec).close()   # in an unknown state: not reused
            raise decode_failure(e, name, segment.codec, frame_shape)
        check_outputs(produced, segment, name)
        done = torch.cuda.Event()
        done.record(state.stream)
        return done

    def _pick_pairs(self, items: list, device_id: int, allocated: DriverEvent):
        """A lane's thread: each stream pair's picks, in its ring (decoded now where the frames
        ahead did not reach them), copied to the batch's staging on the lane's stream (one driver
        call; the pairs' later decodes are queued behind it); return an event after it all."""
        import torch
        io = _PairIO(self, device_id)
        stream = io.state.stream.cuda_stream
        self._pool_driver.wait(stream, allocated.handle)
        self._land(self._lanes[self.pairs[items[0].key].lane], io)
        for item in items:    # in batch order: the order of the picks
            pair = self.pairs[item.key]
            if item.restart:
                pair.restart()
            for gop, first in item.sent:
                pair.sent(gop, first)
        if STREAM_AT_ONCE:
            self._decode_at_once(io, [(self.pairs[item.key], item.gop, item.positions[0])
                                      for item in items])
        destinations, sources, sizes = [], [], []
        for key, gop, positions, pointers, *_ in items:
            pair = self.pairs[key]
            try:
                with self._hooked("decode", gop.name, False):
                    picked = pair.pick(gop, positions, io)
            except Exception as e:
                pair.close()      # in an unknown state: begins again at its next pick
                raise decode_failure(e, gop.name, gop.codec, gop.frame_shape)
            destinations += pointers
            sources += picked
            sizes += [math.prod(gop.frame_shape)] * len(picked)
        if destinations:
            self._pool_driver.copy_many(destinations, sources, sizes, stream, device_id)
        done = torch.cuda.Event()
        done.record(io.state.stream)
        return done

    def _add_pair(self, key: tuple[int, int]) -> None:
        if not self._lanes:
            self._lanes = [_Lane(f"nvdec_stream{i}", self._pairs_ahead, self._land)
                           for i in range(min(self.threads, STREAM_LANES))]
        pair = self.pairs[key] = StreamPair(lane=len(self.pairs) % len(self._lanes))
        self._lanes[pair.lane].pairs.append(pair)

    @staticmethod
    def _decode_at_once(io: "_PairIO", picks: list) -> None:
        """Decode the frames that (pair, gop, position) picks want and their pairs have not
        decoded ahead, a packet of each pair per call, all in one call. A failure is left to
        the pick, which begins its pair again and raises it."""
        while True:
            calls = []
            for pair, gop, position in picks:
                try:
                    call = pair.pick_packet(gop, position, io)
                except Exception:
                    pair.close()
                    continue
                if call is not None:
                    calls.append((pair, call))
            if not calls:
                return
            for (pair, _), shown in zip(calls, decode_many([call for _, call in calls])):
                try:
                    pair.packet_done(shown, io)
                except Exception:
                    pair.close()

    def _pairs_ahead(self, lane: _Lane) -> bool:
        """A lane's thread, between picks: a packet more for each of its pairs whose frames
        ahead are not all decoded, all in one call with :data:`STREAM_AT_ONCE` (their pictures
        decode at once), else a pair per call, stopping where picks are queued (the next pass
        goes on from the pair after); whether any was fed. A failure is left to the pick that
        wants the frame (its pair begins again there)."""
        if self._closed or not lane.pairs:
            return False
        io = _PairIO(self, self._device_id)
        if not STREAM_AT_ONCE:
            fed, count = False, len(lane.pairs)
            for k in range(count):
                pair = lane.pairs[(lane.cursor + k) % count]
                try:
                    fed |= pair.ahead(io)
                except Exception:
                    pair.close()
                if fed and lane.waiting():     # the picks first; this pass goes on after them
                    lane.cursor = (lane.cursor + k + 1) % count
                    break
            return fed
        groups = max(1, min(STREAM_GROUPS, len(lane.pairs)))
        landed = groups == 1 and self._land(lane, io)    # its pairs are the ones to feed
        flying = {id(pair) for pair in lane.in_flight[1]} if lane.in_flight else set()
        calls = []
        for step in range(groups):     # the next group with a packet to feed
            group = (lane.group + step) % groups
            for pair in lane.pairs[group::groups]:
                if id(pair) in flying:
                    continue
                try:
                    call = pair.ahead_packet(io)
                except Exception:
                    pair.close()
                    continue
                if call is not None:
                    calls.append((pair, call))
            if calls:
                lane.group = (group + 1) % groups
                break
        flight = submit_many([call for _, call in calls]) if calls else None
        landed = self._land(lane, io) or landed    # the group fed last, while this one decodes
        if calls:
            lane.in_flight = (flight, [pair for pair, _ in calls])
        if groups == 1:
            self._land(lane, io)
        return bool(calls) or landed

    def _land(self, lane: _Lane, io: "_PairIO | None" = None) -> bool:
        """The lane's thread: the packets it left on NVDEC decoded, their frames copied to their
        pairs' rings (:meth:`StreamPair.packet_done`); whether there were any. A failure is
        left to the pick that wants the frame (its pair begins again there)."""
        if lane.in_flight is None:
            return False
        flight, pairs = lane.in_flight
        lane.in_flight = None
        io = io or _PairIO(self, self._device_id)
        for pair, shown in zip(pairs, flight.collect()):
            try:
                pair.packet_done(shown, io)
            except Exception:
                pair.close()
        return True

    def _decode_segment(self, data, segment: Segment, name: str, targets, frame_shape,
                        device_id: int, after: Sequence[DriverEvent]):
        """Pool thread: decode a GOP prefix, copying each wanted output to its pointers
        (``targets``: (position, pointer) pairs into output tensors)."""
        return self._run_decoder(segment, name, data, targets, frame_shape, device_id, after)

    def _decode_gop(self, gop: DecodedGop, data, segment: Segment, device_id: int,
                    after: Sequence[DriverEvent]):
        """Pool thread: decode a whole GOP into a stream slot's GOP chunks, after ``after``: the
        last reads of what its chunks held before (DALI's stream's copies of picked frames).
        A GOP's bin may decode one frame of the next GOP: not kept."""
        return self._run_decoder(segment, gop.name, data, list(enumerate(gop.pointers)),
                                 gop.frame_shape, device_id, after, whole_gop=True)


class _PairIO:
    """What a stream pair needs of the operator (:class:`StreamPair`'s ``io``), on a lane's
    thread: sessions and rings on the thread's stream."""

    def __init__(self, operator: NvdecBatchDecoder, device_id: int):
        self.operator = operator
        self.state = operator._thread_state(device_id)

    def new_session(self, codec: str):
        return NvdecSession(codec, self.state.stream.cuda_stream,
                            extra_surfaces=STREAM_EXTRA_SURFACES)

    def new_ring(self, frames: int, shape: tuple):
        import torch
        with torch.cuda.stream(self.state.stream):    # freed and reused on this stream only
            ring = torch.empty((frames, *shape), dtype=torch.uint8, device="cuda")
        self.operator.held.add("stream_rings", ring.numel())
        return ring

    def free_ring(self, ring) -> None:
        self.operator.held.add("stream_rings", -ring.numel())


class NvdecBackend(DecodeBackend):
    name = "nvdec"
    device = "gpu"
    decodes_ahead = True
    ring_frames = (RING_FRAMES, REORDER_RING_FRAMES)
    #: whose NVDEC sessions the decode threads hold: "pynvvideocodec" (PyNvVideoCodec's), "own"
    #: (ours: a fraction of the memory), or "auto" (see :meth:`settle`)
    sessions = "auto"
    kept_gops = "device"

    def __init__(self, color: str = "RGB", threads: int | None = None,
                 hooks: Sequence[DecodeHook] = (), color_matrix: str | None = None,
                 sessions: str | None = None, stream_sessions: bool | None = None,
                 kept_gops: str | None = None):
        super().__init__(color, color_matrix)
        if stream_sessions is not None:   # else the class's (False: stream slots keep GOPs)
            self.stream_sessions = stream_sessions
        if kept_gops is not None:         # else the class's ("device")
            if kept_gops not in ("device", "host"):
                raise ValueError(f"kept_gops must be 'device' or 'host', not {kept_gops!r}")
            self.kept_gops = kept_gops
        if sessions is not None:          # else the class's ("auto")
            self.sessions = sessions
        self.threads = DEFAULT_THREADS if threads is None else threads
        self._threads_given = threads is not None
        self.hooks = tuple(hooks)
        self.operators: list[NvdecBatchDecoder] = []

    def settle(self, streams: bool) -> None:
        """What "auto" sessions are for a loader: ours, :data:`DEFAULT_THREADS` of them where
        slots stream (whole GOPs, every frame wanted), else at most :data:`OWN_THREADS` unless
        ``threads`` was given. Ours hold the surfaces the video needs and no frames (a fraction
        of PyNvVideoCodec's memory) and write each frame straight into the loader's, one copy
        where PyNvVideoCodec's make two; where each sample is decoded from its GOP start they
        map and copy only the frames it wants, and those copies are GPU time taken from the
        model beside the loader. Where slots stream, 48 of ours kept NVDEC as busy as 48 of
        PyNvVideoCodec's (docs/results.md)."""
        if self.sessions != "auto":
            return
        self.sessions = "own"
        if not streams and not self._threads_given:
            self.threads = min(self.threads, OWN_THREADS)

    def session_bytes(self, frame_bytes: int, frames_per_call: int,
                      sessions: str | None = None) -> int:
        """Device bytes each decode thread's NVDEC session holds (see :func:`session_bytes`)."""
        return session_bytes(frame_bytes, frames_per_call, sessions or self.sessions)

    def decode(self, data, plan):
        from nvidia.dali import fn
        stash = BitstreamStash()
        operator = NvdecBatchDecoder(stash, self.color, self.threads, hooks=self.hooks,
                                     colors=self.colors, sessions=self.sessions,
                                     stream_sessions=self.stream_sessions,
                                     kept_gops=self.kept_gops)
        self.operators.append(operator)
        tokens = fn.python_function(data, plan, function=stash.put, batch_processing=True)
        # no stream sync before each call: the operator orders all its GPU work on DALI's stream
        # (allocations on it, copies behind events it waits for), as DALI's docs allow
        return fn.dl_tensor_python_function(tokens.gpu(), function=operator, batch_processing=True,
                                            device="gpu", synchronize_stream=False)
