"""The ``nvdec`` backend: PyNvVideoCodec decoders inside the DALI pipeline, at NVDEC speed.

Data path, per batch::

    workers --(bytes, plan)--> BitstreamStash (CPU python_function: keeps the host bytes)
                               plan.gpu() --> NvdecBatchDecoder (GPU dl_tensor_python_function)
                                              pops the host bytes, feeds NVDEC from host memory,
                                              writes RGB frames into the output on the GPU

NVDEC parses bitstreams from host memory, and DALI lets a GPU operator take GPU inputs only, so
the bytes never go to the GPU at all: the CPU operator hands them over in order through a FIFO
(DALI runs each stage's iterations in order), and only the small plan crosses to the GPU, where
its shape lets the GPU side check that the FIFO is in step.

Decoders are made once per (thread, codec, size) and, for stream decoding, once per (slot, camera),
and reused across iterations and epochs. Each has its own CUDA stream; frames are copied out of the
decoder on that stream (PyNvVideoCodec reuses its output buffer at the next ``Decode``), and DALI's
stream waits on events, so there is no device-wide synchronization.
"""
from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import nvtx

from dali_gop.backends import DecodeBackend
from dali_gop.backends._assemble import (DecodeError, check_outputs, check_stream_step,
                                         frames_shape)
from dali_gop.store import DecodePlan, Segment, decode_plan, segment_names

DEFAULT_THREADS = 16   # the H100's NVDEC ceiling rose from 8 to 16 threads (docs/gpu-results.md)


def _nvc():
    import PyNvVideoCodec as nvc   # needs the NVIDIA driver: import only when decoding
    return nvc


def create_decoder(codec: str, stream_handle: int, device_id: int, *, rgb: bool = True,
                   low_latency: bool = False):
    nvc = _nvc()
    options = dict(gpuid=device_id, codec=getattr(nvc.cudaVideoCodec, {"h264": "H264", "hevc": "HEVC"}[codec]),
                   cudacontext=0, cudastream=stream_handle, usedevicememory=True)
    if rgb:
        options["outputColorType"] = nvc.OutputColorType.RGB
    if low_latency:
        options["latency"] = nvc.DisplayDecodeLatencyType.LOW
    return nvc.CreateDecoder(**options)


def _packet(buffer: np.ndarray, low_latency: bool = False):
    nvc = _nvc()
    packet = nvc.PacketData()
    if buffer is not None:
        packet.bsl_data = buffer.ctypes.data
        packet.bsl = buffer.size
        if low_latency:
            packet.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
    return packet


