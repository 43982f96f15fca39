"""make_loader(memory_budget=...): sizes parsed, options lowered until the estimate fits (nvdec's
decode threads, stream lead, then decode-ahead, then stream decoding off), a budget nothing fits
refused with the least that would, the same frames at every budget, and the cpu backend's resident
memory within its budget. CPU (the cpu backend keeps RGB in host memory)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dali_gop import RandomPattern, StreamPattern
from dali_gop import _budget
from dali_gop.errors import ConfigError
from dali_gop._budget import (FEW_THREADS, FEWEST_THREADS, OWN_THREADS, Choice, estimate, fit,
                              parse_budget)
from dali_gop.backends._nvdec import session_bytes
from dali_gop._dataset import Dataset
from dali_gop._source import GopSource
from conftest import cpu_loader, small_stores, store_factory

CPU = dict(rgb_factor=2, staging=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return small_stores(tmp_path_factory, {"h264": dict(codec="h264")})


@pytest.mark.parametrize("text, nbytes", [("4GiB", 4 * 2**30), ("512 MiB", 512 * 2**20),
                                          ("2.5GB", 2_500_000_000), ("1g", 2**30), (4096, 4096)])
def test_sizes(text, nbytes):
    assert parse_budget(text) == nbytes


@pytest.mark.parametrize("bad", ["lots", "4 parsecs", 0, -1, "0GiB", True, 1.5, None])
def test_sizes_refused(bad):
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_budget(bad)


def stream_source(gop_root, **options):
    return GopSource(Dataset.open(gop_root), StreamPattern(), batch_size=3, **options)


def total(source, choice):
    return sum(estimate(source, choice, **CPU).values())


def nvdec_options(source, **options) -> dict:
    """``estimate``'s options as the nvdec backend gives them (``_loader._within``) for
    ``source``'s frames, and ``options``."""
    frame = source.frame_bytes()
    return dict(rgb_factor=1, staging=True, gop_frames=source.longest_gop(),
                session_bytes=lambda frames, sessions: session_bytes(frame, frames, sessions),
                **options)


def test_fit_lowers_the_lead_then_the_queue_then_turns_stream_decoding_off(stores):
    gop_root, _ = stores("h264")
    source = stream_source(gop_root, stream_lead=30)
    wanted = Choice(30, 0, True)
    as_wanted, at_lead_0 = total(source, wanted), total(source, Choice(0, 0, True))
    queue_1 = total(source, Choice(0, 0, True, prefetch=1))
    no_stream = total(source, Choice(0, 0, False, prefetch=1))
    assert as_wanted > at_lead_0 > queue_1 > no_stream > 0  # a GOP fewer per slot, a batch, none kept
    assert fit(as_wanted, source, wanted, **CPU)[0] == wanted
    choice, held = fit(at_lead_0, source, wanted, **CPU)
    assert choice.stream_decoding and choice.stream_lead < 30 and sum(held.values()) <= at_lead_0
    assert fit(at_lead_0 - 1, source, wanted, **CPU)[0] == Choice(0, 0, True, prefetch=1)
    assert fit(queue_1 - 1, source, wanted, **CPU)[0] == Choice(0, 0, False, prefetch=1)
    with pytest.raises(ConfigError, match=r"memory_budget .* less than this loader needs at the "
                                          r"least .*raise it"):
        fit(no_stream - 1, source, wanted, **CPU)


def test_fit_lowers_decode_ahead_for_random_access(stores):
    gop_root, _ = stores("h264")
    source = GopSource(Dataset.open(gop_root), RandomPattern(), batch_size=3, decode_ahead=2)
    wanted = Choice(30, 2, True)
    nvdec = dict(rgb_factor=1, staging=True)
    ahead_1 = sum(estimate(source, Choice(30, 1, True), **nvdec).values())
    choice, _ = fit(ahead_1, source, wanted, **nvdec)
    assert choice.decode_ahead == 1 and choice.stream_decoding


def epoch(loader) -> list:
    return [(b["clip"].tolist(), b["frame_idx"].tolist(), b["frames"].numpy().copy())
            for b in loader]


