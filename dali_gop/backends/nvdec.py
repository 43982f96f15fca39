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

from dali_gop.backends import DecodeBackend
from dali_gop.backends._assemble import DecodeError, check_stream_step
from dali_gop.store import DecodePlan, Segment, decode_plan, segment_names

DEFAULT_THREADS = 12


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


def decode_packets(decoder, packets, sink: Callable[[int, object], bool], *, flush: bool = True,
                   low_latency: bool = False, first_position: int = 0) -> int:
    """Feed packets, calling ``sink(position, frame)`` for each output frame in display order while
    the frame is valid (before the next ``Decode``); stop early when ``sink`` returns True.
    Returns the next output position."""
    position = first_position
    for packet in packets:
        for frame in decoder.Decode(_packet(packet, low_latency)):
            stop = sink(position, frame)
            position += 1
            if stop:
                return position
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

    def take(self, plan_shapes: list[tuple[int, ...]]):
        if not self._batches:
            raise DecodeError("nvdec: GPU stage ran ahead of the CPU stage (no stashed batch)")
        datas, plans = self._batches.popleft()
        if [p.shape for p in plans] != plan_shapes:
            raise DecodeError("nvdec: stashed bytes do not match this batch's plans (pipeline out "
                              "of step); rebuild the pipeline")
        return datas, plans


@dataclass
class _ThreadDecoders:
    stream: object
    decoders: dict = field(default_factory=dict)


class NvdecBatchDecoder:
    """GPU python operator: a batch of (host bytes, plan) -> frames (cameras, T, H, W, 3) per sample."""

    def __init__(self, stash: BitstreamStash, color: str = "RGB", threads: int = DEFAULT_THREADS):
        self.stash = stash
        self.bgr = color == "BGR"
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._thread_decoders: list[_ThreadDecoders] = []
        self._streams: dict[tuple[int, int], _SlotDecoder] = {}
        self._used_streams: list = []
        self._lock = threading.Lock()

    # -- resources ------------------------------------------------------------------------------
    def decoder_count(self) -> int:
        return sum(len(t.decoders) for t in self._thread_decoders) + len(self._streams)

    def _thread_state(self, device_id: int) -> _ThreadDecoders:
        import torch
        state = getattr(self._local, "state", None)
        if state is None:
            torch.cuda.set_device(device_id)
            state = self._local.state = _ThreadDecoders(torch.cuda.Stream(device_id))
            with self._lock:
                self._thread_decoders.append(state)
        return state

    # -- the operator ---------------------------------------------------------------------------
    def __call__(self, plan_tokens):
        import torch
        from nvidia.dali import python_function_plugin
        from torch.utils.dlpack import from_dlpack, to_dlpack

        tokens = [from_dlpack(t) for t in plan_tokens]
        datas, plans = self.stash.take([tuple(t.shape) for t in tokens])
        device_id = torch.cuda.current_device()
        dali_stream = torch.cuda.ExternalStream(python_function_plugin.current_dali_stream(),
                                                device=device_id)
        decoded = [decode_plan(p) for p in plans]
        names = [segment_names(d, p.names_offset) for d, p in zip(datas, decoded)]
        with torch.cuda.stream(dali_stream):   # outputs freed on DALI's stream: reuse is ordered
            outputs = [self._allocate(plan, name_list) for plan, name_list in zip(decoded, names)]
        units = self._units(datas, decoded, names, outputs)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nvdec")
        futures = [self._pool.submit(unit, device_id) for unit in units]
        errors = [f.exception() for f in futures]
        for stream in {id(s): s for s in self._used_streams}.values():
            dali_stream.wait_stream(stream)
        self._used_streams.clear()
        for error in errors:
            if error is not None:
                raise error
        return [to_dlpack(out) for out in outputs]

    def _allocate(self, plan: DecodePlan, names: list[str]):
        import torch
        sizes = {(r.height, r.width) for r in plan.requests}
        if len(sizes) != 1:
            raise DecodeError(f"cameras of one sample differ in size {sorted(sizes)} ({names[0]} "
                              "...): a batch tensor needs one size; resize them in preprocessing")
        (height, width), = sizes
        length = len(plan.requests[0].picks)
        return torch.empty((len(plan.requests), length, height, width, 3), dtype=torch.uint8,
                           device="cuda")

    def _units(self, datas, plans, names, outputs):
        """Work items for the pool: one per plain segment, one per stream step."""
        units = []
        for data, plan, name_list, out in zip(datas, plans, names, outputs):
            wanted: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
            for camera, request in enumerate(plan.requests):
                if request.stream is not None:
                    units.append(self._stream_unit(data, plan, name_list, out, camera, request))
                    continue
                for t, (segment, position) in enumerate(request.picks):
                    wanted[segment].append((position, camera, t))
            for segment, targets in wanted.items():
                codec = next(r.codec for r in plan.requests
                             if any(p[0] == segment for p in r.picks))
                units.append(self._segment_unit(data, plan.segments[segment], name_list[segment],
                                                codec, out, targets))
        return units

    def _copy(self, frame, destination):
        import torch
        image = torch.from_dlpack(frame)
        destination.copy_(image.flip(-1) if self.bgr else image)

    def _segment_unit(self, data, segment: Segment, name: str, codec: str, out, targets):
        by_position = collections.defaultdict(list)
        for position, camera, t in targets:
            by_position[position].append(out[camera, t])
        last = max(by_position)

        def run(device_id: int):
            import torch
            state = self._thread_state(device_id)
            key = (codec,)
            decoder = state.decoders.get(key)
            if decoder is None:
                decoder = state.decoders[key] = create_decoder(codec, state.stream.cuda_stream,
                                                               device_id)
            self._note_stream(state.stream)

            def sink(position, frame):
                for destination in by_position.get(position, ()):
                    self._copy(frame, destination)
                return False

            with torch.cuda.stream(state.stream):
                try:
                    produced = decode_packets(decoder, packets_of(data, segment), sink)
                except Exception as e:
                    state.decoders.pop(key, None)   # a decoder in an unknown state is not reused
                    raise DecodeError(f"{name}: NVDEC failed ({e})") from e
            if produced <= last or produced < segment.num_outputs:
                raise DecodeError(f"{name}: decoded {produced} frames where its index promises "
                                  f"{segment.num_outputs}: corrupt bin (re-run preprocess)")
        return run

    def _note_stream(self, stream):
        with self._lock:
            self._used_streams.append(stream)

    def _stream_unit(self, data, plan: DecodePlan, names, out, camera: int, request):
        step = request.stream
        key = (step.slot, camera)

        def run(device_id: int):
            import torch
            slot = self._streams.get(key)
            if step.start:
                segment_index = request.picks[0][0]
                if slot is None or slot.codec != request.codec:
                    stream = torch.cuda.Stream(device_id)
                    slot = _SlotDecoder(create_decoder(request.codec, stream.cuda_stream, device_id,
                                                       low_latency=True), stream, request.codec)
                    self._streams[key] = slot
                slot.start_gop(step, names[segment_index], data, plan.segments[segment_index])
            check_stream_step(slot, request, request.picks[0][1])
            self._note_stream(slot.stream)
            with torch.cuda.stream(slot.stream):
                try:
                    for t, (_, position) in enumerate(request.picks):
                        slot.frame(position, out[camera, t], self._copy)
                except Exception:
                    self._streams.pop(key, None)   # its decoder is in an unknown state
                    raise
        return run


