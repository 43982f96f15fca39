"""``import dali_gop`` asks CUDA for 32 hardware work queues (CUDA_DEVICE_MAX_CONNECTIONS) before
a CUDA context exists, leaves a value the process set alone, and warns once, at a GPU loader,
where torch made its context first (dali_gop._work_queues says why)."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from conftest import ROOT

from dali_gop import _work_queues


def imported_value(environment: dict) -> str:
    code = "import os, dali_gop; print(os.environ.get('CUDA_DEVICE_MAX_CONNECTIONS'))"
    env = {k: v for k, v in os.environ.items() if k != _work_queues.VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **environment},
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_import_asks_for_the_most_queues():
    assert imported_value({}) == "32"


def test_a_value_the_process_set_stays():
    assert imported_value({_work_queues.VARIABLE: "1"}) == "1"


def test_too_late_warns_once(monkeypatch):
    monkeypatch.delenv(_work_queues.VARIABLE, raising=False)
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake)
    _work_queues.widen()
    assert _work_queues.VARIABLE not in os.environ    # it would change nothing now
    with pytest.warns(UserWarning, match="CUDA_DEVICE_MAX_CONNECTIONS=32"):
        _work_queues.warn_if_narrow()
    _work_queues.warn_if_narrow()      # once: a second loader is not warned again
