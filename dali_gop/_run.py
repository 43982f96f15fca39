"""One built pipeline and its life: the thread that fetches its batches, the watch over its worker
processes, and its shutdown.

A :class:`Run` is shut down completely (DALI's worker processes, executor threads, the decoders'
sessions, the progress board) by ``close()``, by its loader's garbage collection, or at interpreter
exit. Never from inside one of DALI's own threads, though: the garbage collector runs in whichever
thread allocates, DALI's python operators allocate, and a pipeline shut down from its own executor
thread joins that thread (``Resource deadlock avoided``, then an abort). A loader collected there
hands its run to a reaper thread instead.
"""
from __future__ import annotations

import atexit
import os
import queue
import signal
import threading
import time
import warnings

from dali_gop.errors import ConfigError, WorkerError
from dali_gop._pipeline import OUTPUT_NAMES, build_pipeline
from dali_gop._workers import (MAIN_GUARD_LINE, ProgressBoard, WatchedSource,
                               main_module_not_rerun, open_files_under, process_state)

#: how often a waiting training loop looks at the workers (dead ones show within this)
WATCHDOG_SECONDS = 2.0
#: how long shutdown waits for the fetch thread to leave DALI: to finish the batch it is on, or,
#: where a worker was lost, to take its error
_JOIN_SECONDS = 10.0
_LOST_JOIN_SECONDS = 0.5
#: how long shutdown waits for DALI to close its worker pool
_CLOSE_SECONDS = 5.0

_live: set["Run"] = set()     # runs not shut down yet; interpreter exit shuts them down
_reaped: queue.SimpleQueue = queue.SimpleQueue()   # reentrant: safe to put from a finalizer
_reaper: threading.Thread | None = None
_reaping: "Run | None" = None   # the run the reaper is shutting down now
_started_lock = threading.Lock()


