"""A probe of the stream pairs (a session per stream slot's camera) on a GPU: the nvdec operator
alone, without DALI, fed stream batches of a GOP store as DALI feeds them, for each variant named
(``s48``: a pair per call on 48 threads, ``s16`` on 16; ``b16``: a thread's pairs in one call,
16 threads).
Prints frames/s, the picks that had to decode at the pick, the mean time of the operator's
steps (wrapped, not patched in the code), how long a lane's picks wait for the lane to take
them, and where the sessions' calls waited, measured in the session library (in the call, in
cuvidMapVideoFrame, in the sync after the copies).

A timed batch that takes longer than ``STALL_S`` dumps every thread's Python stack (faulthandler:
the thread that holds the GIL, and where each waits).

Diagnostic suffixes, which give up the ring's safety (frames may be overwritten before they are
copied out; the probe does not look at them), to tell the suspects apart:
``n``: a pick's copies do not wait for the batch's staging (no lock-step with DALI's stream);
``w``: a lane finishes its pass over its pairs before it takes queued picks (as before the
lanes stopped for them);
``q``: each pair's session copies on a stream of its own, not the thread's (its syncs do not
wait for the picks' copies);
``z``: ``stream_lead`` 0 (each GOP reaches its pair at the slot's first pick of it, so the pair
starts it there, as before pairs decoded ahead into the next GOP sent), not the loader's 30.
An ``aN`` (``b8a4``) has each pair decode N frames past its latest pick
(``_stream_sessions.AHEAD_FRAMES``, its rings sized to match), not the default; a last ``gN``
(``b8g1``) has a thread feed its pairs in N groups (``_nvdec.STREAM_GROUPS``), not the default.

    python -m pipelines.throughput.pair_probe GOP_ROOT s48 b16 s48n s48q b8a4 b8g1
"""
import re, sys, time, collections, faulthandler
import numpy as np

#: a timed batch slower than this dumps every thread's stack (to stderr)
STALL_S = 0.3