def test_the_same_frames_at_every_budget_and_what_is_kept_stays_within_it(stores):
    gop_root, _ = stores("h264")
    source = stream_source(gop_root)
    at_lead_0 = total(source, Choice(0, 0, True))
    with cpu_loader(gop_root, pattern="stream", batch_size=3) as loader:
        unbounded = epoch(loader)
    with cpu_loader(gop_root, pattern="stream", batch_size=3, memory_budget=at_lead_0) as loader:
        assert loader.settings == dict(memory_budget=at_lead_0, stream_lead=0, decode_ahead=0,
                                       stream_decoding=True, prefetch_queue_depth=2)  # its choice
        bounded = epoch(loader)
        kept = loader.memory()["kept_gops"]["peak"]
        assert 0 < kept <= estimate(source, Choice(0, 0, True), **CPU)["kept_gops"]
    queue_1 = total(source, Choice(0, 0, True, prefetch=1))
    with pytest.warns(UserWarning, match="stream decoding is off"):
        loader = cpu_loader(gop_root, pattern="stream", batch_size=3,
                            memory_budget=queue_1 - 1)
    with loader:
        off = epoch(loader)
        assert loader.memory().get("kept_gops", {"peak": 0})["peak"] == 0
    for run in (bounded, off):
        assert len(run) == len(unbounded)
        for (clips, frames, a), (clips_b, frames_b, b) in zip(unbounded, run):
            assert (clips, frames) == (clips_b, frames_b) and np.array_equal(a, b)


