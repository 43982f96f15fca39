"""The ``nvdec`` backend: PyNvVideoCodec decoders inside the DALI pipeline, at NVDEC speed.

Data path, per batch::

    workers --(bytes, plan)--> BitstreamStash (CPU python_function: keeps the host bytes)
                               plan.gpu() --> NvdecBatchDecoder (GPU dl_tensor_python_function)
                                              pops the host bytes, feeds NVDEC from host memory,
                                              copies RGB frames into the output on the GPU

NVDEC parses bitstreams from host memory, and DALI lets a GPU operator take GPU inputs only, so
the bytes never go to the GPU at all: the CPU operator hands them over in order through a FIFO
(DALI runs each stage's iterations in order), and only the small plan crosses to the GPU, where
its shape lets the GPU side check that the FIFO is in step.

Decoders are made once per (thread, codec) and reused across iterations and epochs; each thread
has its own CUDA stream, and DALI's stream waits on events, so there is no device-wide
synchronization. Frames leave the decoder by one driver-API device copy each (PyNvVideoCodec
reuses its output buffer at the next ``Decode``): wrapping every frame in a tensor first cost
more than half of NVDEC's throughput (docs/gpu-results.md).
"""
from __future__ import annotations

import collections
import ctypes
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import nvtx

from dali_gop.backends import DecodeBackend
from dali_gop.backends._assemble import (DecodeError, KeptGops, check_outputs, check_position,
                                         frames_shape)
from dali_gop.store import DecodePlan, Segment, decode_plan, segment_names

DEFAULT_THREADS = 48   # GOP-prefix decodes gained up to 48 threads (docs/gpu-results.md)


def _nvc():
    import PyNvVideoCodec as nvc   # needs the NVIDIA driver: import only when decoding
    return nvc


def create_decoder(codec: str, stream_handle: int, device_id: int, *, rgb: bool = True,
                   low_latency: bool = False):
    """A PyNvVideoCodec decoder; ``low_latency`` outputs each frame as soon as it is decoded and
    displayable (display delay 0) instead of holding a few back until more data or a flush."""
    nvc = _nvc()
    options = dict(gpuid=device_id, codec=getattr(nvc.cudaVideoCodec, {"h264": "H264", "hevc": "HEVC"}[codec]),
                   cudacontext=0, cudastream=stream_handle, usedevicememory=True)
    if rgb:
        options["outputColorType"] = nvc.OutputColorType.RGB
    if low_latency:
        options["latency"] = nvc.DisplayDecodeLatencyType.LOW
    return nvc.CreateDecoder(**options)


def _packet(buffer: np.ndarray | None):
    packet = _nvc().PacketData()
    if buffer is not None:
        packet.bsl_data = buffer.ctypes.data
        packet.bsl = buffer.size
    return packet


FEEDS = ("segment", "packets")


