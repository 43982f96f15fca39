"""NVDEC sessions of our own (csrc/nvdec_session.c, through ctypes): the driver's parser and a
hardware decoder that write each frame into the caller's device memory as it is displayed.

A session holds the decode surfaces its video needs (the parser's minimum plus
:data:`EXTRA_SURFACES`) and one output surface, nothing more: no frames of its own between calls,
which is what lets the loader's memory budget go low. A ``decode`` call runs without the GIL
(ctypes drops it) from the first packet to the last copy, with no Python per frame. A frame is one
copy out of its mapped surface; ``decode_many`` gives its sessions' surfaces back after one sync
per stream, not one a frame, and ``submit_many`` splits it in two, so that a thread queues a group
of sessions' pictures on NVDEC before it waits for another's.
"""
from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from dali_gop.backends._assemble import DecodeError

#: decode surfaces beyond the parser's minimum: NVDEC decodes a picture while an earlier one is
#: copied out (the minimum alone makes each decode wait for the last copy)
EXTRA_SURFACES = 2
#: the parser displays each frame as soon as display order allows
DISPLAY_DELAY = 0
#: ``decode``: a frame's surface goes back before the next frame is mapped (or at the call's end)
#: instead of at once, so that the parser queues the next picture while the frame's copies run
#: (off: not yet measured against the default on a GPU; the benchmark's ``--unmap_late``)
UNMAP_LATE = False
#: cudaVideoCodec values of nvcuvid.h
CODECS = {"h264": 4, "hevc": 8}

_ERROR_BYTES = 512
_library = None


def library_path() -> Path:
    """The built session library (``pip install`` builds it next to this module)."""
    here = Path(__file__).parent
    found = sorted(here.glob("_nvdec_session_lib*.so"))
    if not found:
        raise DecodeError("dali_gop's NVDEC session library is not built (no "
                          f"{here}/_nvdec_session_lib*.so): reinstall dali-gop from its checkout "
                          "with pip install -e . (it needs a C compiler)")
    return found[0]


def _load():
    global _library
    if _library is None:
        lib = ctypes.CDLL(str(library_path()))   # CDLL: every call drops the GIL
        u64, i64, ptr, text = ctypes.c_ulonglong, ctypes.c_longlong, ctypes.c_void_p, ctypes.c_char_p
        lib.nvdec_session_create.argtypes = [ctypes.c_int, u64, ctypes.c_uint, ctypes.c_uint,
                                             ctypes.c_int, text, ctypes.c_int]
        lib.nvdec_session_create.restype = ptr
        lib.nvdec_session_decode.argtypes = [ptr, ptr, u64, ctypes.c_int, ptr, ptr, ctypes.c_int,
                                             ctypes.c_int, ctypes.c_int, text, ctypes.c_int]
        lib.nvdec_session_decode.restype = i64
        lib.nvdec_session_destroy.argtypes = [ptr]
        lib.nvdec_session_destroy.restype = None
        lib.nvdec_session_surfaces.argtypes = [ptr]
        lib.nvdec_session_surfaces.restype = ctypes.c_uint
        lib.nvdec_sessions_decode.argtypes = [ctypes.c_int] + [ptr] * 10
        lib.nvdec_sessions_decode.restype = None
        lib.nvdec_sessions_submit.argtypes = [ctypes.c_int] + [ptr] * 9
        lib.nvdec_sessions_submit.restype = None
        lib.nvdec_sessions_collect.argtypes = [ctypes.c_int] + [ptr] * 3
        lib.nvdec_sessions_collect.restype = None
        lib.nvdec_session_error.argtypes = [ptr]
        lib.nvdec_session_error.restype = ctypes.c_char_p
        lib.nvdec_session_times.argtypes = [ptr, ptr]
        lib.nvdec_session_times.restype = None
        lib.nvdec_session_clear_times.argtypes = [ptr]
        lib.nvdec_session_clear_times.restype = None
        _library = lib
    return _library