class Run:
    """A pipeline over ``source``, built and iterated by DALI's iterator in a fetch thread that
    stays one batch ahead of the training loop."""

    def __init__(self, source, decoder, *, last_batch_policy: str, batch_size: int,
                 num_workers: int, device_id: int | None, start=None, **pipeline_options):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        _start_helpers()
        self.source = source
        self.start = start     # the loader's Position of the first batch
        self.first_epoch = 0 if start is None else start.epoch
        self._epochs_begun = 0
        self.device_id = device_id
        self.board = ProgressBoard(num_workers)
        self.operators = getattr(decoder, "operators", [])    # nvdec: sessions to close
        self.backend_name = decoder.name
        self.decoder_settings = decoder.settings()
        self.prefetch_queue_depth = pipeline_options.get("prefetch_queue_depth", 2)
        self._lock = threading.Lock()
        self._done = False
        self.down = threading.Event()    # set once shutdown is over
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._fetcher: threading.Thread | None = None
        self.pipeline = self.iterator = None
        _live.add(self)
        try:
            callback = WatchedSource(source, self.board)
            self.pipeline = build_pipeline(callback, decoder, batch_size=batch_size,
                                           device_id=device_id, py_num_workers=num_workers,
                                           **pipeline_options)
            with main_module_not_rerun(callback) as spawn, warnings.catch_warnings():
                # DALI asks for a reader_name, which an external source does not have
                warnings.filterwarnings("ignore", message=".*reader_name.*")
                try:
                    self.iterator = DALIGenericIterator(
                        [self.pipeline], list(OUTPUT_NAMES), size=source.shard_size(),
                        last_batch_policy=getattr(LastBatchPolicy, last_batch_policy),
                        # the source pads the shard's last batch itself, wrapping to the epoch's
                        # start, and ends the epoch after it: every epoch starts fresh
                        last_batch_padded=True, auto_reset=True, prepare_first_batch=False)
                except Exception:
                    # DALI's `Workers initialization failed` (or a broken pipe to a worker gone)
                    # says nothing the user can act on; the workers said why
                    if spawn.loader_ran_in_a_worker():
                        raise ConfigError(MAIN_GUARD_LINE) from None
                    raise
        except BaseException:
            self.shutdown()
            raise

    # -- batches --------------------------------------------------------------------------------
    def request(self) -> None:
        """Have the fetch thread get the next batch."""
        if self._fetcher is None:
            # the thread holds the iterator and the queues, not the run: a dropped loader's run
            # is shut down from outside it
            self._fetcher = threading.Thread(
                target=_fetch, name="dali-gop-fetch", daemon=True,
                args=(self.iterator, self.device_id, self._requests, self._results))
            self._fetcher.start()
        self._requests.put(True)

    def take(self, worker_timeout: float) -> tuple:
        """The requested batch: ``("batch", outputs, ready event or None)``, ``("end", None,
        None)`` or ``("error", exception, None)``. Raises :class:`WorkerError` when a worker
        died, or made no progress for ``worker_timeout`` seconds while this waits."""
        started = time.monotonic()
        poll = min(WATCHDOG_SECONDS, worker_timeout / 4)
        seen: dict = {}
        while True:
            try:
                return self._results.get(timeout=poll)
            except queue.Empty:
                seen = self._check_workers(time.monotonic() - started, worker_timeout, seen)

    def next_epoch(self) -> int:
        """The iterator's epoch ended: size it for the next one; its batches. A resumed epoch is
        shorter than the rest, and DALI's iterator keeps the size it was built with (``size`` is
        read-only, hence its attribute)."""
        self._epochs_begun += 1
        size = self.source.shard_size(self._epochs_begun)
        if size != self.iterator.size:
            self.iterator._size = size
        return len(self.iterator)

    def worker_pids(self) -> list[int]:
        pool = getattr(self.pipeline, "_py_pool", None)
        return list(pool.pids()) if pool is not None else []

    # -- the watch ------------------------------------------------------------------------------
    def _check_workers(self, waited: float, timeout: float, seen: dict) -> dict:
        """Raise what stops the batch from coming; else the records read, for the next check (a
        worker counts as stuck only if its record stayed the same between two checks)."""
        pids = self.worker_pids()
        dead = [pid for pid in pids if process_state(pid) in "ZX"]
        if dead:
            raise WorkerError(f"DALI worker process(es) {dead} died (killed, or out of memory): "
                              "this loader cannot go on; start a new `for` over it or build a "
                              "new one")
        records = self.board.read()
        now = time.monotonic()
        for worker, pid in enumerate(pids):
            record = records.get(pid)
            if (record is not None and record.busy and now - record.since >= timeout
                    and seen.get(pid) == record):
                raise WorkerError(f"{self._describe(worker, pid, record, now)}: no progress for "
                                  f"worker_timeout={timeout:g} s (storage hung, or slow: raise "
                                  "worker_timeout); this loader is shut down")
        if waited >= timeout:
            workers = "; ".join(self._describe(worker, pid, records.get(pid), now)
                                for worker, pid in enumerate(pids))
            raise WorkerError(f"no batch for {waited:.0f} s (worker_timeout={timeout:g} s): "
                              f"{workers or 'no workers'}; this loader is shut down")
        return records

    def _describe(self, worker: int, pid: int, record, now: float) -> str:
        state = process_state(pid)
        where = f"DALI worker {worker} (pid {pid}{', stopped' if state in 'Tt' else ''})"
        if record is None or record.position < 0:
            return f"{where}, no read yet"
        try:
            spec = self.source.samples(record.epoch)[record.position]
            sample = (f"clip {spec.clip}, frames {list(spec.frames)}, cameras "
                      f"{', '.join(self.source.dataset.cameras)}")
        except Exception:   # noqa: BLE001 - a description must not hide the error it describes
            sample = "a sample it was given"
        what = (f"sample {record.position} of epoch {self.first_epoch + record.epoch} ({sample})")
        files = open_files_under(pid, self.source.dataset.gop_root)
        opened = f", with {', '.join(files)} open" if files else ""
        if record.busy:
            return f"{where} reading {what} for {now - record.since:.0f} s{opened}"
        return f"{where} idle for {now - record.since:.0f} s after reading {what}{opened}"

    # -- the end --------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Everything this run started, gone: the fetch thread, the worker processes, DALI's
        executor threads, the decoders' sessions and kept frames, the progress board."""
        with self._lock:
            if self._done:
                return
            self._done = True
        _live.discard(self)
        try:
            self._shutdown()
        finally:
            self.down.set()

    def _shutdown(self) -> None:
        self._requests.put(None)
        if self.pipeline is None:
            self.board.close()
            return
        pool = getattr(self.pipeline, "_py_pool", None)
        # a fetch thread waiting on the workers gets an error and returns; one waiting on a worker
        # that was lost never returns, so it is waited for only briefly then
        healthy = pool is None or _close_workers(pool)
        fetcher = self._fetcher
        if fetcher is not None and fetcher is not threading.current_thread():
            fetcher.join(_JOIN_SECONDS if healthy else _LOST_JOIN_SECONDS)
        self.pipeline._shutdown()
        for operator in self.operators:
            operator.close()
        self.board.close()
        # a fetch thread stuck on a lost worker keeps its own references; this run lets go
        self.pipeline = self.iterator = None


