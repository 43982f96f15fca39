"""Just enough H.264/HEVC bitstream parsing to tell a random-access picture from a keyframe flag.

Containers flag more than random-access points as keyframes: an x264 stream with periodic intra
refresh flags its recovery-point P frames, which decode correctly only after a run of frames that
reference the previous GOP. Cutting there would give bins that decode short. So a flagged keyframe
counts only when its own slices make it one (see :func:`is_random_access`).
"""
from __future__ import annotations

from typing import Iterator

_H264_SLICE, _H264_PARTITION_A, _H264_IDR, _H264_SEI = 1, 2, 5, 6
_H264_INTRA_SLICE_TYPES = (2, 4)   # I, SI (slice_type % 5)
_SEI_RECOVERY_POINT = 6
_HEVC_IRAP = range(16, 24)         # BLA, IDR, CRA (and the reserved IRAP types)
_HEVC_FIRST_NON_VCL = 32


def nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex-B buffer (header byte(s) first), start codes stripped."""
    i = data.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(data):
        j = data.find(b"\x00\x00\x01", i + 3)
        end = len(data) if j < 0 else j - (data[j - 1] == 0)   # a 4-byte start code's zero
        yield data[i + 3:end]
        i = j


def nal_type(nal: bytes, codec: str) -> int:
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F


class _Bits:
    """Reads an RBSP (emulation-prevention bytes removed) bit by bit; IndexError past the end."""

    def __init__(self, payload: bytes):
        self.data = payload.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        self.pos += 1
        return (byte >> (7 - ((self.pos - 1) & 7))) & 1

    def ue(self) -> int:
        """Exp-Golomb code ue(v)."""
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise IndexError("exp-Golomb code longer than 32 bits")
        value = 0
        for _ in range(zeros):
            value = value << 1 | self.bit()
        return (1 << zeros) - 1 + value


def _sei_messages(rbsp: bytes) -> Iterator[tuple[int, bytes]]:
    """(payloadType, payload) of each message of an SEI RBSP."""
    pos = 0
    while pos < len(rbsp) and rbsp[pos] != 0x80:   # 0x80: rbsp_trailing_bits
        values = []
        for _ in range(2):   # payloadType, then payloadSize: runs of 0xFF plus a last byte
            value = 0
            while rbsp[pos] == 0xFF:
                value, pos = value + 255, pos + 1
            values.append(value + rbsp[pos])
            pos += 1
        kind, size = values
        yield kind, rbsp[pos:pos + size]
        pos += size


def _h264_random_access(nals: list[bytes]) -> bool:
    types = [nal_type(n, "h264") for n in nals]
    if _H264_IDR in types:
        return True
    slices = [n for n, t in zip(nals, types) if t in (_H264_SLICE, _H264_PARTITION_A)]
    if not slices:
        return False
    for nal in slices:
        # only the first two header fields matter: 16 bytes hold them for any picture size
        bits = _Bits(nal[1:17])
        bits.ue()                                                   # first_mb_in_slice
        if bits.ue() % 5 not in _H264_INTRA_SLICE_TYPES:            # slice_type
            return False   # e.g. an intra-refresh recovery point: a P frame
    for nal in (n for n, t in zip(nals, types) if t == _H264_SEI):
        for kind, payload in _sei_messages(_Bits(nal[1:]).data):
            if kind == _SEI_RECOVERY_POINT and _Bits(payload).ue() > 0:
                return False   # recovery_frame_cnt > 0: correct output only frames later
    # A non-IDR I picture: an open GOP's keyframe (x264 tags it recovery_frame_cnt = 0).
    # Whether later frames reach back past it, the decode check after splitting finds out.
    return True


def is_random_access(data: bytes, codec: str) -> bool:
    """Whether the access unit ``data`` (Annex-B) is a picture decoding can start from.

    HEVC: an IRAP picture (IDR, CRA, BLA). H.264: an IDR picture, or one of I slices only that no
    recovery-point SEI says needs later frames to recover. Unparsable data counts as not one.
    """
    nals = [n for n in nal_units(data) if n]
    try:
        if codec == "h264":
            return _h264_random_access(nals)
        vcl = next((nal_type(n, codec) for n in nals if nal_type(n, codec) < _HEVC_FIRST_NON_VCL),
                   None)
        return vcl in _HEVC_IRAP
    except IndexError:
        return False
