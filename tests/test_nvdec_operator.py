"""The nvdec operator's own logic on a CPU (tests/nvdec_standins.py stands in for NVDEC and CUDA):
batches fed as DALI feeds them, the CPU stage one batch ahead, over two epochs so stream slots
carry GOPs across the boundary. The GPU tests check the same operator on NVDEC."""
from __future__ import annotations

import collections

from dataclasses import replace

import numpy as np
import pytest

from dali_gop.patterns import pattern_from_name
from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from dali_gop.plan import Plan
from conftest import small_stores

pytest.importorskip("nvidia.dali")
torch = pytest.importorskip("torch")

DATASETS = {
    "hevc-open-gop": dict(codec="hevc", bframes=2, open_gop=True),
    "h264": dict(codec="h264"),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return small_stores(tmp_path_factory, DATASETS)


def operator_batches(gop_root, pattern, batch_size, epochs=2, decode_ahead=0, memory=None,
                     operator_options=None, **options):
    """(source outputs, frames) of every batch the operator returns, in order; ``memory`` (a
    dict) receives the operator's ``memory()`` after the last batch."""
    from torch.utils.dlpack import from_dlpack, to_dlpack

    from dali_gop.backends._nvdec import BitstreamStash, NvdecBatchDecoder
    source = GopSource(Dataset.open(gop_root), pattern_from_name(pattern, **options),
                       batch_size=batch_size, stream_lead=3, decode_ahead=decode_ahead)
    stash = BitstreamStash()
    operator = NvdecBatchDecoder(stash, threads=3, **(operator_options or {}))
    batches = [[source.read(p, epoch) for p in range(i, i + batch_size)]
               for epoch in range(epochs)
               for i in range(0, len(source.samples(epoch)), batch_size)]
    stash.put(*zip(*[s[:2] for s in batches[0]]))
    try:
        for k, batch in enumerate(batches):
            if k + 1 < len(batches):      # DALI's CPU stage runs one batch ahead
                stash.put(*zip(*[s[:2] for s in batches[k + 1]]))
            tokens = [to_dlpack(torch.from_numpy(np.array(s[1]))) for s in batch]
            yield batch, [from_dlpack(t) for t in operator(tokens)]
        if memory is not None:
            memory.update(operator.memory())
            memory["pairs"] = [(len(p.ring), p.decoded_again) for p in operator.pairs.values()]
    finally:
        operator.close()


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("pattern, options", [("stream", {}), ("random", {}),
                                              ("sequence", dict(length=3, stride=2))])
@pytest.mark.parametrize("decode_ahead", [0, 2])
@pytest.mark.parametrize("sessions", ["own", "pynvvideocodec", "stream", "stream-at-once",
                                      "host"])
def test_operator_copies_every_frame_to_its_place(monkeypatch, stores, name, pattern, options,
                                                  decode_ahead, sessions):
    """Every frame, on both backends' videos and every pattern, with and without decoding ahead,
    on our own NVDEC sessions, on PyNvVideoCodec's, with ("stream") a session of its own for
    each stream slot's camera, a pair per call or ("stream-at-once") a thread's pairs in one,
    and ("host") on ours with stream slots' GOPs kept in pinned host memory."""
    from dali_gop.backends import _nvdec
    from nvdec_standins import install
    install(monkeypatch)
    monkeypatch.setattr(_nvdec, "STREAM_AT_ONCE", sessions == "stream-at-once")
    kept_gops = "host" if sessions == "host" else "device"
    sessions = "stream" if sessions.startswith("stream") else \
        "own" if sessions == "host" else sessions
    gop_root, reference = stores(name)
    clips, cameras = list(Dataset.open(gop_root).clips), Dataset.open(gop_root).cameras
    checked = kept = 0
    memory: dict = {}
    for batch, frames in operator_batches(gop_root, pattern, 3, decode_ahead=decode_ahead,
                                          memory=memory,
                                          operator_options=dict(
                                              sessions="own" if sessions == "stream" else sessions,
                                              stream_sessions=sessions == "stream",
                                              kept_gops=kept_gops),
                                          **options):
        for (_, plan, frame_idx, clip, _), sample in zip(batch, frames):
            kept += Plan.from_array(plan).kept_key >= 0
            assert tuple(sample.shape) == (len(cameras), len(frame_idx), 96, 160, 3)
            for c, camera in enumerate(cameras):
                rgb = reference[f"{clips[int(clip[0])]}/{camera}"]["rgb24"]
                for t, k in enumerate(frame_idx):
                    assert np.array_equal(sample[c, t].numpy(), rgb[k]), (camera, int(k))
                    checked += 1
    assert checked > 0
    if decode_ahead and pattern == "random":
        assert kept > len(frames)    # the first batches of the run carry their own bytes only
    # what memory() counts: NV12 staging of the batches in flight (none once a batch is out; none
    # at all where every frame is picked from a kept GOP: converted where it lies), the stream
    # slots' GOPs, samples decoded ahead; each at most the NV12 of what it holds
    nv12_frame = 96 * 160 * 3 // 2
    staging = memory.get("staging", {"now": 0, "peak": 0})
    assert staging["now"] == 0 and staging["peak"] <= 3 * 2 * 3 * nv12_frame * 2
    if pattern == "random":
        assert staging["peak"] > 0
    elif pattern == "stream" and sessions != "stream":
        assert staging["peak"] == 0
    if pattern == "stream" and kept_gops == "host":   # one block, a batch's picks
        assert 0 < memory["picks_staging"]["peak"] <= 3 * 2 * nv12_frame
    if pattern == "stream" and sessions == "stream":
        # a session and a ring per (slot, camera), no GOP kept decoded; a ring grown where its
        # video put out more frames at once than it held (frames lost then: decoded again once)
        from dali_gop.backends._stream_sessions import REORDER_RING_FRAMES, RING_FRAMES
        pairs = memory.pop("pairs")
        assert len(pairs) == 3 * len(cameras)
        assert memory.get("kept_gops", {"peak": 0})["peak"] == 0
        most = len(pairs) * (RING_FRAMES + REORDER_RING_FRAMES) * nv12_frame
        assert 0 < memory["stream_rings"]["peak"] <= most
        assert sum(again for _, again in pairs) <= len(pairs)
    elif pattern == "stream":
        kind = "kept_gops_host" if kept_gops == "host" else "kept_gops"
        assert 0 < memory[kind]["peak"] <= 3 * 2 * 3 * 10 * nv12_frame
        assert ("kept_gops" in memory) == (kept_gops == "device")
        if kept_gops == "host":       # the pool, whole slabs, and nothing of it left at close
            assert memory["pinned_host"]["peak"] >= memory["kept_gops_host"]["peak"]
    if decode_ahead and pattern == "random":
        assert memory["decoded_ahead"]["peak"] > 0


@pytest.mark.parametrize("pattern", ["stream", "random"])
def test_bgr_and_another_matrix_convert_the_same_nv12(monkeypatch, stores, pattern):
    """The operator's conversion options: BGR is RGB reversed, and a matrix override
    (``color_matrix``) converts every camera with it, bit for bit as the cpu backend would."""
    from dali_gop.backends._color import VideoColors
    from dali_gop.reference import decode_source
    from nvdec_standins import install
    install(monkeypatch)
    gop_root, _ = stores("h264")
    runs = {label: list(operator_batches(gop_root, pattern, 3, epochs=1, decode_ahead=2,
                                         operator_options=options))
            for label, options in {"rgb": {}, "bgr": dict(color="BGR"),
                                   "bt601": dict(colors=VideoColors("bt601"))}.items()}
    dataset = Dataset.open(gop_root)
    clips, reference = list(dataset.clips), {}
    for batch, frames in runs["bt601"]:
        for (_, _, frame_idx, clip, _), sample in zip(batch, frames):
            for c, camera in enumerate(dataset.cameras):
                video = gop_root.parent / "videos" / clips[int(clip[0])] / camera
                if video not in reference:
                    reference[video] = decode_source(video, "rgb24", color_matrix="bt601")
                for t, k in enumerate(frame_idx):
                    assert np.array_equal(sample[c, t].numpy(), reference[video][k])
    for (_, rgb), (_, bgr) in zip(runs["rgb"], runs["bgr"]):
        for a, b in zip(rgb, bgr):
            assert torch.equal(a.flip(-1), b)


def test_hooks_see_each_batch_its_planning_its_finish_and_within_it_the_wait(monkeypatch, stores):
    """A hook's methods wrap the operator's work in order: each batch's call, its planning, its
    finish and, within the finish, DALI's thread waiting for the batch's decodes; the decodes on
    the pool threads (a whole GOP where a stream slot keeps it)."""
    import contextlib
    import threading

    from dali_gop.hooks import DecodeHook
    from nvdec_standins import install
    install(monkeypatch)

    class Recorder(DecodeHook):
        def __init__(self):
            self.seen, self._lock = [], threading.Lock()

        @contextlib.contextmanager
        def _mark(self, name):
            with self._lock:
                self.seen.append(f"{name}(")
            yield
            with self._lock:
                self.seen.append(f"){name}")

        def batch(self, stashed):
            return self._mark("batch")

        def schedule(self):
            return self._mark("schedule")

        def finish(self):
            return self._mark("finish")

        def wait(self):
            return self._mark("wait")

        def decode(self, name, gop):
            return self._mark("gop" if gop else "segment")

    recorder = Recorder()
    gop_root, _ = stores("h264")
    batches = list(operator_batches(gop_root, "stream", 3, epochs=1,
                                    operator_options=dict(hooks=[recorder], sessions="own")))
    calls = [e for e in recorder.seen if e.rstrip("(").lstrip(")") in ("batch", "schedule",
                                                                          "finish", "wait")]
    assert calls == ["batch(", "schedule(", ")schedule", "finish(", "wait(", ")wait", ")finish",
                     ")batch"] * len(batches)
    assert "gop(" in recorder.seen


def test_a_batch_out_of_step_with_the_stash_is_refused(monkeypatch, stores):
    from torch.utils.dlpack import to_dlpack

    from dali_gop.backends._assemble import DecodeError
    from dali_gop.backends._nvdec import BitstreamStash, NvdecBatchDecoder
    from nvdec_standins import install
    install(monkeypatch)
    gop_root, _ = stores("h264")
    source = GopSource(Dataset.open(gop_root), pattern_from_name("random"), batch_size=2)
    stash = BitstreamStash()
    operator = NvdecBatchDecoder(stash, threads=2)
    first, second = [source.read(p) for p in (0, 1)], [source.read(p) for p in (2, 3)]
    stash.put([s[0] for s in first], [s[1] for s in first])
    with pytest.raises(DecodeError, match="no stashed batch|out of step"):
        operator([to_dlpack(torch.from_numpy(np.array(s[1]))) for s in second[:1]])
    operator.close()


def test_a_kept_gop_refuses_a_frame_of_another_shape(monkeypatch):
    """Same byte count, other shape (a transposed video): a raw copy would scramble the frame."""
    from concurrent.futures import Future

    from dali_gop.backends._assemble import DecodeError
    from dali_gop.backends._nvdec import DecodedGop
    from nvdec_standins import StandInDriver, install
    install(monkeypatch)
    gop = DecodedGop("clip/cam0.mp4/gop.0.3.bin", 3, (4, 6, 3))
    gop.allocate()
    gop.future = Future()
    gop.future.set_result(torch.cuda.Event())
    with pytest.raises(DecodeError, match=r"gop\.0\.3\.bin.*\(4, 6, 3\).*\(6, 4, 3\)"):
        gop.check_pick(1, (6, 4, 3))
    with pytest.raises(DecodeError, match=r"gop\.0\.3\.bin: no output 3"):
        gop.check_pick(3, (4, 6, 3))
    position = gop.check_pick(1, (4, 6, 3))
    assert gop.source(position, 0, StandInDriver()) == gop.chunks[0][1].data_ptr()


def test_a_kept_gop_lets_go_of_the_chunks_its_slot_has_passed(monkeypatch):
    """Chunks wholly below a pick go (counted in the operator's memory), a pick into one that went
    is refused, never read; a step that releases the GOP lets the whole of it go instead."""
    from dali_gop.backends._assemble import DecodeError, Held, KeptGops
    from dali_gop.backends._nvdec import DecodedGop
    from dali_gop.plan import StreamSend, StreamStep
    from nvdec_standins import install
    install(monkeypatch)
    size = DecodedGop.CHUNK_FRAMES
    gop = DecodedGop("clip/cam0.mp4/gop.0.12.bin", 2 * size + 2, (3, 4))
    gop.allocate()
    assert [c.shape[0] for c in gop.chunks] == [size, size, 2]
    assert len(set(gop.pointers)) == gop.count
    held = Held()
    kept = KeptGops(held, DecodedGop.kept_bytes)
    step = StreamStep(0, 7, 0)
    kept.step(0, replace(step, sends=(StreamSend(0, 7, 0),)), lambda send: gop)
    whole = gop.kept_bytes()
    assert held.now["kept_gops"] == whole
    assert kept.let_go_below(step, gop, size - 1, DecodedGop.release_below) == []  # chunk 0 stays
    freed = kept.let_go_below(step, gop, size + 1, DecodedGop.release_below)
    assert len(freed) == 1 and gop.kept_bytes() == whole - size * 12
    assert held.now["kept_gops"] == gop.kept_bytes()
    assert kept.let_go_below(step, gop, size, DecodedGop.release_below) == []     # nothing twice
    with pytest.raises(DecodeError, match=r"gop\.0\.12\.bin: frame 2 of a kept GOP was let go"):
        gop.check_pick(2, (3, 4))
    assert gop.check_pick(size, (3, 4)) == size
    assert kept.let_go_below(replace(step, release=True), gop, gop.count,
                             DecodedGop.release_below) == []   # the batch lets it all go
    freed = kept.let_go_below(step, gop, gop.count, DecodedGop.release_below)
    assert len(freed) == 1 and gop.kept_bytes() == 2 * 12      # the short last chunk stays
    assert held.now["kept_gops"] == 2 * 12


def test_gops_kept_on_the_host_take_whole_chunks_of_a_pool_that_takes_them_back(monkeypatch):
    """A GOP kept on the host takes whole chunks of pinned slabs (a short last chunk too, so that
    every chunk fits any GOP of the size); a chunk let go or of a GOP dropped goes back to the
    pool with the event after the latest reads, and is taken again, oldest first, after the
    fresh ones; the pool's slabs are counted."""
    from dali_gop.backends._assemble import Held
    from dali_gop.backends._nvdec import DecodedGop, PinnedChunks
    from nvdec_standins import install
    install(monkeypatch)
    size = DecodedGop.CHUNK_FRAMES
    held = Held()
    pool = PinnedChunks(held)
    gop = DecodedGop("clip/cam0.mp4/gop.0.12.bin", 2 * size + 2, (3, 4))
    gop.allocate(pool)
    assert gop.on_host and len(gop.chunks) == 3 and len(set(gop.pointers)) == gop.count
    assert all(c.after is None for c in gop.chunks)          # fresh: nothing to wait for
    slab = held.now["pinned_host"]
    assert slab >= PinnedChunks.SLAB_CHUNKS * size * 12 and slab & (slab - 1) == 0
    count = slab // (size * 12)
    assert gop.kept_bytes() == gop.count * 12
    first = gop.chunks[0].data_ptr()
    freed = gop.release_below(size)
    assert [c.data_ptr() for c in freed] == [first]
    pool.reads = reads = object()
    del freed                                   # the batch that let it go is done with it
    rest = [DecodedGop(f"clip/cam1.mp4/gop.{i}.5.bin", size, (3, 4)) for i in range(count - 3)]
    for g in rest:
        g.allocate(pool)
    assert first not in {g.chunks[0].data_ptr() for g in rest}   # fresh chunks first
    again = DecodedGop("clip/cam1.mp4/gop.99.5.bin", size, (3, 4))
    again.allocate(pool)
    assert again.chunks[0].data_ptr() == first and again.chunks[0].after is reads
    dropped = {c.data_ptr() for c in gop.chunks if c is not None}
    del gop
    more = [DecodedGop(f"clip/cam2.mp4/gop.{i}.5.bin", size, (3, 4)) for i in range(2)]
    for g in more:
        g.allocate(pool)
    assert {g.chunks[0].data_ptr() for g in more} == dropped   # the dropped GOP's, next
    assert held.now["pinned_host"] == slab
    pool.clear()
    assert held.now["pinned_host"] == 0


def test_the_pinned_pool_pins_more_rather_than_hand_out_a_chunk_still_being_read(monkeypatch):
    """While the oldest chunk given back is still being read (its event not passed) and few are
    free, the pool pins another slab and hands out its chunks; once the reads are done, the
    chunk is taken again, and the pool stops growing."""
    from dali_gop.backends._assemble import Held
    from dali_gop.backends._nvdec import DecodedGop, PinnedChunks
    from nvdec_standins import StandInDriver, install
    install(monkeypatch)
    passed = set()

    class Driver(StandInDriver):
        def done(self, event):
            return event in passed

    class Event:
        def __init__(self, handle):
            self.handle = handle

    size = DecodedGop.CHUNK_FRAMES
    held = Held()
    pool = PinnedChunks(held)
    pool.driver = Driver()
    gops = [DecodedGop(f"clip/cam0.mp4/gop.{i}.5.bin", size, (3, 4)) for i in range(2)]
    for g in gops:
        g.allocate(pool)
    slab = held.now["pinned_host"]
    count = slab // (size * 12)
    pool.reads = Event(1)
    read = gops[0].chunks[0].data_ptr()
    del gops[0]                                 # back, its reads queued before event 1
    fresh = [DecodedGop(f"clip/cam1.mp4/gop.{i}.5.bin", size, (3, 4)) for i in range(count - 2)]
    for g in fresh:
        g.allocate(pool)                        # the slab's fresh chunks: no new slab
    assert held.now["pinned_host"] == slab
    busy = DecodedGop("clip/cam2.mp4/gop.0.5.bin", size, (3, 4))
    busy.allocate(pool)                         # only the chunk being read is free
    assert held.now["pinned_host"] == 2 * slab and busy.chunks[0].data_ptr() != read
    assert busy.chunks[0].after is None
    passed.add(1)
    for i in range(count):                      # the new slab's fresh chunks, then the one read
        g = DecodedGop(f"clip/cam3.mp4/gop.{i}.5.bin", size, (3, 4))
        g.allocate(pool)
        fresh.append(g)
    assert g.chunks[0].data_ptr() == read and g.chunks[0].after.handle == 1
    assert held.now["pinned_host"] == 2 * slab
    pool.clear()


def test_a_gop_kept_on_the_host_waits_for_the_reads_of_its_chunks_and_nothing_else(monkeypatch,
                                                                                   stores):
    """Every chunk of the pinned pool goes back with an event recorded after every copy that
    read it, and the decode that writes it again waits for that event first; the decodes of
    GOPs kept on the host wait for no other event (DALI's stream's work queued before them).
    The operator runs on this thread, as on DALI's; the decodes on the pool's."""
    import threading

    import nvdec_standins
    from dali_gop.backends import _nvdec
    nvdec_standins.install(monkeypatch)
    log, lock, counter = [], threading.Lock(), [0]
    spans = {}        # chunk pointer -> bytes

    class Driver(nvdec_standins.StandInDriver):
        def copy(self, destination, source, nbytes, stream):
            with lock:
                log.append(("copy", threading.get_ident(), destination, source, nbytes))
            super().copy(destination, source, nbytes, stream)

        def record(self, stream):
            with lock:
                counter[0] += 1
                log.append(("record", counter[0]))
                return counter[0]

        def wait(self, stream, event):
            with lock:
                log.append(("wait", threading.get_ident(), event))

    class Session(nvdec_standins.StandInSession):
        def decode(self, data, targets, frame_shape, end_of_stream=True):
            with lock:     # its copies into the targets (a memmove here), after its waits
                log.extend(("copy", threading.get_ident(), pointer, 0, 0) for _, pointer in targets)
            return super().decode(data, targets, frame_shape, end_of_stream)

    monkeypatch.setattr(_nvdec, "CudaDriver", Driver)
    monkeypatch.setattr(_nvdec, "NvdecSession", Session)
    give_back = _nvdec.PinnedChunks.give_back

    def logged_give_back(pool, nbytes, pointer):
        with lock:
            spans[pointer] = nbytes
            log.append(("back", pointer, pool.reads.handle if pool.reads else None))
        give_back(pool, nbytes, pointer)
    monkeypatch.setattr(_nvdec.PinnedChunks, "give_back", logged_give_back)
    monkeypatch.setattr(_nvdec.PinnedChunks, "SLAB_CHUNKS", 1)   # small slabs: chunks reused
    gop_root, _ = stores("h264")
    batches = operator_batches(gop_root, "stream", 3, epochs=3,
                               operator_options=dict(sessions="own", kept_gops="host"))
    assert sum(1 for _ in batches) > 0
    backs = [entry for entry in log if entry[0] == "back"]
    assert any(event is not None for _, _, event in backs)
    recorded_at = {entry[1]: i for i, entry in enumerate(log) if entry[0] == "record"}
    waited = collections.defaultdict(set)     # thread -> events it waited for so far
    pending = {}                              # chunk -> the event its next writes wait for
    rewritten = 0                             # copies into a chunk read before
    for i, entry in enumerate(log):
        if entry[0] == "wait":
            waited[entry[1]].add(entry[2])
        elif entry[0] == "back":
            _, pointer, event = entry
            span = range(pointer, pointer + spans[pointer])
            reads = [k for k, e in enumerate(log[:i]) if e[0] == "copy" and e[3] in span]
            if reads:       # every read of the chunk before its event
                assert event is not None and recorded_at[event] > max(reads), pointer
            pending[pointer] = event
        elif entry[0] == "copy":
            for pointer, event in pending.items():
                if event is not None and pointer <= entry[2] < pointer + spans[pointer]:
                    assert event in waited[entry[1]], (pointer, event)   # written after it
                    rewritten += 1
    assert rewritten
    decoders_waited = {entry[2] for entry in log
                       if entry[0] == "wait" and entry[1] != threading.get_ident()}
    assert decoders_waited and decoders_waited <= {event for _, _, event in backs}


def test_close_waits_for_copies_into_pinned_chunks_before_it_lets_the_pool_go(monkeypatch,
                                                                             stores):
    """torch's pinned cache hands a freed slab to the next pinned allocation at once, whoever
    makes it: a loader that keeps GOPs on the host waits at close for what its decode threads
    queued (their copies into chunks) before it drops the pool; one that keeps them on the
    device does not wait."""
    import nvdec_standins
    waited = []
    monkeypatch.setattr(nvdec_standins._NoOp, "synchronize", lambda self: waited.append(1),
                        raising=False)
    nvdec_standins.install(monkeypatch)
    gop_root, _ = stores("h264")
    for kept_gops in ("device", "host"):
        waited.clear()
        batches = operator_batches(gop_root, "stream", 3, epochs=1,
                                   operator_options=dict(sessions="own", kept_gops=kept_gops))
        assert sum(1 for _ in batches) > 0
        assert bool(waited) == (kept_gops == "host"), kept_gops


def test_a_lane_serves_queued_picks_before_the_rest_of_its_pass(monkeypatch):
    """Between picks a lane decodes ahead for its pairs, a pair at a time; picks queued meanwhile
    wait for one pair's call, not for a pass over all of them, and the pass goes on after them
    from the pair it stopped at, so that no pair waits behind the others for ever."""
    import queue

    from dali_gop.backends import _nvdec
    from dali_gop.backends._nvdec import BitstreamStash, NvdecBatchDecoder, _Lane
    from nvdec_standins import StandInDriver, install
    install(monkeypatch)
    monkeypatch.setattr(_nvdec, "STREAM_AT_ONCE", False)
    calls = []
    lane = _Lane.__new__(_Lane)        # its thread not started: the test is that thread
    lane._queue, lane.cursor = queue.SimpleQueue(), 0

    class Pair:
        def __init__(self, index):
            self.index = index

        def ahead(self, io):
            calls.append(self.index)
            if len(calls) == 2:
                lane._queue.put("picks")       # picks arrive while pair 1 decodes
            return True

        def close(self):
            raise AssertionError("the pair did not fail")

    lane.pairs = [Pair(i) for i in range(4)]
    operator = NvdecBatchDecoder(BitstreamStash(), threads=1, sessions="own",
                                 stream_sessions=True)
    operator._device_id = 0
    operator._driver, operator._pool_driver = StandInDriver(), StandInDriver()
    assert operator._pairs_ahead(lane)
    assert calls == [0, 1]                # stopped after pair 1: the picks go next
    assert lane._queue.get_nowait() == "picks"
    assert operator._pairs_ahead(lane)
    assert calls == [0, 1, 2, 3, 0, 1]    # on from pair 2, then a whole pass
    operator.close()


def test_a_lane_queues_a_group_on_nvdec_before_it_waits_for_the_group_fed_last(monkeypatch):
    """With a thread's pairs fed at once in two groups, each pass queues one group's packets on
    NVDEC and only then waits for the group queued the pass before (its frames to their rings),
    so that NVDEC has the lane's pictures while its Python runs; a pair whose packet is in flight
    is never fed again before it lands; with one group a pass lands what it fed; the lane's
    thread lands what is in flight when it stops."""
    from dali_gop.backends import _nvdec
    from dali_gop.backends._nvdec import BitstreamStash, NvdecBatchDecoder, _Lane
    from nvdec_standins import StandInDriver, install
    install(monkeypatch)
    log = []
    feeding = {0, 1, 2, 3}

    class Flight:
        def __init__(self, calls):
            self.pairs = [call[0] for call in calls]
            log.append(("submit", self.pairs))

        def collect(self):
            log.append(("collect", self.pairs))
            return [1] * len(self.pairs)

    class Pair:
        def __init__(self, index):
            self.index = index

        def ahead_packet(self, io):
            return (self.index,) if self.index in feeding else None

        def packet_done(self, shown, io):
            assert shown == 1

        def close(self):
            raise AssertionError("the pair did not fail")

    monkeypatch.setattr(_nvdec, "submit_many", Flight)
    monkeypatch.setattr(_nvdec, "STREAM_GROUPS", 2)
    operator = NvdecBatchDecoder(BitstreamStash(), threads=1, sessions="own",
                                 stream_sessions=True)
    operator._device_id = 0
    operator._driver, operator._pool_driver = StandInDriver(), StandInDriver()
    lane = _Lane.__new__(_Lane)        # its thread not started: the test is that thread
    lane.group, lane.in_flight, lane.pairs = 0, None, [Pair(i) for i in range(4)]
    for _ in range(3):
        assert operator._pairs_ahead(lane)
    assert log == [("submit", [0, 2]),
                   ("submit", [1, 3]), ("collect", [0, 2]),
                   ("submit", [0, 2]), ("collect", [1, 3])]
    feeding.clear()           # group 1 has nothing; group 0 is in flight: not fed, landed
    log.clear()
    assert operator._pairs_ahead(lane)
    assert log == [("collect", [0, 2])]
    assert not operator._pairs_ahead(lane) and log == [("collect", [0, 2])]
    feeding.update({1})
    assert operator._pairs_ahead(lane)          # left in flight ...
    assert log[1:] == [("submit", [1])]
    stopping = _Lane("test_lane", lambda lane: False, lambda lane: operator._land(lane))
    stopping.in_flight, lane.in_flight = lane.in_flight, None
    stopping.shutdown()                         # ... landed by the lane's own thread as it stops
    assert log[1:] == [("submit", [1]), ("collect", [1])] and stopping.in_flight is None
    monkeypatch.setattr(_nvdec, "STREAM_GROUPS", 1)
    log.clear()
    feeding.update({0, 1, 2, 3})
    assert operator._pairs_ahead(lane)
    assert log == [("submit", [0, 1, 2, 3]), ("collect", [0, 1, 2, 3])]
    monkeypatch.setattr(_nvdec, "STREAM_GROUPS", 3)    # the groups take turns, one in flight
    log.clear()
    feeding.update({4, 5})
    lane.pairs, lane.group = [Pair(i) for i in range(6)], 0
    for _ in range(3):
        assert operator._pairs_ahead(lane)
    assert log == [("submit", [0, 3]),
                   ("submit", [1, 4]), ("collect", [0, 3]),
                   ("submit", [2, 5]), ("collect", [1, 4])]
    operator.close()


@pytest.mark.parametrize("nice", [0, 5])
def test_decode_threads_run_the_given_nice_steps_below_the_thread_that_made_them(monkeypatch,
                                                                                  nice):
    """DECODE_NICE (the benchmark's --decode_nice): every decode thread, lanes too, lowers its own
    priority as it starts, so that a training thread that wants the same core gets it first; the
    thread that made them, and the process, keep theirs."""
    import os
    import threading

    from dali_gop.backends import _nvdec
    monkeypatch.setattr(_nvdec, "DECODE_NICE", nice)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if base + nice > 19:
        pytest.skip("this process already runs at the lowest priority")

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    pool = _nvdec._DecodePool(3, "test-decode")
    lane = _nvdec._Lane("test-lane", ahead=lambda lane: False, land=lambda lane: False)
    try:
        seen = [pool.submit(own_nice).result(timeout=10) for _ in range(6)]
        seen.append(lane.submit(own_nice).result(timeout=10))
    finally:
        pool.shutdown()
        lane.shutdown()
    assert set(seen) == {base + nice}
    assert own_nice() == base