def _close_workers(pool) -> bool:
    """DALI's ``pool.close()``, made to end whatever state the workers are in; whether they were
    all alive and running.

    A stopped worker (SIGSTOP, a debugger) takes neither DALI's exit message nor SIGTERM: it is
    killed, and DALI's observer thread left to see it die before the pool is closed, so that it
    does not notify queues whose sleepers are gone (which waits forever). Should the close still
    hang (a worker lost while holding a queue's lock), the workers are killed and the pool
    abandoned.
    """
    pids = pool.pids()
    lost = [pid for pid in pids if process_state(pid) in "TtZX"]
    for pid in lost:
        _kill(pid)
    deadline = time.monotonic() + _CLOSE_SECONDS
    while any(process_state(pid) != "X" for pid in lost) and time.monotonic() < deadline:
        time.sleep(0.02)    # "X": reaped, by the observer, which then ends on its own
    closer = threading.Thread(target=pool.close, name="dali-gop-pool-close", daemon=True)
    closer.start()
    closer.join(_CLOSE_SECONDS)
    if closer.is_alive():
        for pid in pids:
            _kill(pid)
        # DALI closes the pool again when the pipeline is collected, and would hang there
        pool.pool._observer = None
        return False
    return not lost


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _fetch(iterator, device_id: int | None, requests: queue.SimpleQueue,
           results: queue.SimpleQueue) -> None:
    stream = driver = None
    if device_id is not None:
        import torch

        from dali_gop.backends._cuda import CudaDriver
        torch.cuda.set_device(device_id)    # the current GPU is per thread
        # DALI's iterator hands its outputs to torch on this thread's current stream. On the
        # default stream, the training's kernels queued after that point would wait for the
        # batch prefetched here; on a stream of its own only the batch's consumer waits, for it
        # (and not one of torch's pooled streams, which decode threads may be queueing on too)
        driver = CudaDriver(hold_gil=False)
        stream = torch.cuda.ExternalStream(driver.new_stream(device_id), device=device_id)
    try:
        _fetch_batches(iterator, stream, requests, results)
    finally:
        if stream is not None:
            driver.destroy_stream(stream.cuda_stream, device_id)


def _fetch_batches(iterator, stream, requests: queue.SimpleQueue,
                   results: queue.SimpleQueue) -> None:
    import torch
    while requests.get():
        try:
            if stream is None:
                results.put(("batch", next(iterator), None))
                continue
            with torch.cuda.stream(stream):
                batch = next(iterator)
            ready = torch.cuda.Event()
            ready.record(stream)
            results.put(("batch", batch, ready))
        except StopIteration:
            results.put(("end", None, None))
        except BaseException as e:   # noqa: BLE001 - the training loop raises it
            results.put(("error", e, None))


# -- shutting down from a safe thread -------------------------------------------------------------

def release(run: Run) -> None:
    """A loader's finalizer: shut ``run`` down here, or from the reaper thread where this thread
    is one of DALI's (or a fetch thread, which shutdown joins)."""
    current = threading.current_thread()
    if isinstance(current, threading._DummyThread) or current.name == "dali-gop-fetch":
        _reaped.put(run)
    else:
        run.shutdown()


def shutdown_soon(run: Run) -> None:
    """Shut ``run`` down on the reaper thread, so that the caller goes on at once (shutting down
    a run with a stopped worker waits seconds for the worker to be reaped): ``run.down`` is set
    when it is over, and interpreter exit waits for it."""
    _reaped.put(run)


def _reap() -> None:
    global _reaping
    while True:
        _reaping = _reaped.get()
        _shutdown_quietly(_reaping)
        _reaping = None


def _shutdown_all() -> None:
    """At interpreter exit, before DALI's own exit hook: every run still alive, from the main
    thread, so that no executor thread runs on while the interpreter is torn down."""
    while not _reaped.empty():
        _shutdown_quietly(_reaped.get())
    for run in list(_live):
        _shutdown_quietly(run)
    reaping = _reaping
    if reaping is not None:     # not torn down under the reaper, mid-way
        reaping.down.wait(_JOIN_SECONDS + 2 * _CLOSE_SECONDS)


def _shutdown_quietly(run: Run) -> None:
    """Shutdown where no caller can take an error: say it, and go on with the others."""
    try:
        run.shutdown()
    except Exception as e:   # noqa: BLE001
        warnings.warn(f"dali_gop: shutting a loader's pipeline down failed: {e!r}",
                      ResourceWarning, stacklevel=1)


def _start_helpers() -> None:
    """The reaper thread and the exit hook, once. Registered after DALI's module registered its
    own exit hook, so this one runs first (atexit runs last-registered first)."""
    global _reaper
    with _started_lock:
        if _reaper is None:
            import nvidia.dali.pipeline   # noqa: F401 - its exit hook first
            atexit.register(_shutdown_all)
            _reaper = threading.Thread(target=_reap, name="dali-gop-reaper", daemon=True)
            _reaper.start()