def run(gops, variant, batches=90, warmup=12, slots=16):
    parsed = re.fullmatch(r"([sb])(\d+)([nqwz]*)(?:a(\d+))?(?:g(\d+))?", variant)
    if parsed is None:
        raise SystemExit(f"{variant}: not a variant (s or b, threads, suffixes nqwz, aN, gN)")
    mode, lanes, flags, ahead, groups = parsed.groups()
    lanes = int(lanes)
    import torch
    from torch.utils.dlpack import to_dlpack
    from nvidia.dali import python_function_plugin
    from dali_gop.patterns import pattern_from_name
    from dali_gop._dataset import Dataset
    from dali_gop._source import GopSource
    from dali_gop.backends import _nvdec as nvdec, _stream_sessions as ss
    nvdec.STREAM_LANES = lanes
    nvdec.STREAM_AT_ONCE = mode == "b"
    default_groups = nvdec.STREAM_GROUPS
    if groups is not None:
        nvdec.STREAM_GROUPS = int(groups)
    stream = torch.cuda.Stream()
    python_function_plugin.current_dali_stream = lambda: stream.cuda_stream
    stats = collections.Counter()
    orig = ss.StreamPair._decode_through
    def counted(self, position, io):
        stats["decoded_in_pick"] += 1
        return orig(self, position, io)
    ss.StreamPair._decode_through = counted
    times = collections.defaultdict(list)

    def wrap(owner, name, label):
        f = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                times[label].append(time.perf_counter() - t)
        setattr(owner, name, timed)
        return owner, name, f
    from dali_gop.backends import _cuda, _nvdec_session as ns
    patched = []
    if ahead is not None:     # the rings grow by as many frames
        shift = int(ahead) - ss.AHEAD_FRAMES
        for module in (ss, nvdec):
            for name in ("AHEAD_FRAMES", "RING_FRAMES", "REORDER_RING_FRAMES"):
                if hasattr(module, name):
                    patched.append((module, name, getattr(module, name)))
                    setattr(module, name, getattr(module, name) + shift)
    if "n" in flags:
        idle = torch.cuda.Stream()
        pick = nvdec.NvdecBatchDecoder._pick_pairs

        def unlocked(self, items, device_id, allocated):
            return pick(self, items, device_id, nvdec.DriverEvent(self._pool_driver,
                                                                  idle.cuda_stream))
        patched.append((nvdec.NvdecBatchDecoder, "_pick_pairs", pick))
        nvdec.NvdecBatchDecoder._pick_pairs = unlocked
    if "w" in flags:
        patched.append((nvdec._Lane, "waiting", nvdec._Lane.waiting))
        nvdec._Lane.waiting = lambda self: False
    if "q" in flags:
        new_session = nvdec._PairIO.new_session
        streams = []

        driver = _cuda.CudaDriver(hold_gil=False)

        def own_stream(self, codec):
            streams.append(driver.new_stream(torch.cuda.current_device()))
            return ns.NvdecSession(codec, streams[-1], extra_surfaces=ss.EXTRA_SURFACES)
        patched.append((nvdec._PairIO, "new_session", new_session))
        nvdec._PairIO.new_session = own_stream
    submit = nvdec.NvdecBatchDecoder._submit

    def stamped(self, fn, *args, lane=None):   # how long a lane's picks wait for the lane
        if lane is None:
            return submit(self, fn, *args)
        queued = time.perf_counter()

        def started(*a):
            times["picks waiting for their lane"].append(time.perf_counter() - queued)
            return fn(*a)
        return submit(self, started, *args, lane=lane)
    patched.append((nvdec.NvdecBatchDecoder, "_submit", submit))
    nvdec.NvdecBatchDecoder._submit = stamped
    wrapped = [wrap(nvdec.NvdecBatchDecoder, n, n) for n in (
        "_pick_pairs", "_pairs_ahead", "_start", "_finish", "_to_rgb")]
    wrapped += [wrap(nvdec, "decode_many", "decode_many"), wrap(nvdec, "submit_many", "submit_many"),
                wrap(ns.Submitted, "collect", "collect"), wrap(ss.StreamPair, "pick", "pair.pick"),
                wrap(ss.StreamPair, "ahead", "pair.ahead"),
                wrap(ns.NvdecSession, "decode", "session.decode"),
                wrap(_cuda.CudaDriver, "copy_many", "copy_many")]
    source = GopSource(Dataset.open(gops), pattern_from_name("stream"), batch_size=slots,
                       stream_lead=0 if "z" in flags else 30, decode_ahead=0)
    stash = nvdec.BitstreamStash()
    op = nvdec.NvdecBatchDecoder(stash, threads=48 if nvdec.STREAM_AT_ONCE else lanes,
                                 sessions="own", stream_sessions=True)
    samples = []
    epoch = 0
    while len(samples) < (batches + warmup + 2) * slots:
        samples += [(p, epoch) for p in range(len(source.samples(epoch)))]
        epoch += 1
    batch_list = [[source.read(p, e) for p, e in samples[i:i + slots]]
                  for i in range(0, (batches + warmup + 2) * slots, slots)]
    stash.put(*zip(*[s[:2] for s in batch_list[0]]))
    t0 = None

    def sessions(pool=False):   # the pairs' own, or the decode threads' (plain samples: pads)
        if pool:
            return [d for state in op._thread_decoders for d in state.decoders.values()
                    if isinstance(d, ns.NvdecSession)]
        return [pair.session for pair in op.pairs.values() if pair.session is not None]

    def library_times(pool=False):   # summed over the sessions, but the longest of any
        seen = collections.Counter()
        for session in sessions(pool):
            for key, value in session.times().items():
                seen[key] = max(seen[key], value) if key.startswith("longest") else \
                    seen[key] + value
        return seen
    late, probing = [], [True]

    def gil_probe():       # how late a thread that wants the GIL back every millisecond gets it
        while probing[0]:
            t = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)
    import threading
    threading.Thread(target=gil_probe, daemon=True).start()
    with torch.cuda.stream(stream):
        for k, batch in enumerate(batch_list[:batches + warmup]):
            if k == warmup:
                torch.cuda.synchronize(); t0 = time.perf_counter(); stats.clear(); times.clear()
                for session in sessions() + sessions(pool=True):
                    session.clear_times()
                late.clear()
            stash.put(*zip(*[s[:2] for s in batch_list[k + 1]]))
            if k >= warmup:   # a batch that stalls: every thread's stack, from faulthandler's
                faulthandler.dump_traceback_later(STALL_S)   # own thread (no GIL needed)
            out = op([to_dlpack(torch.from_numpy(np.array(s[1]))) for s in batch])
            faulthandler.cancel_dump_traceback_later()
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    probing[0] = False
    late = sorted(late)
    frames = batches * slots * 6
    again = sum(p.decoded_again for p in op.pairs.values())
    print(f"{variant:>4}: {frames / dt:7.0f} frames/s, {1e3 * dt / batches:5.1f} ms/batch, "
          f"picks decoded in the pick {stats['decoded_in_pick']} of {frames}, decoded again {again}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB torch; GIL probe late by "
          f"{1e3 * sum(late) / max(len(late), 1):.2f} ms mean, "
          f"{1e3 * late[int(0.9 * len(late))] if late else 0:.2f} ms p90, "
          f"{1e3 * late[-1] if late else 0:.1f} ms max", flush=True)
    for n, v in times.items():
        v = sorted(v)
        print(f"      {n}: {len(v)} calls, mean {1e3 * sum(v) / max(len(v), 1):.2f} ms, median "
              f"{1e3 * v[len(v) // 2]:.2f} ms, p99 {1e3 * v[int(0.99 * len(v))]:.1f} ms, max "
              f"{1e3 * v[-1]:.1f} ms")
    seen = library_times()
    calls, frames = max(seen["calls"], 1), max(seen["frames"], 1)
    print(f"      in the session library: {seen['calls']:.0f} calls, mean "
          f"{1e3 * seen['in_calls'] / calls:.2f} ms in a call; per frame "
          f"{1e3 * seen['in_map'] / frames:.2f} ms in map, {1e3 * seen['in_sync'] / frames:.2f} ms "
          f"in sync, {1e3 * seen['in_picture'] / frames:.2f} ms in cuvidDecodePicture; longest "
          f"call {1e3 * seen['longest_call']:.1f} ms, map {1e3 * seen['longest_map']:.1f} ms, "
          f"cuvidDecodePicture {1e3 * seen['longest_picture']:.1f} ms; "
          f"{seen['creates']:.0f} decoders made in {1e3 * seen['in_create']:.1f} ms", flush=True)
    pool = library_times(pool=True)
    print(f"      the decode threads' sessions (plain samples: an epoch's pads): {len(sessions(True))}"
          f", {pool['calls']:.0f} calls in {1e3 * pool['in_calls']:.1f} ms, longest "
          f"{1e3 * pool['longest_call']:.1f} ms; {pool['creates']:.0f} decoders made in "
          f"{1e3 * pool['in_create']:.1f} ms", flush=True)
    op.close()
    for owner, name, f in patched:
        setattr(owner, name, f)
    ss.StreamPair._decode_through = orig
    nvdec.STREAM_GROUPS = default_groups
    for owner, name, f in wrapped:
        setattr(owner, name, f)

if __name__ == "__main__":
    gops = sys.argv[1]
    for variant in sys.argv[2:]:
        run(gops, variant)
