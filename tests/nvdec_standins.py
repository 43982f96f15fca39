"""Stand-ins that let the nvdec operator run on a CPU: PyAV decodes where NVDEC would (behind our
own session's face and behind PyNvVideoCodec's), host memory
plays device memory, CUDA streams and events do nothing. Only the operator's own logic is real:
the stash, the stream slots' kept GOPs, the pool, the pointers it copies frames to."""
from __future__ import annotations

import contextlib
import ctypes
import types

import numpy as np

from dali_gop.backends._cuda import CudaDriver
from videos import nv12_of


class StandInFrame:
    """What the operator reads of a PyNvVideoCodec NV12 frame: shape, strides, plane pointer."""

    def __init__(self, nv12: np.ndarray):
        self.nv12 = np.ascontiguousarray(nv12)
        self.shape = self.nv12.shape
        self.strides = (self.shape[1], 1)

    def GetPtrToPlane(self, plane: int) -> int:
        return self.nv12.ctypes.data


class StandInDecoder:
    """Decode(packet) -> frames output so far; an empty packet flushes and resets the parser, as
    PyNvVideoCodec's flush does. Frames stay valid until the next Decode, as there."""

    def __init__(self, codec: str):
        import av
        self._codec = codec
        self._context = av.CodecContext.create(codec, "r")
        self._frames: list[StandInFrame] = []

    def Decode(self, packet) -> list[StandInFrame]:
        import av
        data = ctypes.string_at(packet.bsl_data, packet.bsl) if packet.bsl else b""
        frames = [f for p in self._context.parse(data) for f in self._context.decode(p)]
        if not packet.bsl:
            frames += list(self._context.decode(None))
            self._context = av.CodecContext.create(self._codec, "r")
        self._frames = [StandInFrame(nv12_of(f.to_ndarray(format="yuv420p"))) for f in frames]
        return list(self._frames)


class StandInSession:
    """What the operator uses of dali_gop's own NVDEC session: ``decode`` parses the bytes (and
    flushes at ``end_of_stream``), copying each wanted output (counted from the last flush) to its
    pointers as dense NV12 as the decoder outputs it: FFmpeg's parser and decoder hold frames back
    as NVDEC's do, so frames come out late and in bursts at a flush."""

    def __init__(self, codec: str, stream: int, *args, **kwargs):
        import av
        self._codec = codec
        self._context = av.CodecContext.create(codec, "r")
        self._outputs = 0
        self.closed = False

    def decode(self, data, targets, frame_shape, end_of_stream=True) -> int:
        import av
        from dali_gop.backends._assemble import DecodeError
        assert not self.closed
        assert getattr(self, "_flight", None) is None, "fed while a packet of it is in flight"
        packets = list(self._context.parse(bytes(data)))
        if end_of_stream:
            packets += list(self._context.parse(b""))     # b"": the parser's last
        frames = [f for p in packets for f in self._context.decode(p)]
        if end_of_stream:
            frames += list(self._context.decode(None))
        wanted = {}
        for position, pointer in targets:
            wanted.setdefault(position, []).append(pointer)
        for frame in frames:
            nv12 = np.ascontiguousarray(nv12_of(frame.to_ndarray(format="yuv420p")))
            for pointer in wanted.get(self._outputs, ()):
                if nv12.shape != tuple(frame_shape):
                    raise DecodeError(f"NVDEC frame {nv12.shape} does not fit the "
                                      f"sample's {tuple(frame_shape)}")
                ctypes.memmove(pointer, nv12.ctypes.data, nv12.nbytes)
            self._outputs += 1
        produced = self._outputs
        if end_of_stream:
            self._context = av.CodecContext.create(self._codec, "r")
            self._outputs = 0
        return produced

    def close(self):
        if getattr(self, "_flight", None) is not None:   # as our session's close does
            self._flight.collect()
        self.closed = True


class _PacketData:
    bsl = 0
    bsl_data = 0


class _NoOp:
    cuda_stream = 0

    def __init__(self, *args, **kwargs):
        pass

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def record(self, stream=None):
        pass


class _StandInEvent:
    cuda_event = 0

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass


class StandInDriver(CudaDriver):
    """The operator's driver calls on host memory: copies are memmoves, events and waits nothing.
    Batched copies and the frame sink are the real ones, over these copies."""

    def __init__(self, hold_gil: bool = True):
        self._batch = None
        self._attributes = {}

    def copy(self, destination, source, nbytes, stream):
        ctypes.memmove(destination, source, nbytes)

    def wait(self, stream, event):
        pass

    def record(self, stream):
        return 0

    def done(self, event):
        return True

    def destroy(self, event):
        pass

    def new_stream(self, device):
        return 0

    def destroy_stream(self, stream, device):
        pass


def install(monkeypatch) -> None:
    import torch
    from nvidia.dali import python_function_plugin

    from dali_gop.backends import _nvdec as nvdec

    standin_nvc = types.SimpleNamespace(
        PacketData=_PacketData, cudaVideoCodec=types.SimpleNamespace(H264="h264", HEVC="hevc"),
        OutputColorType=types.SimpleNamespace(RGB="rgb"),
        CreateDecoder=lambda **options: StandInDecoder(options["codec"]))
    monkeypatch.setattr(nvdec, "pynvvideocodec", lambda: standin_nvc)
    monkeypatch.setattr(nvdec, "NvdecSession", StandInSession)
    for name in ("Stream", "ExternalStream"):
        monkeypatch.setattr(torch.cuda, name, _NoOp)
    monkeypatch.setattr(torch.cuda, "Event", _StandInEvent)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None, raising=False)
    empty = torch.empty
    monkeypatch.setattr(torch, "empty",
                        lambda *a, device=None, pin_memory=False, **k: empty(*a, **k))
    monkeypatch.setattr(python_function_plugin, "current_dali_stream", lambda: 0, raising=False)

    monkeypatch.setattr(nvdec, "CudaDriver", StandInDriver)