#: what ``nvdec_session_times`` reports, in its order (:meth:`NvdecSession.times`)
TIMES = ("in_calls", "in_map", "in_sync", "calls", "frames", "in_picture", "in_create", "creates",
         "longest_call", "longest_map", "longest_picture")


class NvdecSession:
    """One parser + decoder for one codec, on the calling thread's current CUDA context, copying on
    ``stream``; use it from one thread at a time."""

    def __init__(self, codec: str, stream: int, extra_surfaces: int | None = None,
                 display_delay: int | None = None, unmap_late: bool | None = None):
        """None: the module's :data:`EXTRA_SURFACES`, :data:`DISPLAY_DELAY`, :data:`UNMAP_LATE`
        as they are now (a run may set them)."""
        self._handle = None
        self._flight: Submitted | None = None    # its packet parsed, its frames not yet copied
        self._lib = _load()
        error = ctypes.create_string_buffer(_ERROR_BYTES)
        self._handle = self._lib.nvdec_session_create(
            CODECS[codec], stream, EXTRA_SURFACES if extra_surfaces is None else extra_surfaces,
            DISPLAY_DELAY if display_delay is None else display_delay,
            int(UNMAP_LATE if unmap_late is None else unmap_late), error, _ERROR_BYTES)
        if not self._handle:
            raise DecodeError(f"NVDEC: {error.value.decode(errors='replace')}")

    def decode(self, data: np.ndarray, targets: Sequence[tuple[int, int]],
               frame_shape: tuple[int, int], end_of_stream: bool = True) -> int:
        """Parse ``data`` (uint8, Annex B), then flush unless ``end_of_stream`` is False; each
        (position, pointer) of ``targets`` gets output ``position`` (counted from the last flush)
        as a dense NV12 frame of ``frame_shape`` (H*3/2, W), its copy done when this returns.
        Returns the frames output since the last flush."""
        if self._handle is None:
            raise DecodeError("NVDEC session used after close()")
        if self._flight is not None:
            raise DecodeError("NVDEC session fed while a packet of it is in flight (collect it "
                              "first)")
        data, positions, pointers, (height, width) = _arguments(data, targets, frame_shape)
        error = ctypes.create_string_buffer(_ERROR_BYTES)
        produced = self._lib.nvdec_session_decode(
            self._handle, data.ctypes.data, data.size, int(end_of_stream), positions.ctypes.data,
            pointers.ctypes.data, len(positions), width, height, error, _ERROR_BYTES)
        if produced < 0:
            raise DecodeError(error.value.decode(errors="replace"))
        return produced

    @property
    def surfaces(self) -> int:
        """Decode surfaces of the decoder made so far (0 before the first sequence header)."""
        return self._lib.nvdec_session_surfaces(self._handle) if self._handle else 0

    def times(self) -> dict[str, float]:
        """Where this session's calls spent their time so far, measured in the library: seconds
        in its calls, waiting in cuvidMapVideoFrame (for NVDEC) and in the sync after its copies
        (for the copy stream), with its calls and frames; seconds in cuvidDecodePicture and in
        cuvidCreateDecoder, the decoders it made, and the longest call, map and picture (the
        ``longest_*`` are maxima, not sums). A Python caller's own time for a call beyond
        ``in_calls`` is the GIL's and Python's."""
        out = (ctypes.c_double * len(TIMES))()
        if self._handle is not None:
            self._lib.nvdec_session_times(self._handle, out)
        return dict(zip(TIMES, out))

    def clear_times(self) -> None:
        """:meth:`times` from 0 again (a measurement's timed part)."""
        if self._handle is not None:
            self._lib.nvdec_session_clear_times(self._handle)

    def error(self) -> str:
        """Why the session failed ("" where it has not)."""
        return self._lib.nvdec_session_error(self._handle).decode(errors="replace") \
            if self._handle else "NVDEC session used after close()"

    def close(self) -> None:
        if self._flight is not None:    # the library still points at it and its targets
            self._flight.collect()
        if self._handle is not None:
            self._lib.nvdec_session_destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()


