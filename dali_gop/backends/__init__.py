"""Decode backends: one interface, chosen by name (``nvdec``, ``cpu``, ``dali``).

A backend turns the worker's outputs (``data``: GOP bytes, ``plan``: a :class:`dali_gop.plan.Plan`
as int64) into a uint8 tensor of frames per sample, shaped (cameras, T, H, W, 3), inside a DALI
pipeline graph. Backends import their heavy dependencies (PyNvVideoCodec, torch) only when built,
so that choosing ``cpu`` never touches a GPU driver.
"""
from dali_gop.backends._base import DecodeBackend, get_backend, gpu_available
# NVDEC sessions as the nvdec backend makes and feeds them, PyNvVideoCodec's and our own, for
# code that times NVDEC itself (the benchmark's ceiling): importing them needs no driver
from dali_gop.backends._nvdec import create_decoder, decode_calls, packet, pynvvideocodec
from dali_gop.backends._nvdec_session import NvdecSession

__all__ = ["DecodeBackend", "NvdecSession", "create_decoder", "decode_calls", "get_backend",
           "gpu_available", "packet", "pynvvideocodec"]
