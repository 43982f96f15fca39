"""The CUDA driver calls the nvdec operator makes itself, through ctypes, on raw device pointers."""
from __future__ import annotations

import contextlib
import ctypes
from typing import Sequence

from dali_gop.errors import DecodeError


class CudaDriver:
    """The CUDA driver calls the operator makes itself, through ctypes, on raw device pointers.

    Two flavours, because the GIL is what runs short. DALI's thread keeps the GIL across its calls
    (``hold_gil``: ``ctypes.PyDLL``): every hand-over would cost it a re-acquisition, which takes
    long while dozens of decode threads want the GIL. Decode threads drop it (``ctypes.CDLL``): a
    driver call can wait for the context's locks while other threads' NVDEC work holds them, and
    every Python thread would wait with it. Raw copies from a frame's plane pointer, not
    ``torch.from_dlpack`` on a PyNvVideoCodec frame: the wrapping costs far more CPU than the
    copy.
    """

    #: the priority of the loader's streams: "high" (the device's greatest) or "default". The
    #: loader's work on them is short and others wait for it (a decode thread for its map, a
    #: batch for its copies); at the default priority, the blocks of a training step's long
    #: kernels queued before it are all scheduled first. The work is the same either way.
    priority = "high"

    _EVENT_DISABLE_TIMING = 2
    _NOT_READY = 600
    _STREAM_NON_BLOCKING = 1
    _LOCATION_DEVICE = 1
    _ACCESS_ORDER_STREAM = 1

    class _Location(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]

    class _CopyAttributes(ctypes.Structure):
        pass

    _CopyAttributes._fields_ = [("srcAccessOrder", ctypes.c_int), ("srcLocHint", _Location),
                                ("dstLocHint", _Location), ("flags", ctypes.c_uint)]

    def __init__(self, hold_gil: bool):
        lib = (ctypes.PyDLL if hold_gil else ctypes.CDLL)("libcuda.so.1")
        u64, ptr, size = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t
        # unified: either side may be pinned host memory (stream slots' GOPs kept on the host)
        self._memcpy = self._bind(lib.cuMemcpyAsync, u64, u64, size, ptr)
        self._wait = self._bind(lib.cuStreamWaitEvent, ptr, ptr, ctypes.c_uint)
        self._create = self._bind(lib.cuEventCreate, ctypes.POINTER(ptr), ctypes.c_uint)
        self._record = self._bind(lib.cuEventRecord, ptr, ptr)
        self._destroy = self._bind(lib.cuEventDestroy_v2, ptr)
        self._query = self._bind(lib.cuEventQuery, ptr)
        self._device = self._bind(lib.cuDeviceGet, ctypes.POINTER(ctypes.c_int), ctypes.c_int)
        self._retain = self._bind(lib.cuDevicePrimaryCtxRetain, ctypes.POINTER(ptr), ctypes.c_int)
        self._release = self._bind(lib.cuDevicePrimaryCtxRelease_v2, ctypes.c_int)
        self._push = self._bind(lib.cuCtxPushCurrent_v2, ptr)
        self._pop = self._bind(lib.cuCtxPopCurrent_v2, ctypes.POINTER(ptr))
        self._stream_create = self._bind(lib.cuStreamCreateWithPriority, ctypes.POINTER(ptr),
                                         ctypes.c_uint, ctypes.c_int)
        self._priorities = self._bind(lib.cuCtxGetStreamPriorityRange,
                                      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
        self._stream_destroy = self._bind(lib.cuStreamDestroy_v2, ptr)
        # CUDA 12.8's ABI, which later drivers keep under this name; older drivers lack it
        self._batch = getattr(lib, "cuMemcpyBatchAsync", None)
        if self._batch is not None:
            self._batch.restype = ctypes.c_int
        self._attributes: dict[int, object] = {}

    @staticmethod
    def _bind(function, *argtypes):
        function.argtypes, function.restype = list(argtypes), ctypes.c_int
        return function

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status:
            raise DecodeError(f"{call} failed with CUDA error {status}")

    def copy(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        self._check(self._memcpy(destination, source, nbytes, stream), "cuMemcpyAsync")

    def copy_many(self, destinations: Sequence[int], sources: Sequence[int],
                  sizes: Sequence[int], stream: int, device: int) -> None:
        """Copies on ``stream`` between device memory and pinned host memory (the driver tells
        them apart by address): one driver call where the driver has batches (its location hints
        apply to managed memory only)."""
        count = len(destinations)
        if count == 1 or self._batch is None:
            for destination, source, nbytes in zip(destinations, sources, sizes):
                self.copy(destination, source, nbytes, stream)
            return
        attributes = self._attributes.get(device)
        if attributes is None:
            where = self._Location(self._LOCATION_DEVICE, device)
            attributes = self._attributes[device] = (
                self._CopyAttributes(self._ACCESS_ORDER_STREAM, where, where, 0),
                (ctypes.c_size_t * 1)(0))
        failed = ctypes.c_size_t(0)
        self._check(self._batch(
            (ctypes.c_uint64 * count)(*destinations), (ctypes.c_uint64 * count)(*sources),
            (ctypes.c_size_t * count)(*sizes), ctypes.c_size_t(count),
            ctypes.byref(attributes[0]), attributes[1], ctypes.c_size_t(1), ctypes.byref(failed),
            ctypes.c_void_p(stream)), "cuMemcpyBatchAsync")

    def wait(self, stream: int, event: int) -> None:
        """``stream`` waits for ``event`` (a CUevent, e.g. ``torch.cuda.Event.cuda_event``)."""
        self._check(self._wait(stream, event, 0), "cuStreamWaitEvent")

    def done(self, event: int) -> bool:
        """Whether the GPU has passed ``event``; asks, never waits."""
        status = self._query(event)
        if status == self._NOT_READY:
            return False
        self._check(status, "cuEventQuery")
        return True

    def record(self, stream: int) -> int:
        """A new event recorded on ``stream``; :meth:`destroy` it once no one waits for it."""
        event = ctypes.c_void_p()
        self._check(self._create(ctypes.byref(event), self._EVENT_DISABLE_TIMING), "cuEventCreate")
        self._check(self._record(event, stream), "cuEventRecord")
        return event.value

    def new_stream(self, device: int) -> int:
        """A CUDA stream of its own on ``device``'s primary context, non-blocking, at
        :attr:`priority`; give it back with :meth:`destroy_stream`.

        Not ``torch.cuda.Stream()``: torch hands out 32 streams per device round robin, so the
        loader's dozens of threads would share them, with each other and with the stream the
        batches are handed over on, and work would wait for unrelated work queued before it
        (a decode thread's wait for a later batch, say)."""
        if self.priority not in ("high", "default"):
            raise ValueError(f"CudaDriver.priority {self.priority!r}: 'high' or 'default'")
        with self._context(device):
            least, greatest = ctypes.c_int(), ctypes.c_int()
            self._check(self._priorities(ctypes.byref(least), ctypes.byref(greatest)),
                        "cuCtxGetStreamPriorityRange")
            stream = ctypes.c_void_p()
            self._check(self._stream_create(
                ctypes.byref(stream), self._STREAM_NON_BLOCKING,
                greatest.value if self.priority == "high" else 0), "cuStreamCreateWithPriority")
        return stream.value

    def destroy_stream(self, stream: int, device: int) -> None:
        """Give back a stream of :meth:`new_stream`; work queued on it still runs to its end."""
        with self._context(device):
            self._stream_destroy(stream)

    @contextlib.contextmanager
    def _context(self, device: int):
        """``device``'s primary context current in this thread (which may have none yet)."""
        ordinal, context, popped = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self._device(ctypes.byref(ordinal), device), "cuDeviceGet")
        self._check(self._retain(ctypes.byref(context), ordinal), "cuDevicePrimaryCtxRetain")
        try:
            self._check(self._push(context), "cuCtxPushCurrent")
            try:
                yield
            finally:
                self._pop(ctypes.byref(popped))
        finally:
            self._release(ordinal)

    def destroy(self, event: int) -> None:
        self._destroy(event)    # streams still waiting for it keep it alive in the driver


#: how a CUDA context waits for the GPU (cuDevicePrimaryCtxSetFlags' CU_CTX_SCHED_*): CUDA's own
#: choice (spinning, where one context runs on several cores), spinning, yielding, blocking
CONTEXT_WAITS = {"auto": 0, "spin": 1, "yield": 2, "blocking": 4}


def set_context_waits(device: int, how: str) -> None:
    """How ``device``'s primary context waits for the GPU (:data:`CONTEXT_WAITS`), for every
    thread of the process that uses it (torch's, and the NVDEC sessions made on it); best set
    before the context is made."""
    lib = ctypes.CDLL("libcuda.so.1")
    ordinal = ctypes.c_int()
    CudaDriver._check(lib.cuInit(0), "cuInit")
    CudaDriver._check(lib.cuDeviceGet(ctypes.byref(ordinal), device), "cuDeviceGet")
    CudaDriver._check(lib.cuDevicePrimaryCtxSetFlags_v2(ordinal, CONTEXT_WAITS[how]),
                      "cuDevicePrimaryCtxSetFlags")


class DriverEvent:
    """An event recorded on a stream now, destroyed with the last task holding it."""

    def __init__(self, driver: CudaDriver, stream: int):
        self._driver = driver
        self.handle = driver.record(stream)

    def __del__(self):
        try:
            self._driver.destroy(self.handle)
        except Exception:   # interpreter shutdown: the driver frees it with the context
            pass