def packets_of(data: np.ndarray, segment: Segment):
    """The segment's packets as views of ``data`` (or the whole slice when sizes are unknown)."""
    chunk = data[segment.offset:segment.offset + segment.size]
    if segment.packet_sizes is None:
        return [chunk]
    bounds = np.cumsum((0,) + segment.packet_sizes)
    return [chunk[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decode_packets(decoder, packets, sink: Callable[[int, object], None], *, flush: bool = True,
                   low_latency: bool = False, first_position: int = 0) -> int:
    """Feed packets, calling ``sink(position, frame)`` for each output frame in display order while
    the frame is valid (PyNvVideoCodec reuses its buffer at the next ``Decode``); then flush.
    Returns the next output position."""
    position = first_position
    for packet in packets:
        for frame in decoder.Decode(_packet(packet, low_latency)):
            sink(position, frame)
            position += 1
    if flush:
        for frame in decoder.Decode(_packet(None)):
            sink(position, frame)
            position += 1
    return position


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


@dataclass
class _Job:
    """One batch in flight: outputs, futures of its plain segments, and its stream steps."""
    plan_shapes: list
    outputs: list
    futures: list = field(default_factory=list)
    stream_steps: list = field(default_factory=list)     # (GopFrames, position, destination)
    errors: list = field(default_factory=list)


class GopFrames:
    """One GOP of one stream slot and camera, decoded once, in the background, frame by frame.

    The decode goes a few packets at a time, each step a pool task that puts itself back in the
    queue, so when many slots enter new GOPs in the same batch, all of their first frames come out
    early instead of one GOP after the other. The slot's samples take frames in order as they come
    out (a condition variable says which are ready; a CUDA event per frame orders the copy after
    the decode), and each frame's memory is released as soon as it is taken.
    """

    PACKETS_PER_STEP = 4

    def __init__(self, video_key: int, gop_start: int, name: str, segment: Segment,
                 data: np.ndarray):
        self.video_key, self.gop_start, self.name, self.segment = video_key, gop_start, name, segment
        self._packets = packets_of(data, segment)
        self._fed = 0
        self._produced = 0
        self._ready = threading.Condition()
        self._frames: dict[int, tuple] = {}
        self.done = False
        self._error: Exception | None = None

    def decode_step(self, decoder, stream, bgr: bool) -> bool:
        """Feed the next few packets (a pool thread, the slot's decoder and stream); True when the
        GOP is fully decoded and the decoder flushed."""
        import torch

        def keep(position, frame):
            image = torch.from_dlpack(frame)
            image = image.flip(-1) if bgr else image.clone()
            decoded = torch.cuda.Event()
            decoded.record(stream)
            with self._ready:
                self._frames[position] = (image, decoded)
                self._ready.notify_all()

        try:
            chunk = self._packets[self._fed:self._fed + self.PACKETS_PER_STEP]
            self._fed += len(chunk)
            last = self._fed == len(self._packets)
            with torch.cuda.stream(stream):
                self._produced = decode_packets(decoder, chunk, keep, flush=last, low_latency=True,
                                                first_position=self._produced)
            if last:
                check_outputs(self._produced, self.segment, self.name)
        except Exception as e:
            self._error = e if isinstance(e, DecodeError) else \
                DecodeError(f"{self.name}: NVDEC failed ({e})")
            self._finish()
            raise self._error from e
        if last:
            self._finish()
        return last

    def fail(self, culprit: str) -> None:
        """The slot's decoder broke on ``culprit``: nothing of this GOP will come."""
        if not self.done:
            self._error = self._error or DecodeError(f"{self.name}: not decoded, the slot's "
                                                     f"decoder failed on {culprit}")
            self._finish()

    def _finish(self) -> None:
        with self._ready:
            self.done = True
            self._ready.notify_all()

    def take(self, position: int, destination, consumer_stream) -> None:
        """Copy frame ``position`` into ``destination`` on ``consumer_stream`` (DALI's)."""
        import torch
        with self._ready:
            self._ready.wait_for(lambda: position in self._frames or self.done)
            entry = self._frames.get(position)
            for taken in [p for p in self._frames if p <= position]:
                del self._frames[taken]      # the slot only moves forward: free GPU memory early
        if entry is None:
            raise self._error or DecodeError(f"{self.name}: no frame {self.gop_start + position} "
                                             "(already taken, or beyond the GOP)")
        image, decoded = entry
        consumer_stream.wait_event(decoded)
        with torch.cuda.stream(consumer_stream):
            destination.copy_(image)
        image.record_stream(consumer_stream)   # not reused before DALI's stream has copied it


@dataclass
class _Slot:
    """A stream slot's decoder for one camera, with its CUDA stream and its GOPs to decode, in
    order (the decoder takes one GOP at a time)."""
    decoder: object
    stream: object
    codec: str
    gop: GopFrames | None = None
    queue: collections.deque = field(default_factory=collections.deque)   # GOPs not yet decoded


class NvdecBatchDecoder:
    """GPU python operator: a batch of (host bytes, plan) -> frames (cameras, T, H, W, 3) per sample.

    Decoding runs one batch ahead: the CPU stage has usually stashed the next batch already, so
    while DALI hands on this batch, the pool is decoding the next one and NVDEC never idles
    between batches. Stream slots decode each GOP once, in the background, as soon as the slot
    enters it; their samples then only copy frames out.
    """

    def __init__(self, stash: BitstreamStash, color: str = "RGB", threads: int = DEFAULT_THREADS,
                 lookahead: bool = True):
        self.stash = stash
        self.bgr = color == "BGR"
        self.threads = threads
        self.lookahead = lookahead
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._thread_decoders: list[_ThreadDecoders] = []
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._pending: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()

    # -- resources ------------------------------------------------------------------------------
    def decoder_count(self) -> int:
        return sum(len(t.decoders) for t in self._thread_decoders) + len(self._slots)

    def _thread_state(self, device_id: int) -> _ThreadDecoders:
        import torch
        state = getattr(self._local, "state", None)
        if state is None:
            torch.cuda.set_device(device_id)
            state = self._local.state = _ThreadDecoders(torch.cuda.Stream(device_id))
            with self._lock:
                self._thread_decoders.append(state)
        return state

    def _submit(self, fn, *args):
        if self._pool is None:
            # more threads than NVDEC needs only add GIL contention (docs/gpu-results.md)
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
        dali_stream = torch.cuda.ExternalStream(python_function_plugin.current_dali_stream(),
                                                device=device_id)
        job = self._pending.popleft() if self._pending else \
            self._start(self.stash.take(), device_id, dali_stream)
        if self.lookahead and not self._pending:
            upcoming = self.stash.take(wait=False)
            if upcoming is not None:
                self._pending.append(self._start(upcoming, device_id, dali_stream))
        if job.plan_shapes != shapes:
            raise DecodeError("nvdec: stashed bytes do not match this batch's plans (pipeline out "
                              "of step); rebuild the pipeline")
        errors = list(job.errors)
        for future in job.futures:
            try:
                dali_stream.wait_event(future.result())
            except Exception as e:
                errors.append(e)
        for gop, position, destination in job.stream_steps:
            try:
                gop.take(position, destination, dali_stream)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return [to_dlpack(out) for out in job.outputs]

    def _start(self, batch, device_id: int, dali_stream) -> _Job:
        import torch
        datas, plans = batch
        decoded = [decode_plan(p) for p in plans]
        names = [segment_names(d, p.names_offset) for d, p in zip(datas, decoded)]
        with torch.cuda.stream(dali_stream):   # outputs freed on DALI's stream: reuse is ordered
            outputs = [self._allocate(plan, name_list) for plan, name_list in zip(decoded, names)]
            allocated = torch.cuda.Event()
            allocated.record(dali_stream)
        job = _Job([p.shape for p in plans], outputs)
        segments = []
        for data, plan, name_list, out in zip(datas, decoded, names, outputs):
            wanted: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
            for camera, request in enumerate(plan.requests):
                if request.stream is None:
                    for t, (segment, position) in enumerate(request.picks):
                        wanted[segment].append((position, camera, t))
                    continue
                try:
                    gop = self._stream_gop(device_id, data, plan, name_list, camera, request)
                except DecodeError as e:
                    job.errors.append(e)
                    continue
                job.stream_steps += [(gop, position, out[camera, t])
                                     for t, (_, position) in enumerate(request.picks)]
            for segment, targets in wanted.items():
                segments.append((data, plan.segments[segment], name_list[segment],
                                 plan.segment_codec(segment), out, targets))
        segments.sort(key=lambda s: -s[1].size)     # longest first: the batch ends sooner
        job.futures = [self._submit(self._decode_segment, *s, device_id, allocated)
                       for s in segments]
        return job

    def _allocate(self, plan: DecodePlan, names: list[str]):
        import torch
        return torch.empty((*frames_shape(plan, names), 3), dtype=torch.uint8, device="cuda")

    def _copy(self, frame, destination):
        import torch
        image = torch.from_dlpack(frame)
        destination.copy_(image.flip(-1) if self.bgr else image)

    def _decode_segment(self, data, segment: Segment, name: str, codec: str, out, targets,
                        device_id: int, allocated):
        """Pool thread: decode a GOP prefix from its keyframe, copy the wanted outputs, flush."""
        import torch
        by_position = collections.defaultdict(list)
        for position, camera, t in targets:
            by_position[position].append(out[camera, t])
        state = self._thread_state(device_id)
        decoder = state.decoders.get(codec)
        if decoder is None:
            decoder = state.decoders[codec] = create_decoder(codec, state.stream.cuda_stream,
                                                             device_id)

        def sink(position, frame):
            for destination in by_position.get(position, ()):
                self._copy(frame, destination)

        with torch.cuda.stream(state.stream):
            state.stream.wait_event(allocated)
            try:
                produced = decode_packets(decoder, packets_of(data, segment), sink)
            except Exception as e:
                state.decoders.pop(codec, None)   # a decoder in an unknown state is not reused
                raise DecodeError(f"{name}: NVDEC failed ({e})") from e
            done = torch.cuda.Event()
            done.record(state.stream)
        check_outputs(produced, segment, name)    # wanted positions are all < num_outputs
        return done

    def _stream_gop(self, device_id: int, data, plan: DecodePlan, names, camera: int,
                    request) -> GopFrames:
        """The GOP a stream step reads from; starting a GOP schedules its decode."""
        import torch
        step = request.stream
        key = (step.slot, camera)
        slot = self._slots.get(key)
        if step.start:
            if slot is None or slot.codec != request.codec:
                stream = torch.cuda.Stream(device_id)
                slot = self._slots[key] = _Slot(
                    create_decoder(request.codec, stream.cuda_stream, device_id, low_latency=True),
                    stream, request.codec)
            index = request.picks[0][0]
            slot.gop = GopFrames(step.video_key, step.gop_start, names[index], plan.segments[index],
                                 data)
            with self._lock:
                slot.queue.append(slot.gop)
                idle = len(slot.queue) == 1
            if idle:
                self._submit(self._decode_gop_step, key, slot)
        return check_stream_step(slot.gop if slot else None, request, request.picks[0][1])

    def _decode_gop_step(self, key, slot: _Slot) -> None:
        """Pool task: a few packets of the slot's oldest undecoded GOP, then back into the queue
        (behind every other slot's work) until the slot has nothing left to decode."""
        gop = slot.queue[0]
        try:
            finished = gop.decode_step(slot.decoder, slot.stream, self.bgr)
        except Exception:
            with self._lock:
                if self._slots.get(key) is slot:
                    del self._slots[key]    # its decoder is in an unknown state
                for waiting in slot.queue:
                    waiting.fail(gop.name)
                slot.queue.clear()
            raise
        with self._lock:
            if finished:
                slot.queue.popleft()
            more = bool(slot.queue)
        if more:
            self._submit(self._decode_gop_step, key, slot)


class NvdecBackend(DecodeBackend):
    name = "nvdec"
    device = "gpu"

    def __init__(self, color: str = "RGB", threads: int | None = None):
        super().__init__(color)
        self.threads = threads or int(os.environ.get("DALI_GOP_NVDEC_THREADS", DEFAULT_THREADS))
        self.operators: list[NvdecBatchDecoder] = []

    def decode(self, data, plan):
        from nvidia.dali import fn
        stash = BitstreamStash()
        operator = NvdecBatchDecoder(stash, self.color, self.threads)
        self.operators.append(operator)
        tokens = fn.python_function(data, plan, function=stash.put, batch_processing=True)
        return fn.dl_tensor_python_function(tokens.gpu(), function=operator, batch_processing=True,
                                            device="gpu", synchronize_stream=True)
