"""Our own NVDEC session library (csrc/nvdec_session.c) on a machine without NVIDIA's driver: pip
built it, it loads, and a session says in one line what is missing. Its decoding is checked on the
GPU (tests/test_gpu_budget.py: a budget turns to these sessions, and the frames must be those of
PyNvVideoCodec's; pipelines/throughput/results: frame for frame against PyNvVideoCodec)."""
from __future__ import annotations

import ctypes

import pytest

from dali_gop.backends._nvdec_session import NvdecSession, library_path
from dali_gop.errors import DecodeError


def test_the_library_is_built_and_exports_the_session_calls():
    lib = ctypes.CDLL(str(library_path()))
    for name in ("nvdec_session_create", "nvdec_session_decode", "nvdec_session_destroy",
                 "nvdec_session_surfaces"):
        assert hasattr(lib, name), name


def test_without_the_driver_a_session_names_what_is_missing():
    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        pass
    else:
        pytest.skip("NVIDIA's video decoder library is installed here")
    with pytest.raises(DecodeError, match=r"^NVDEC: cannot open libnvcuvid\.so\.1: NVIDIA's "
                                          r"driver \(with its video decoder library\) is not "
                                          r"installed here$"):
        NvdecSession("hevc", 0)


def test_an_install_that_did_not_build_the_library_says_how_to(monkeypatch, tmp_path):
    from dali_gop.backends import _nvdec_session
    monkeypatch.setattr(_nvdec_session, "__file__", str(tmp_path / "_nvdec_session.py"))
    with pytest.raises(DecodeError, match=r"NVDEC session library is not built .*reinstall "
                                          r"dali-gop from its checkout with pip install -e \."):
        library_path()
