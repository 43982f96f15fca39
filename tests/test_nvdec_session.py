"""Our own NVDEC session library (csrc/nvdec_session.c) on a machine without NVIDIA's driver: pip
built it, it loads, a session says in one line what is missing, and against a stand-in driver
(tests/fake_nvdec.c) its own logic delivers each output to its pointers and refuses what it
cannot deliver exactly. Its decoding is checked on the GPU (tests/test_gpu_budget.py: a budget turns to these sessions, and the frames must be those of
PyNvVideoCodec's; pipelines/throughput/results: frame for frame against PyNvVideoCodec)."""
from __future__ import annotations

import ctypes

import pytest

from dali_gop.backends._nvdec_session import NvdecSession, library_path
from dali_gop.errors import DecodeError


def test_the_library_is_built_and_exports_the_session_calls():
    lib = ctypes.CDLL(str(library_path()))
    for name in ("nvdec_session_create", "nvdec_session_decode", "nvdec_session_destroy",
                 "nvdec_session_surfaces", "nvdec_sessions_decode", "nvdec_session_error",
                 "nvdec_session_times"):
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


# -- the session's own logic on a stand-in driver (tests/fake_nvdec.c) ------------------------------
SESSION_RUN = r'''
import ctypes, sys, numpy as np
from dali_gop.backends._nvdec_session import NvdecSession
from dali_gop.errors import DecodeError

def counts():    # the stand-in driver's maps, copies and syncs so far
    out = (ctypes.c_longlong * 3)()
    for name in ("libnvcuvid.so.1", "libcuda.so.1"):
        ctypes.CDLL(name).fake_driver_counts(out)
    return list(out)

def sequence(w, h, surfaces=4, bits=0):
    return bytes([ord("S"), w & 255, w >> 8, h & 255, h >> 8, surfaces, bits, 0])

def picture(display, status=2):    # 2: cuvidDecodeStatus_Success (8: _Error)
    return bytes([ord("P"), display, status, 0, 0, 0, 0, 0])

def expected(display, w, h):
    rows, columns = np.indices((h, w))
    luma = ((display + rows + columns) & 255).astype(np.uint8)
    chroma = np.repeat(((128 + display + np.arange(h // 2)) & 255).astype(np.uint8)[:, None], w, 1)
    return np.concatenate([luma, chroma])

def stream(order, w=40, h=20, **kw):
    return np.frombuffer(sequence(w, h, **kw) + b"".join(picture(d) for d in order), np.uint8)

case = sys.argv[1]
session = NvdecSession("hevc", 0)
w, h = 40, 20
frames = [np.full((h * 3 // 2, w), 7, np.uint8) for _ in range(8)]
if case == "order":
    # decode order with B-frames; every display position to its own frame, two to one position
    extra = np.full((h * 3 // 2, w), 7, np.uint8)
    targets = [(p, frames[p].ctypes.data) for p in range(6)] + [(2, extra.ctypes.data)]
    produced = session.decode(stream([0, 3, 1, 2, 5, 4]), targets, (h * 3 // 2, w))
    assert produced == 6, produced
    for p in range(6):
        assert np.array_equal(frames[p], expected(p, w, h)), p
    assert np.array_equal(extra, expected(2, w, h))
    # the next segment counts its outputs from 0 again; positions not asked for are not copied
    produced = session.decode(stream([0, 1, 2]), [(1, frames[6].ctypes.data)], (h * 3 // 2, w))
    assert produced == 3 and np.array_equal(frames[6], expected(1, w, h))
    assert (frames[7] == 7).all()
    assert session.surfaces == 4 + 2, session.surfaces
    # a copy per pointer (both planes at once), a sync per frame mapped (the frames above are
    # right only if none went back to the decoder before its sync)
    assert counts() == [6 + 1, 7 + 1, 6 + 1], counts()
    # where its calls spent their time: two calls, the seven frames it copied (once each mapped)
    times = session.times()
    assert times["calls"] == 2 and times["frames"] == 6 + 1, times
    assert times["in_calls"] >= times["in_map"] + times["in_sync"] + times["in_picture"] >= 0, times
    assert times["creates"] == 1 and 0 <= times["in_create"] <= times["in_calls"], times
    assert times["in_calls"] >= times["longest_call"] >= times["longest_map"] >= 0, times
    assert times["longest_call"] >= times["longest_picture"] >= 0, times
    session.clear_times()
    assert not any(session.times().values())
elif case in ("late", "at-once"):
    # unmap_late: a frame's surface goes back before the next map or at the call's end, so the
    # parser queues pictures while one is mapped; the frames and the counts are those of "order"
    import dali_gop.backends._nvdec_session as ns
    ns.UNMAP_LATE = case == "late"     # read when a session is made
    session.close()
    session = NvdecSession("hevc", 0)
    extra = np.full((h * 3 // 2, w), 7, np.uint8)
    targets = [(p, frames[p].ctypes.data) for p in range(6)] + [(2, extra.ctypes.data)]
    assert session.decode(stream([0, 3, 1, 2, 5, 4]), targets, (h * 3 // 2, w)) == 6
    for p in range(6):
        assert np.array_equal(frames[p], expected(p, w, h)), p
    assert np.array_equal(extra, expected(2, w, h))
    # the last frame wanted is the call's last picture: it is copied before the call returns
    assert session.decode(stream([0, 1, 2]), [(2, frames[6].ctypes.data)], (h * 3 // 2, w)) == 3
    assert np.array_equal(frames[6], expected(2, w, h))
    # late: one sync more a frame, for the map's own read of the picture before the callback
    # returns (the parser may decode into that surface next)
    late = case == "late"
    assert counts() == [6 + 1, 7 + 1, (6 + 1) * (2 if late else 1)], counts()
    meanwhile = ctypes.CDLL("libnvcuvid.so.1").fake_decoded_while_mapped
    meanwhile.restype = ctypes.c_longlong
    assert (meanwhile() > 0) == late, meanwhile()
    # frames far apart: the first stays mapped while the parser decodes seven more pictures into
    # its six surfaces, the first picture's among them: its map must have read it already
    apart = [np.full((h * 3 // 2, w), 7, np.uint8) for _ in range(2)]
    assert session.decode(stream(range(8)), [(0, apart[0].ctypes.data), (7, apart[1].ctypes.data)],
                          (h * 3 // 2, w)) == 8
    assert np.array_equal(apart[0], expected(0, w, h)) and np.array_equal(apart[1], expected(7, w, h))
elif case == "size":
    try:
        session.decode(stream([0, 1]), [(0, frames[0].ctypes.data)], (30 * 3 // 2, 40))
    except DecodeError as e:
        assert (frames[0] == 7).all()          # nothing written where it does not fit
        print(e)
elif case == "corrupt":
    data = np.frombuffer(sequence(w, h) + picture(0) + picture(1, status=8), np.uint8)
    try:
        session.decode(data, [(0, frames[0].ctypes.data), (1, frames[1].ctypes.data)],
                       (h * 3 // 2, w))
    except DecodeError as e:
        print(e)
elif case == "too-big":
    try:
        session.decode(stream([0], w=5000), [], (h * 3 // 2, w))
    except DecodeError as e:
        print(e)
elif case == "ten-bit":
    try:
        session.decode(stream([0], bits=2), [], (h * 3 // 2, w))
    except DecodeError as e:
        print(e)
elif case == "many":
    # two sessions fed a packet each per call: every output to its own pointers, B-frames too
    from dali_gop.backends._nvdec_session import decode_many
    other = NvdecSession("hevc", 0)
    order = [0, 3, 1, 2]
    packets = [sequence(w, h) + picture(order[0])] + [picture(d) for d in order[1:]] + [b""]
    outs = [[np.full((h * 3 // 2, w), 7, np.uint8) for _ in range(4)] for _ in range(2)]
    results = []
    for i, packet in enumerate(packets):
        before = counts()
        results.append(decode_many([
            (one, np.frombuffer(packet, np.uint8), [(p, outs[k][p].ctypes.data) for p in range(4)],
             (h * 3 // 2, w), i == len(packets) - 1) for k, one in enumerate((session, other))]))
        if i == 0:    # a frame of each session: one sync for both (they share a stream)
            assert [a - b for a, b in zip(counts(), before)] == [2, 2, 1], (counts(), before)
        if i == 3:    # two frames of each: the session's second map waits for its first's copy
            assert [a - b for a, b in zip(counts(), before)] == [4, 4, 3], (counts(), before)
    assert results[-1] == [4, 4], results
    for k in range(2):
        for p in range(4):
            assert np.array_equal(outs[k][p], expected(p, w, h)), (k, p)
    # one session failing is its own error; the other goes on
    done = decode_many([(session, stream([0], bits=2), [], (h * 3 // 2, w), True),
                        (other, stream([0, 1]), [(1, frames[0].ctypes.data)], (h * 3 // 2, w),
                         True)])
    assert isinstance(done[0], DecodeError) and "8-bit" in str(done[0]), done
    assert done[1] == 2 and np.array_equal(frames[0], expected(1, w, h)), done
    other.close()
elif case == "flight":
    # submit, then collect: nothing is mapped, copied or synced until the collect, which gives
    # every frame; a session in flight takes no other packet, and closing it collects first
    from dali_gop.backends._nvdec_session import submit_many
    other = NvdecSession("hevc", 0)
    outs = [np.full((h * 3 // 2, w), 7, np.uint8) for _ in range(4)]
    before = counts()
    flight = submit_many([(one, stream([0, 1]), [(p, outs[2 * k + p].ctypes.data) for p in range(2)],
                           (h * 3 // 2, w), False) for k, one in enumerate((session, other))])
    assert counts() == before, (counts(), before)
    try:
        session.decode(stream([0]), [], (h * 3 // 2, w))
    except DecodeError as e:
        assert "in flight" in str(e), e
    else:
        raise AssertionError("a session in flight took another packet")
    assert flight.collect() == [2, 2] and flight.collect() == [2, 2]
    assert [a - b for a, b in zip(counts(), before)] == [4, 4, 3], (counts(), before)
    for k in range(4):
        assert np.array_equal(outs[k], expected(k % 2, w, h)), k
    last = [np.full((h * 3 // 2, w), 7, np.uint8) for _ in range(2)]
    flight = submit_many([(one, np.frombuffer(picture(2), np.uint8), [(2, last[k].ctypes.data)],
                           (h * 3 // 2, w), True) for k, one in enumerate((session, other))])
    other.close()     # collects the flight first: both frames arrive
    assert flight.collect() == [3, 3]
    assert all(np.array_equal(f, expected(2, w, h)) for f in last)
session.close()
print("ok")
'''


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    """tests/fake_nvdec.c built as libnvcuvid.so.1 and libcuda.so.1."""
    import shutil
    import subprocess
    from pathlib import Path
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    here = Path(__file__).parent
    folder = tmp_path_factory.mktemp("fake-driver")
    for name in ("libnvcuvid.so.1", "libcuda.so.1"):
        subprocess.run([compiler, "-std=gnu11", "-O1", "-fPIC", "-shared",
                        f"-I{here.parent / 'csrc'}", f"-I{here.parent / 'csrc' / 'nvcuvid'}",
                        str(here / "fake_nvdec.c"),
                        "-o", str(folder / name), "-ldl"], check=True)
    return folder