def packets_of(data: np.ndarray, segment: Segment, feed: str = "packets"):
    """What to hand ``Decode``, as views of ``data``: the segment's packets one by one, or the
    whole segment at once (``feed="segment"``, or when sizes are unknown). NVDEC's parser finds
    the pictures in the Annex-B bytes either way; one call per segment spares the GIL dozens of
    hand-overs per GOP (docs/gpu-results.md)."""
    chunk = data[segment.offset:segment.offset + segment.size]
    if feed == "segment" or segment.packet_sizes is None:
        return [chunk]
    bounds = np.cumsum((0,) + segment.packet_sizes)
    return [chunk[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decode_packets(decoder, packets, sink: Callable[[int, object], None],
                   expected: int | None = None) -> int:
    """Feed packets, calling ``sink(position, frame)`` for each output frame in display order while
    the frame is valid (PyNvVideoCodec reuses its buffer at the next ``Decode``); then flush, unless
    ``expected`` frames are out already (scripts/decode_modes.py: a low-latency decoder fed packets
    in display order holds nothing back). Returns the frames output."""
    position = 0
    for packet in packets:
        for frame in decoder.Decode(_packet(packet)):
            sink(position, frame)
            position += 1
    if expected is not None and position >= expected:
        return position
    for frame in decoder.Decode(_packet(None)):
        sink(position, frame)
        position += 1
    return position


class FrameCopier:
    """Copies decoded frames to device pointers, one ``cuMemcpyDtoDAsync`` each.

    ``torch.from_dlpack`` on a PyNvVideoCodec frame costs ~190 us, its pointer < 1 us. The call
    goes through ``ctypes.PyDLL``, which keeps the GIL: it only enqueues a copy, and releasing and
    re-taking the GIL for it in dozens of decode threads cost more than the copy.
    """

    def __init__(self):
        self._memcpy = ctypes.PyDLL("libcuda.so.1").cuMemcpyDtoDAsync_v2
        self._memcpy.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p]
        self._memcpy.restype = ctypes.c_int

    def device_copy(self, destination: int, source: int, nbytes: int, stream_handle: int) -> None:
        status = self._memcpy(destination, source, nbytes, stream_handle)
        if status:
            raise DecodeError(f"cuMemcpyDtoDAsync failed with CUDA error {status}")

    def sink(self, targets: Callable[[int], Sequence[int]], frame_shape: tuple[int, ...],
             stream_handle: int, name: str) -> Callable[[int, object], None]:
        """A ``decode_packets`` sink copying output ``position`` to each of ``targets(position)``
        (device pointers to dense ``frame_shape`` uint8 buffers) on ``stream_handle``."""
        nbytes = int(np.prod(frame_shape))
        checked = False

        def sink(position, frame):
            nonlocal checked
            if not checked:
                self._check(frame, frame_shape, name)
                checked = True
            for pointer in targets(position):
                self.device_copy(pointer, frame.GetPtrToPlane(0), nbytes, stream_handle)

        return sink

    @staticmethod
    def _check(frame, frame_shape: tuple[int, ...], name: str) -> None:
        shape, strides = tuple(frame.shape), tuple(frame.strides)
        if shape != tuple(frame_shape):
            raise DecodeError(f"{name}: NVDEC frame {shape} does not fit the sample's "
                              f"{tuple(frame_shape)} (cameras or clips of different sizes?)")
        if strides != _dense_strides(shape):
            raise DecodeError(f"{name}: PyNvVideoCodec gave a padded frame (strides {strides}); "
                              "this backend expects dense RGB frames")


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

    def take(self, wait: bool = True):
        """The oldest stashed batch; None if there is none and ``wait`` is False."""
        if not self._batches:
            if wait:
                raise DecodeError("nvdec: GPU stage ran ahead of the CPU stage (no stashed batch)")
            return None
        return self._batches.popleft()


@dataclass
class _ThreadDecoders:
    stream: object
    decoders: dict = field(default_factory=dict)


class DecodedGop:
    """A whole GOP a stream slot will pick from, decoded once by a pool thread into one tensor
    (frames, H, W, 3) while earlier batches go by."""

    def __init__(self, name: str, frames):
        self.name = name
        self.frames = frames
        self.future: Future | None = None    # -> CUDA event recorded after the last frame's copy
        self._count, self._base = frames.shape[0], frames.data_ptr()
        self._frame_shape = tuple(frames.shape[1:])
        self._frame_bytes = math.prod(self._frame_shape)
        self._ready_for: int | None = None   # the consumer stream that already waits for it

    def take(self, position: int, destination: int, frame_shape: tuple[int, ...], consumer_stream,
             copier: FrameCopier) -> None:
        """Copy frame ``position`` to device pointer ``destination`` (a dense ``frame_shape``
        frame of the sample) on ``consumer_stream`` (DALI's). The stream waits for the decode once:
        the slot's later picks queue behind that wait."""
        handle = consumer_stream.cuda_stream
        if self._ready_for != handle:
            decoded = self.future.result()     # a decode error surfaces here
            consumer_stream.wait_event(decoded)
            self._ready_for = handle
        check_position(position, self._count, self.name)
        if frame_shape != self._frame_shape:   # a raw copy must never overrun or scramble
            raise DecodeError(f"{self.name}: frames of {self._frame_shape} do not fit the "
                              f"sample's {frame_shape} (clips of different sizes?)")
        copier.device_copy(destination, self._base + position * self._frame_bytes,
                           self._frame_bytes, handle)


@dataclass
class _Job:
    """One batch in flight: outputs, futures of its plain segments, and its stream picks."""
    plan_shapes: list
    outputs: list
    futures: list = field(default_factory=list)
    stream_picks: list = field(default_factory=list)  # (DecodedGop, position, pointer, shape)
    errors: list = field(default_factory=list)


class NvdecBatchDecoder:
    """GPU python operator: a batch of (host bytes, plan) -> frames (cameras, T, H, W, 3) per sample.

    Decoding runs ahead: whatever the CPU stage has stashed already (in practice the next batch:
    DALI runs that stage one batch ahead of this one) is scheduled at once, so while DALI hands
    on this batch the pool decodes the next, and NVDEC does not idle between batches. Stream
    slots get their GOPs some batches before they reach them (see
    :class:`dali_gop.source.GopSource`); each is decoded whole, once, in the background, and the
    slot's samples only copy frames out.

    The batch's Python runs in DALI's thread while dozens of decode threads want the GIL too, so
    it is kept short: one allocation for the batch's outputs, frame destinations as pointers.
    """

    def __init__(self, stash: BitstreamStash, color: str = "RGB", threads: int = DEFAULT_THREADS,
                 feed: str = "segment"):
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, not {feed!r}")
        self.feed = feed
        self.stash = stash
        self.bgr = color == "BGR"
        self.threads = threads
        self._dali_streams: dict[int, object] = {}
        self.kept = KeptGops()
        self._copier = FrameCopier()
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._thread_decoders: list[_ThreadDecoders] = []
        self._pending: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    # -- resources ------------------------------------------------------------------------------
    def decoder_count(self) -> int:
        return sum(len(t.decoders) for t in self._thread_decoders)

    def _thread_state(self, device_id: int) -> _ThreadDecoders:
        import torch
        state = getattr(self._local, "state", None)
        if state is None:
            torch.cuda.set_device(device_id)
            state = self._local.state = _ThreadDecoders(torch.cuda.Stream(device_id))
            with self._lock:
                self._thread_decoders.append(state)
        return state

    def _decoder(self, state: _ThreadDecoders, codec: str, device_id: int):
        decoder = state.decoders.get(codec)
        if decoder is None:
            decoder = state.decoders[codec] = create_decoder(codec, state.stream.cuda_stream,
                                                             device_id)
        return decoder

    def close(self) -> None:
        """Free the NVDEC sessions and kept GOPs; later batches fail with a clear error."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for state in self._thread_decoders:
                state.decoders.clear()
        self.kept = KeptGops()
        self._pending.clear()

    def _submit(self, fn, *args) -> Future:
        if self._closed:
            raise DecodeError("nvdec: the loader was closed")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nvdec")
        return self._pool.submit(fn, *args)

    # -- the operator ---------------------------------------------------------------------------
    def __call__(self, plan_tokens):
        with nvtx.annotate("decode (nvdec)", color="red"):
            return self._decode_batch(plan_tokens)

    def _decode_batch(self, plan_tokens):
        import torch
        from nvidia.dali import python_function_plugin
        from torch.utils.dlpack import from_dlpack, to_dlpack

        shapes = [tuple(from_dlpack(t).shape) for t in plan_tokens]
        device_id = torch.cuda.current_device()
        handle = python_function_plugin.current_dali_stream()
        dali_stream = self._dali_streams.get(handle)
        if dali_stream is None:
            dali_stream = self._dali_streams[handle] = torch.cuda.ExternalStream(handle,
                                                                                 device=device_id)
        job = self._pending.popleft() if self._pending else \
            self._start(self.stash.take(), device_id, dali_stream)
        while (upcoming := self.stash.take(wait=False)) is not None:
            self._pending.append(self._start(upcoming, device_id, dali_stream))
        if job.plan_shapes != shapes:
            raise DecodeError("nvdec: stashed bytes do not match this batch's plans (pipeline out "
                              "of step); rebuild the pipeline")
        outputs = self._finish(job, dali_stream)
        if self.bgr:
            with torch.cuda.stream(dali_stream):
                outputs = [out.flip(-1) for out in outputs]
        return [to_dlpack(out) for out in outputs]

    def _finish(self, job: _Job, dali_stream) -> list:
        """Make DALI's stream wait for the batch's decodes and copy its stream picks; the first
        error of the batch is raised."""
        errors = list(job.errors)
        for future in job.futures:
            try:
                dali_stream.wait_event(future.result())
            except Exception as e:
                errors.append(e)
        for gop, position, pointer, frame_shape in job.stream_picks:
            try:
                gop.take(position, pointer, frame_shape, dali_stream, self._copier)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return job.outputs

    def _start(self, batch, device_id: int, dali_stream) -> _Job:
        """Allocate a batch's outputs (and its stream sends' frames) on DALI's stream and schedule
        the decodes, in batch order: the stream slots' bookkeeping relies on it."""
        import torch
        datas, plans = batch
        decoded = [decode_plan(p) for p in plans]
        names = [segment_names(d, p.names_offset) for d, p in zip(datas, decoded)]
        job = _Job([p.shape for p in plans], [])
        segments, sends = [], []
        # allocated on DALI's stream, which reads them last: a block freed and reused is then
        # written only after DALI's reads (the decode threads wait for ``allocated``)
        with torch.cuda.stream(dali_stream):
            job.outputs = self._allocate(decoded, names)
            for data, plan, name_list, out in zip(datas, decoded, names, job.outputs):
                frame_shape = tuple(out.shape[2:])
                length, nbytes, base = out.shape[1], math.prod(frame_shape), out.data_ptr()
                wanted: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
                for camera, request in enumerate(plan.requests):
                    first = base + camera * length * nbytes    # frame (camera, 0) of the sample
                    if request.stream is None:
                        for t, (segment, position) in enumerate(request.picks):
                            wanted[segment].append((position, first + t * nbytes))
                        continue

                    def send(send, data=data, plan=plan, name_list=name_list):
                        segment = plan.segments[send.segment]
                        gop = DecodedGop(name_list[send.segment], torch.empty(
                            (segment.num_outputs, *frame_shape), dtype=torch.uint8, device="cuda"))
                        sends.append((gop, data, segment))
                        return gop
                    try:
                        gop = self.kept.step(camera, request.stream, send)
                    except DecodeError as e:
                        job.errors.append(e)
                        continue
                    job.stream_picks += [(gop, position, first + t * nbytes, frame_shape)
                                         for t, (_, position) in enumerate(request.picks)]
                for segment, targets in wanted.items():
                    segments.append((data, plan.segments[segment], name_list[segment], targets,
                                     frame_shape))
            allocated = torch.cuda.Event()
            allocated.record(dali_stream)
        segments.sort(key=lambda s: -s[1].size)     # longest first: the batch ends sooner
        job.futures = [self._submit(self._decode_segment, *s, device_id, allocated)
                       for s in segments]
        for gop, data, segment in sends:    # after the plain segments: needed batches later
            gop.future = self._submit(self._decode_gop, gop, data, segment, device_id, allocated)
        return job

    @staticmethod
    def _allocate(plans: list[DecodePlan], names: list[list[str]]) -> list:
        """The batch's output tensors, (cameras, T, H, W, 3) each: views of one block when the
        samples agree in shape (one allocation, not one per sample)."""
        import torch
        shapes = [(*frames_shape(plan, n), 3) for plan, n in zip(plans, names)]
        if len(set(shapes)) == 1:
            return list(torch.empty((len(shapes), *shapes[0]), dtype=torch.uint8,
                                    device="cuda").unbind(0))
        return [torch.empty(shape, dtype=torch.uint8, device="cuda") for shape in shapes]

    def _run_decoder(self, segment: Segment, name: str, data, targets, frame_shape, device_id: int,
                     allocated):
        """Pool thread: decode a segment from its keyframe on the thread's decoder, copying output
        ``position`` to the pointers ``targets(position)``; flush; return an event after it all."""
        import torch
        state = self._thread_state(device_id)
        state.stream.wait_event(allocated)
        decoder = self._decoder(state, segment.codec, device_id)
        sink = self._copier.sink(targets, frame_shape, state.stream.cuda_stream, name)
        try:
            produced = decode_packets(decoder, packets_of(data, segment, self.feed), sink)
        except Exception as e:
            state.decoders.pop(segment.codec, None)   # a decoder in an unknown state: not reused
            if isinstance(e, DecodeError):
                raise
            raise DecodeError(f"{name}: NVDEC failed ({e})") from e
        check_outputs(produced, segment, name)
        done = torch.cuda.Event()
        done.record(state.stream)
        return done

    def _decode_segment(self, data, segment: Segment, name: str, targets, frame_shape,
                        device_id: int, allocated):
        """Pool thread: decode a GOP prefix, copying each wanted output to its pointers
        (``targets``: (position, pointer) pairs into the batch's tensors)."""
        by_position = collections.defaultdict(list)
        for position, pointer in targets:
            by_position[position].append(pointer)
        return self._run_decoder(segment, name, data, lambda p: by_position.get(p, ()),
                                 frame_shape, device_id, allocated)

    def _decode_gop(self, gop: DecodedGop, data, segment: Segment, device_id: int, allocated):
        """Pool thread: decode a whole GOP for a stream slot into its tensor."""
        frames = gop.frames
        # a GOP dropped unread (a restart) must not be reallocated while this stream writes it
        frames.record_stream(self._thread_state(device_id).stream)
        base, count, frame_bytes = frames.data_ptr(), frames.shape[0], frames[0].numel()

        def targets(position):   # a GOP's bin may decode one frame of the next GOP: not kept
            return (base + position * frame_bytes,) if position < count else ()
        return self._run_decoder(segment, gop.name, data, targets, tuple(frames.shape[1:]),
                                 device_id, allocated)


class NvdecBackend(DecodeBackend):
    name = "nvdec"
    device = "gpu"

    def __init__(self, color: str = "RGB", threads: int | None = None, feed: str | None = None):
        super().__init__(color)
        self.threads = threads or int(os.environ.get("DALI_GOP_NVDEC_THREADS", DEFAULT_THREADS))
        self.feed = feed or os.environ.get("DALI_GOP_NVDEC_FEED", "segment")
        self.operators: list[NvdecBatchDecoder] = []

    def decode(self, data, plan):
        from nvidia.dali import fn
        stash = BitstreamStash()
        operator = NvdecBatchDecoder(stash, self.color, self.threads, feed=self.feed)
        self.operators.append(operator)
        tokens = fn.python_function(data, plan, function=stash.put, batch_processing=True)
        # no stream sync before each call: the operator orders all its GPU work on DALI's stream
        # (allocations on it, copies behind events it waits for), as DALI's docs allow
        return fn.dl_tensor_python_function(tokens.gpu(), function=operator, batch_processing=True,
                                            device="gpu", synchronize_stream=False)