@dataclass
class _SlotDecoder:
    """A stream slot's decoder for one camera: stays at its place in a GOP across iterations.

    LOW display latency makes NVDEC output each frame as soon as display order allows, so the
    slot feeds only the packets the wanted frame needs; frames that come out ahead are kept.
    """
    decoder: object
    stream: object
    codec: str
    video_key: int = -1
    gop_start: int = -1
    name: str = ""
    packets: list = field(default_factory=list)
    segment: Segment | None = None
    fed: int = 0                 # packets fed so far
    produced: int = 0            # frames output so far (= next output position)
    ahead: dict = field(default_factory=dict)    # position -> frame copy, output before wanted

    def start_gop(self, step, name: str, data: np.ndarray, segment: Segment) -> None:
        if self.fed < len(self.packets):
            # still inside the previous GOP: flush it so the decoder accepts a new keyframe
            decode_packets(self.decoder, [], lambda position, frame: False, flush=True)
        self.video_key, self.gop_start, self.name = step.video_key, step.gop_start, name
        self.packets, self.segment = packets_of(data, segment), segment
        self.fed = self.produced = 0
        self.ahead = {}

    def frame(self, position: int, destination, copy) -> None:
        import torch
        if position < self.produced and position not in self.ahead:
            raise DecodeError(f"{self.name}: stream slot already went past frame "
                              f"{self.gop_start + position}")
        done = position in self.ahead

        def sink(output_position, frame):
            nonlocal done
            if output_position == position:
                copy(frame, destination)
                done = True
            elif output_position > position:
                self.ahead[output_position] = torch.from_dlpack(frame).clone()
            return False

        while not done:
            if self.fed >= len(self.packets):
                raise DecodeError(f"{self.name}: decoded {self.produced} frames where its index "
                                  f"promises {self.segment.num_outputs}: corrupt bin")
            packet = self.packets[self.fed]
            self.fed += 1
            self.produced = decode_packets(self.decoder, [packet], sink,
                                           flush=self.fed == len(self.packets), low_latency=True,
                                           first_position=self.produced)
        if position in self.ahead:
            image = self.ahead[position]
            destination.copy_(image.flip(-1) if copy.__self__.bgr else image)
        for stale in [p for p in self.ahead if p <= position]:
            del self.ahead[stale]


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