def _arguments(data, targets: Sequence[tuple[int, int]], frame_shape: tuple[int, int]):
    """A decode call's bytes, target positions and pointers (in position order), (H, W)."""
    ordered = sorted(targets)
    height, width = frame_shape[0] * 2 // 3, frame_shape[1]
    if math.prod(frame_shape) != width * height * 3 // 2:
        raise DecodeError(f"NVDEC: frame shape {frame_shape} is not NV12 (H*3/2, W)")
    return (np.ascontiguousarray(data, dtype=np.uint8),
            np.array([p for p, _ in ordered], dtype=np.int64),
            np.array([q for _, q in ordered], dtype=np.uint64), (height, width))


class Submitted:
    """``session.decode(data, targets, frame_shape, end_of_stream)`` for each call, one packet per
    session, distinct sessions, begun: our sessions' packets are parsed and their pictures queued
    on NVDEC (one C call without the GIL), and :meth:`collect` copies their frames out (another),
    so that the caller's thread can do other work while NVDEC decodes. Other sessions decode at
    :meth:`collect`, one after the other. Until then the sessions take no other call (closing one
    collects first)."""

    def __init__(self, calls: Sequence[tuple]):
        self._calls = list(calls)
        self._ours = [c for c in self._calls
                      if isinstance(c[0], NvdecSession) and c[0]._handle is not None]
        self._results: list | None = None
        if self._ours:
            # the library reads these until collect(): kept alive here
            self._arguments = [_arguments(data, targets, shape)
                               for _, data, targets, shape, _ in self._ours]
            count = len(self._ours)
            array = lambda kind, values: (kind * count)(*values)    # noqa: E731
            self._handles = array(ctypes.c_void_p, [c[0]._handle for c in self._ours])
            self._ends = array(ctypes.c_int, [int(c[4]) for c in self._ours])
            self._positions = array(ctypes.c_void_p, [a[1].ctypes.data for a in self._arguments])
            self._pointers = array(ctypes.c_void_p, [a[2].ctypes.data for a in self._arguments])
            _load().nvdec_sessions_submit(
                count, self._handles,
                array(ctypes.c_void_p, [a[0].ctypes.data for a in self._arguments]),
                array(ctypes.c_ulonglong, [a[0].size for a in self._arguments]), self._ends,
                self._positions, self._pointers,
                array(ctypes.c_int, [len(a[1]) for a in self._arguments]),
                array(ctypes.c_int, [a[3][1] for a in self._arguments]),
                array(ctypes.c_int, [a[3][0] for a in self._arguments]))
        for call in self._calls:
            call[0]._flight = self

    def collect(self) -> list:
        """Each call's result, in order: the session's outputs, or the DecodeError it failed
        with (the other calls go on). Collected once; later calls return the same."""
        if self._results is not None:
            return self._results
        results: dict[int, object] = {}
        if self._ours:
            outputs = (ctypes.c_longlong * len(self._ours))()
            _load().nvdec_sessions_collect(len(self._ours), self._handles, self._ends, outputs)
            for call, produced in zip(self._ours, outputs):
                call[0]._flight = None
                results[id(call)] = produced if produced >= 0 else DecodeError(call[0].error())
            self._arguments = self._positions = self._pointers = None
        for call in self._calls:
            if id(call) not in results:
                call[0]._flight = None
                try:
                    results[id(call)] = call[0].decode(*call[1:])
                except Exception as e:
                    results[id(call)] = e
        self._results = [results[id(call)] for call in self._calls]
        return self._results


def submit_many(calls: Sequence[tuple]) -> Submitted:
    """:class:`Submitted` ``calls``: their pictures decoding on NVDEC until ``collect()``."""
    return Submitted(calls)


def decode_many(calls: Sequence[tuple]) -> list:
    """``session.decode(data, targets, frame_shape, end_of_stream)`` for each call, one packet
    per session, distinct sessions: our sessions' packets are all parsed first and their frames
    copied after (the pictures decoding on NVDEC at once); other sessions one after the other.
    Each result is the session's outputs, or the DecodeError it failed with (the other calls go
    on)."""
    return Submitted(calls).collect()