def test_a_budget_nothing_fits_is_refused_at_make_loader(stores):
    gop_root, _ = stores("h264")
    least = total(stream_source(gop_root), Choice(0, 0, False, prefetch=1))
    with pytest.raises(ConfigError, match=rf"memory_budget 0.5 MiB is less than this loader "
                                          rf"needs at the least \({least / 2**20:.1f} MiB"):
        cpu_loader(gop_root, pattern="stream", batch_size=3, memory_budget="0.5MiB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # a budget that fits changes nothing
        cpu_loader(gop_root, pattern="stream", batch_size=3, memory_budget="64GiB").close()


def test_fit_turns_to_our_own_sessions_then_lowers_their_threads(stores, monkeypatch):
    """Each decode thread holds an NVDEC session. PyNvVideoCodec's output buffers hold one Decode
    call's frames (a whole GOP by default); ours hold none: a budget first turns to ours (at most
    OWN_THREADS of them), then lowers the threads, before it touches the stream lead."""
    gop_root, _ = stores("h264")
    source = stream_source(gop_root, stream_lead=30)
    # slots keep whole GOPs (the fixed-GOP path's way), not sessions of their own
    monkeypatch.setattr(_budget, "_pair_sessions", lambda source, choice: 0)
    frame = source.frame_bytes()
    nvdec = nvdec_options(source)
    wanted = Choice(30, 0, True, threads=48, sessions="pynvvideocodec")

    def total(choice):
        return sum(estimate(source, choice, **nvdec).values())
    assert estimate(source, wanted, **nvdec)["decoder_sessions"] == \
        48 * session_bytes(frame, source.longest_gop(), "pynvvideocodec")
    own = replace(wanted, sessions="own", threads=OWN_THREADS)
    few = replace(own, threads=FEW_THREADS)
    assert total(wanted) > total(own) > total(few)
    assert fit(total(wanted), source, wanted, **nvdec)[0] == wanted
    assert fit(total(own), source, wanted, **nvdec)[0] == own
    assert fit(total(few), source, wanted, **nvdec)[0] == few
    lower = fit(total(few) - 1, source, wanted, **nvdec)[0]
    assert lower == replace(few, stream_lead=lower.stream_lead) and lower.stream_lead < 30
    # below the lead's range the threads go down to the fewest before stream decoding goes off
    lowest = replace(few, stream_lead=0, prefetch=1, threads=FEWEST_THREADS)
    assert fit(total(lowest), source, wanted, **nvdec)[0] == lowest
    with pytest.raises(ConfigError, match=f"decode_threads={FEWEST_THREADS}"):
        fit(total(replace(lowest, stream_decoding=False)) - 1, source, wanted, **nvdec)


def test_stream_slots_on_sessions_of_their_own(stores):
    """Asked for (``pair_sessions``; not by default): where kept GOPs do not fit even at lead 0,
    each (slot, camera) gets a session of its own
    (and a ring): they replace the kept GOPs and the decode threads' sessions (every sample
    streams), so the decode threads and the lead go back where they were; DALI's queue goes down
    before stream decoding goes off."""
    gop_root, _ = stores("h264")
    source = stream_source(gop_root, stream_lead=30)
    frame, pairs = source.frame_bytes(), 3 * len(source.dataset.cameras)
    nvdec = nvdec_options(source, ring_frames=4)
    wanted = Choice(30, 0, True, threads=48, sessions="pynvvideocodec")
    kept = replace(wanted, sessions="own", threads=FEW_THREADS, stream_lead=0)
    paired = replace(wanted, sessions="own", stream_sessions=True)

    def total(choice):
        return sum(estimate(source, choice, **nvdec).values())
    held = estimate(source, paired, **nvdec)
    assert source.stream_pairs() == pairs and source.streams_only()
    # a step of the budget's only where asked for (PAIR_SESSIONS_STEP): off by default, where
    # a budget that cannot keep GOPs turns stream decoding off
    budget = min(total(kept) - 1, total(paired))
    assert not fit(budget, source, wanted, strict=False, **nvdec)[0].stream_sessions
    assert held["stream_sessions"] == pairs * (session_bytes(frame, 0, "stream") + 4 * frame)
    assert "kept_gops" not in held and "decoder_sessions" not in held
    assert "kept_gops" in estimate(source, kept, **nvdec)
    budget = min(total(kept) - 1, total(paired))
    assert fit(budget, source, wanted, pair_sessions=True, **nvdec)[0] == paired
    queue_1 = replace(paired, prefetch=1)
    assert total(paired) > total(queue_1)
    assert fit(total(queue_1), source, wanted, pair_sessions=True, **nvdec)[0] == queue_1  # 48 thr, lead 30


class BenchShape:
    """The benchmark's stream loader as the estimate sees it: 16 slots x 6 cameras of 1600x900,
    every sample streaming, a session per (slot, camera)."""
    fix_gop_size = 0
    frame = 1600 * 900 * 3 // 2

    def stream_pairs(self):
        return 16 * 6

    def batch_frame_bytes(self):
        return 16 * 6 * self.frame

    def kept_gop_bytes(self, lead):
        return 16 * 6 * max(30, lead) * self.frame

    def streams_only(self):
        return True

    def frame_bytes(self):
        return self.frame

    def longest_gop(self):
        return 30


def test_the_pairs_estimate_covers_what_pairs_held_on_a_gpu():
    """Stream pairs at the benchmark's shape held up to 8,010 MiB on an H100 (docs/results.md,
    code 0d46f3c), and a 7 GiB budget planned with the session alone counted was passed: the
    estimate covers that peak, so that budget turns stream decoding off instead."""
    from dali_gop.backends._nvdec import RING_FRAMES
    source = BenchShape()
    nvdec = nvdec_options(source, ring_frames=RING_FRAMES)
    paired = Choice(30, 2, True, threads=48, sessions="own", stream_sessions=True)
    assert sum(estimate(source, paired, **nvdec).values()) >= 8010 * 2**20
    chosen, _ = fit(7 * 2**30, source, paired, **nvdec)
    assert not chosen.stream_decoding


def test_the_host_kept_estimate_covers_what_that_path_held_on_a_gpu():
    """Stream slots with GOPs on the host, at the benchmark's shape, peaked at up to 2,235 MiB
    with 8 threads, DALI's queue at 1 and nothing decoded ahead, which is how a 2 GiB budget had
    planned them (it was passed), and at up to 4,538 MiB with 48 threads and the queue at 2
    (docs/results.md, H100 runs at 6ddbf5d, f05b82e and ccee00b): the estimate covers both
    peaks, and a 2 GiB budget no longer plans that configuration."""
    from dali_gop.backends._nvdec import RING_FRAMES
    source = BenchShape()
    nvdec = nvdec_options(source, ring_frames=RING_FRAMES)
    wanted = Choice(30, 2, True, threads=48, sessions="own", kept_gops="device")
    small = Choice(30, 0, True, threads=FEWEST_THREADS, sessions="own", prefetch=1,
                   kept_gops="host")

    def total(choice):
        return sum(estimate(source, choice, **nvdec).values())
    assert total(small) >= 2235 * 2**20
    assert total(replace(wanted, kept_gops="host")) >= 4538 * 2**20
    chosen, held = fit(2 * 2**30, source, wanted, strict=False, **nvdec)
    assert chosen != small and sum(held.values()) <= 2 * 2**30
    assert fit(6 * 2**30, source, wanted, **nvdec)[0] == replace(
        wanted, kept_gops="host", threads=_budget.HOST_THREADS, stream_lead=60)


def test_a_budget_keeps_stream_slots_gops_on_the_host_before_it_lowers_their_lead():
    """At the benchmark's stream shape, GOPs kept on the device do not fit 6 GiB even at 16 decode
    threads; kept in pinned host memory they leave the device's budget (the picks of a batch are
    staged there), so the lead and all 48 threads stay. A backend that cannot keep them on the
    host (``kept_gops`` "") lowers the lead as before."""
    from dali_gop.backends._nvdec import RING_FRAMES
    source = BenchShape()
    nvdec = nvdec_options(source, ring_frames=RING_FRAMES)
    wanted = Choice(30, 2, True, threads=48, sessions="own", kept_gops="device")

    def total(choice):
        return sum(estimate(source, choice, **nvdec).values())
    assert total(replace(wanted, threads=FEW_THREADS)) > 6 * 2**30
    chosen, held = fit(6 * 2**30, source, wanted, **nvdec)
    assert chosen == replace(wanted, kept_gops="host", threads=_budget.HOST_THREADS,
                             stream_lead=60)
    assert "kept_gops" not in held and held["staging"] == source.batch_frame_bytes()
    assert sum(held.values()) <= 6 * 2**30
    # where some samples are decoded plainly too (windows across GOPs), their staging and the
    # picks' block both
    mixed = type("Mixed", (BenchShape,), {"streams_only": lambda self: False})()
    assert estimate(mixed, replace(wanted, kept_gops="host"), **nvdec)["staging"] == \
        3 * mixed.batch_frame_bytes()
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as patched:
        patched.setattr(_budget, "HOST_KEPT_STEP", False)
        assert fit(6 * 2**30, source, wanted, strict=False, **nvdec)[0].kept_gops == "device"
    assert fit(6 * 2**30, source, replace(wanted, kept_gops=""), strict=False,
               **nvdec)[0].kept_gops == ""


def test_gops_kept_on_the_host_run_on_fewer_threads_at_twice_the_lead_where_the_host_has_room():
    """Where a budget keeps the GOPs of slots that only stream on the host: at most
    ``HOST_THREADS`` decode threads (fewer where the budget has no room for their sessions) and
    twice the wanted lead, the frames of that lead in pinned host memory only while they fit
    ``host_limit``; slots whose samples are also decoded plainly (windows across GOPs) keep their
    threads and lead, as does a budget that keeps GOPs on the device."""
    from dali_gop.backends._nvdec import RING_FRAMES
    source = BenchShape()
    nvdec = nvdec_options(source, ring_frames=RING_FRAMES)
    wanted = Choice(30, 2, True, threads=48, sessions="own", kept_gops="device")
    host = replace(wanted, kept_gops="host", threads=_budget.HOST_THREADS)
    roomy = source.kept_gop_bytes(60)
    assert _budget.HOST_THREADS > _budget.FEW_THREADS
    for budget, threads in ((4, _budget.FEW_THREADS), (6, _budget.HOST_THREADS),
                            (8, _budget.HOST_THREADS)):
        chosen, held = fit(budget * 2**30, source, wanted, host_limit=roomy, **nvdec)
        assert chosen == replace(host, threads=threads, stream_lead=60), budget
        assert sum(held.values()) <= budget * 2**30
    # the host has no room for twice the lead: fewer threads, the lead as wanted
    assert fit(6 * 2**30, source, wanted, host_limit=roomy - 1, **nvdec)[0] == host
    # fewer threads wanted than the host path's: not raised; lead 0 stays 0
    few = replace(wanted, threads=8, stream_lead=0)
    assert fit(6 * 2**30, source, few, **nvdec)[0] == replace(few, kept_gops="host")
    # samples also decoded plainly: those need the threads
    mixed = type("Mixed", (BenchShape,), {"streams_only": lambda self: False})()
    assert fit(6 * 2**30, mixed, wanted, **nvdec_options(mixed, ring_frames=RING_FRAMES))[0] == \
        replace(wanted, kept_gops="host")
    # room on the device for the GOPs: nothing changes
    assert fit(64 * 2**30, source, wanted, **nvdec)[0] == wanted


def test_the_host_share_for_a_longer_lead_is_split_between_the_nodes_processes(monkeypatch):
    """The pinned host memory a budget may give a longer lead: a quarter of the host's, split
    between torchrun's processes on this node, else between the visible GPUs; none to plan for
    the cpu backend, whose frames are in host memory anyway."""
    import os
    import types

    import torch

    from dali_gop import _loader
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpu = types.SimpleNamespace(device="gpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _loader._host_share(gpu) == int(0.25 * host) // 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert _loader._host_share(gpu) == int(0.25 * host) // 8
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert _loader._host_share(gpu) == int(0.25 * host)
    assert _loader._host_share(types.SimpleNamespace(device="cpu")) is None


def test_the_default_budget_is_a_quarter_of_host_memory_and_never_refuses(stores, monkeypatch):
    """No memory_budget: a quarter of the memory the frames are kept in (host memory for cpu),
    which lowers what it must but never refuses: where nothing fits it warns and runs with the
    least. None: no budget at all."""
    import os

    from dali_gop import _loader
    gop_root, _ = stores("h264")
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with cpu_loader(gop_root, pattern="stream", batch_size=3) as loader:
        assert loader.settings["memory_budget"] == int(0.25 * host)
        assert loader.settings["stream_lead"] == 30        # these videos fit easily
    with cpu_loader(gop_root, pattern="stream", batch_size=3, memory_budget=None) as loader:
        assert loader.settings["memory_budget"] is None
    least = total(stream_source(gop_root), Choice(0, 0, False, prefetch=1))
    monkeypatch.setattr(_loader, "_default_budget", lambda decoder, device_id: least - 1)
    with pytest.warns(UserWarning, match=r"default memory_budget \(0\.0 GiB.*runs with the least"):
        loader = cpu_loader(gop_root, pattern="stream", batch_size=3)
    with loader:
        assert loader.settings["stream_decoding"] is False
        assert len(epoch(loader)) == len(loader)


@pytest.fixture(scope="module")
def hd_store(tmp_path_factory):
    """4 clips x 3 cameras x 120 frames of 1280x720, GOP 30: kept RGB GOPs of stream slots come to
    gigabytes, well above what else the process holds (no reference decode: it would too)."""
    return store_factory(tmp_path_factory, {"hd": dict(codec="h264")}, (), clips=4, cameras=3,
                         frames=120, width=1280, height=720, gop=30)("hd")[0]


def resident_growth(gop_root, budget: str, batches: int = 0) -> dict:
    """tests/budget_child.py in a process of its own: peak resident bytes above the start."""
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "budget_child.py"),
                           str(gop_root), budget, str(batches)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cpu_backend_stays_within_its_budget_in_resident_memory_over_an_epoch(hd_store):
    """What the loader adds to the process's resident memory, beyond a loader that keeps no frames
    (DALI's and FFmpeg's own buffers, which the cpu budget does not count: README), stays within
    the budget over an epoch of stream access; without a budget it goes past it. With glibc's
    dynamic mmap threshold, frames the slots let go stayed resident, and the process went past
    the budget."""
    source = GopSource(Dataset.open(hd_store), StreamPattern(), batch_size=4, stream_lead=30)
    budget = total(source, Choice(0, 0, True))      # keeps stream decoding, at lead 0
    fixed = resident_growth(hd_store, "off", batches=6)["growth"]
    within = resident_growth(hd_store, str(budget))
    unbounded = resident_growth(hd_store, "none")
    mib = {name: f"{run['growth'] / 2**20:,.0f} MiB" for name, run in
           (("within", within), ("unbounded", unbounded))}
    print(f"fixed {fixed / 2**20:,.0f} MiB, budget {budget / 2**20:,.0f} MiB: {mib}")
    assert within["settings"]["stream_decoding"] and within["settings"]["stream_lead"] == 0
    assert within["growth"] - fixed <= budget, mib
    assert unbounded["growth"] - fixed > budget, "unbounded within it too: the test proves nothing"


@pytest.mark.parametrize("streams, given, wanted", [
    (False, {}, ("own", 24)),                        # random, sequence, stream decoding off
    (True, {}, ("own", 48)),                         # stream slots: whole GOPs
    (False, {"threads": 48}, ("own", 48)),           # decode_threads given: kept
    (False, {"sessions": "pynvvideocodec"}, ("pynvvideocodec", 48)),
    (True, {"sessions": "own", "threads": 8}, ("own", 8)),
])
def test_auto_sessions_are_ours_and_fewer_where_samples_decode_from_their_gop_start(streams, given,
                                                                                     wanted):
    """Ours hold no frames, and map and copy only the frames a sample wants (PyNvVideoCodec's
    every frame decoded); where slots stream they decode whole GOPs on as many threads as
    PyNvVideoCodec's did."""
    from dali_gop.backends._nvdec import NvdecBackend
    backend = NvdecBackend(**given)
    backend.settle(streams)
    assert (backend.sessions, backend.threads) == wanted
    backend.settle(not streams)      # settled once: a resume's pipelines keep it
    assert (backend.sessions, backend.threads) == wanted
