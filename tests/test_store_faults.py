"""Faults of the GOP bins under GopStore.read (dali_gop/_store.py): truncated, missing or
flipped bins, with and without checksums, and the fuzzed bin reader. docs/reliability.md is the
table.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dali_gop import format as fmt
from dali_gop._store import GopStore, ReadRequest

from conftest import GOP, VIDEO, a_bin, cpu_decode, fuzz


# == input faults: the bins ===================================================================

def test_truncated_bin_is_a_format_error_naming_it(gops):
    entry, victim = a_bin(gops)
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(fmt.FormatError, match=f"{victim}: {entry.size - 7} bytes, index says"):
        GopStore(gops).read([(VIDEO, [entry.start])])


def test_flipped_bytes_are_caught_with_checksums(gops):
    entry, victim = a_bin(gops)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(fmt.FormatError, match=f"{victim}: checksum mismatch"):
        GopStore(gops, verify_checksums=True).read([(VIDEO, [entry.end - 1])])
    # without checksums the bytes are delivered as they are: only the decoder can notice
    read = GopStore(gops).read([(VIDEO, [entry.end - 1])])
    assert bytes(read.data[:read.plan.names_offset]) == bytes(data)[:read.plan.segments[0].size]


def test_flipped_bytes_without_checksums_decode_to_garbage_or_a_decode_error(gops, reference):
    """Without verify_checksums a flipped byte reaches the decoder: FFmpeg either conceals it
    (wrong pixels, no error) or outputs fewer frames, which the backend reports."""
    from dali_gop.backends._assemble import DecodeError
    entry, victim = a_bin(gops)
    original = victim.read_bytes()
    outcomes = set()
    rng = random.Random(0)
    for _ in range(8):
        data = bytearray(original)
        for _ in range(4):
            data[rng.randrange(64, len(data))] ^= 0xFF
        victim.write_bytes(bytes(data))
        read = GopStore(gops).read([(VIDEO, list(range(entry.start, entry.end)))])
        try:
            frames = cpu_decode(read)
        except DecodeError as e:
            assert str(victim) in str(e)
            outcomes.add("DecodeError")
            continue
        same = all(np.array_equal(f, reference[VIDEO][entry.start + i])
                   for i, f in enumerate(frames[0]))
        outcomes.add("same" if same else "garbage")
    print(f"flipped bytes without checksums: {sorted(outcomes)}")
    assert outcomes <= {"DecodeError", "garbage", "same"}
    # a bin of the right size holding nothing decodable: fewer frames than promised
    victim.write_bytes(bytes(len(original)))
    with pytest.raises(DecodeError, match=f"{victim}"):
        cpu_decode(GopStore(gops).read([(VIDEO, [entry.end - 1])]))


def test_missing_bin_is_a_format_error_naming_it(gops):
    entry, victim = a_bin(gops)
    victim.unlink()
    with pytest.raises(fmt.FormatError, match=f"{victim}: GOP bin missing"):
        GopStore(gops).read([(VIDEO, [entry.start])])


# == fuzzing the bin reader ===================================================================

@pytest.fixture(scope="module")
def fuzz_store(clean, tmp_path_factory) -> Path:
    gops = tmp_path_factory.mktemp("fuzzstore") / "gops"
    shutil.copytree(clean, gops)
    return gops


@fuzz(400)
@given(data=st.data())
def test_fuzz_bin_reader(fuzz_store, data):
    index = fmt.read_index(fuzz_store, VIDEO)
    gop = data.draw(st.sampled_from(index.gops))
    path = fuzz_store / VIDEO / gop.file
    original = path.read_bytes()
    op = data.draw(st.sampled_from(["keep", "truncate", "extend", "replace-same-size", "replace",
                                    "empty", "flip"]))
    if op == "truncate":
        new = original[:data.draw(st.integers(0, len(original) - 1))]
    elif op == "extend":
        new = original + data.draw(st.binary(min_size=1, max_size=64))
    elif op == "replace-same-size":
        new = data.draw(st.binary(min_size=len(original), max_size=len(original)))
    elif op == "replace":
        new = data.draw(st.binary(max_size=2 * len(original)))
    elif op == "empty":
        new = b""
    elif op == "flip":
        where = data.draw(st.integers(0, len(original) - 1))
        new = original[:where] + bytes([original[where] ^ 0xFF]) + original[where + 1:]
    else:
        new = original
    mode = data.draw(st.sampled_from(["index", "checksums", "fixed-gop"]))
    store = GopStore(fuzz_store, verify_checksums=mode == "checksums",
                     fix_gop_size=GOP if mode == "fixed-gop" else None)
    frame = data.draw(st.integers(gop.start, gop.end - 1))
    path.write_bytes(new)
    try:
        try:
            read = store.read([ReadRequest(VIDEO, (frame,))])
        except fmt.FormatError as e:
            assert str(path) in str(e)
            if mode == "fixed-gop":
                assert new == b"" and "empty GOP bin" in str(e)
            elif len(new) != len(original):
                assert "index says" in str(e)
            else:
                assert mode == "checksums" and new != original and "checksum mismatch" in str(e)
            return
        got = bytes(read.data[:read.plan.names_offset])
        assert read.segment_names() == [str(path)]
        if mode == "fixed-gop":
            assert got == new   # no index: the whole file, whatever it holds
        else:
            assert len(new) == len(original)
            assert mode == "index" or new == original
            assert got == new[:read.plan.segments[0].size] and read.plan.segments[0].size <= gop.size
    finally:
        path.write_bytes(original)