def run_session(fake_driver, case: str) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, LD_LIBRARY_PATH=str(fake_driver),
               PYTHONPATH=str(Path(__file__).parent.parent))
    done = subprocess.run([sys.executable, "-c", SESSION_RUN, case], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.endswith("ok\n"), done.stdout
    return done.stdout


def test_each_output_goes_to_its_pointers_as_dense_nv12(fake_driver):
    """Outputs in display order, counted from each flush, each copied from its pitched surface
    into every pointer asked for it, planes packed, in one copy; outputs not asked for are not
    copied; the decoder gets the parser's minimum surfaces and two more. A frame's surface goes
    back after the sync that waits for its copies (the stand-in's copies happen at the sync, and
    an unmapped surface is overwritten: a frame given back early is wrong)."""
    run_session(fake_driver, "order")    # and the session's own times of its calls


@pytest.mark.parametrize("case", ["late", "at-once"])
def test_a_frame_given_back_late_lets_the_parser_queue_pictures_meanwhile(fake_driver, case):
    """``UNMAP_LATE``: each frame's surface goes back before the next frame is mapped, or at the
    call's end, not right after its copies are queued: the parser queues the next pictures while
    it is mapped (the stand-in counts them), and every frame is right and copied when the call
    returns, the last one too. The map's own read of the picture (the stand-in's post-processing,
    done at the stream's sync) is waited for before the parser goes on, so a frame mapped while
    the parser decodes past a whole round of surfaces is still its own. Off, no picture is queued
    while a frame is mapped."""
    run_session(fake_driver, case)


def test_sessions_fed_in_one_call_each_get_their_own_frames(fake_driver):
    """``decode_many``: a packet for each of several sessions in one call (their pictures queued
    first, their frames copied after) gives each output to its own pointers, with B-frames and at
    a flush, the sessions on one stream synced once for them all; a session that fails is its
    own error, and the others go on."""
    run_session(fake_driver, "many")


def test_sessions_submitted_then_collected_decode_while_the_caller_goes_on(fake_driver):
    """``submit_many``: the packets parsed and their pictures queued, nothing mapped, copied or
    synced until ``collect``, which delivers every frame (once, however often it is asked); a
    session in flight refuses another packet, and closing it collects first."""
    run_session(fake_driver, "flight")


@pytest.mark.parametrize("case, message", [
    ("size", r"NVDEC frame 40x20 does not fit the sample's 40x30"),
    ("corrupt", r"NVDEC reported frame 1 of this segment corrupt \(decode status 8\)"),
    ("too-big", r"cuvidCreateDecoder failed with CUDA error 1 for hevc 5000x20"),
    ("ten-bit", r"the nvdec backend decodes 8-bit 4:2:0 video only \(this is 10-bit"),
])
def test_a_frame_that_cannot_be_delivered_exactly_is_an_error(fake_driver, case, message):
    """A frame of another size is refused before any copy; a picture NVDEC reports corrupt, a
    video beyond the GPU's decoder, or a bit depth the backend does not convert are errors that
    say so (the operator adds the bin's name)."""
    import re
    out = run_session(fake_driver, case)
    assert re.search(message, out), out
