"""Worker processes started by spawn, not fork, and without re-running the caller's script.

A fork copies the locks that the caller's other threads hold at that instant (DALI's, a loader's,
a notebook's), still held, into a child with no thread to release them: a worker that takes one
waits forever. A spawned worker starts clean, but by default re-imports the caller's ``__main__``
so that objects defined there unpickle: a script without ``if __name__ == "__main__":`` then runs
again in every worker, and a script read from stdin cannot be re-imported at all. Workers whose
tasks need nothing of ``__main__`` are spawned with it hidden.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

_HIDDEN = ("__spec__", "__file__")


@contextlib.contextmanager
def main_module_hidden():
    """While processes are spawned: ``__main__`` hidden from ``multiprocessing``, which then
    neither re-runs the script in them nor needs it to be a file."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__[name] for name in _HIDDEN if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        for name in _HIDDEN:
            main.__dict__.pop(name, None)
        main.__dict__.update(saved)


_SPAWN = multiprocessing.get_context("spawn")


class _MainHiddenProcess(_SPAWN.Process):
    """A spawned process that is started with ``__main__`` hidden."""

    def start(self) -> None:
        with main_module_hidden():
            super().start()


class _MainHiddenContext(type(_SPAWN)):
    Process = _MainHiddenProcess


def process_pool(workers: int, **options) -> ProcessPoolExecutor:
    """A pool of at most ``workers`` spawned processes, each started with ``__main__`` hidden
    (whenever the pool starts it): for tasks that need nothing of the caller's script."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=_MainHiddenContext(), **options)
