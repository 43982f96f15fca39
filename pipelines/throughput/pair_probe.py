"""A probe of the stream pairs (a session per stream slot's camera) on a GPU: the nvdec operator
alone, without DALI, fed stream batches of a GOP store as DALI feeds them, for each variant named
(``s48``: a pair per call on 48 threads; ``b16``: a thread's pairs in one call, 16 threads).
Prints frames/s, the picks that had to decode at the pick, and the mean time of the operator's
steps (wrapped, not patched in the code).

    python -m pipelines.throughput.pair_probe GOP_ROOT s48 b16 b8
"""
import sys, time, collections
import numpy as np

def run(gops, variant, batches=90, warmup=12, slots=16):
    lanes = int(variant[1:])
    import torch
    from torch.utils.dlpack import to_dlpack
    from nvidia.dali import python_function_plugin
    from dali_gop.patterns import pattern_from_name
    from dali_gop._dataset import Dataset
    from dali_gop._source import GopSource
    from dali_gop.backends import _nvdec as nvdec, _stream_sessions as ss
    nvdec.STREAM_LANES = lanes
    nvdec.STREAM_AT_ONCE = variant[0] == "b"
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
    wrapped = [wrap(nvdec.NvdecBatchDecoder, n, n) for n in (
        "_pick_pairs", "_pairs_ahead", "_start", "_finish", "_to_rgb")]
    wrapped += [wrap(nvdec, "decode_many", "decode_many"), wrap(ss.StreamPair, "pick", "pair.pick"),
                wrap(ss.StreamPair, "ahead", "pair.ahead"),
                wrap(ns.NvdecSession, "decode", "session.decode"),
                wrap(_cuda.CudaDriver, "copy_many", "copy_many")]
    source = GopSource(Dataset.open(gops), pattern_from_name("stream"), batch_size=slots,
                       stream_lead=0, decode_ahead=0)
    stash = nvdec.BitstreamStash()
    op = nvdec.NvdecBatchDecoder(stash, threads=48, sessions="own", stream_sessions=True)
    samples = []
    epoch = 0
    while len(samples) < (batches + warmup + 2) * slots:
        samples += [(p, epoch) for p in range(len(source.samples(epoch)))]
        epoch += 1
    batch_list = [[source.read(p, e) for p, e in samples[i:i + slots]]
                  for i in range(0, (batches + warmup + 2) * slots, slots)]
    stash.put(*zip(*[s[:2] for s in batch_list[0]]))
    t0 = None
    with torch.cuda.stream(stream):
        for k, batch in enumerate(batch_list[:batches + warmup]):
            if k == warmup:
                torch.cuda.synchronize(); t0 = time.perf_counter(); stats.clear(); times.clear()
            stash.put(*zip(*[s[:2] for s in batch_list[k + 1]]))
            out = op([to_dlpack(torch.from_numpy(np.array(s[1]))) for s in batch])
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    frames = batches * slots * 6
    again = sum(p.decoded_again for p in op.pairs.values())
    print(f"{variant:>4}: {frames / dt:7.0f} frames/s, {1e3 * dt / batches:5.1f} ms/batch, "
          f"picks decoded in the pick {stats['decoded_in_pick']} of {frames}, decoded again {again}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB torch", flush=True)
    for n, v in times.items():
        print(f"      {n}: {len(v)} calls, mean {1e3 * sum(v) / max(len(v), 1):.2f} ms, max {1e3 * max(v):.1f} ms")
    op.close()
    ss.StreamPair._decode_through = orig
    for owner, name, f in wrapped:
        setattr(owner, name, f)

if __name__ == "__main__":
    gops = sys.argv[1]
    for variant in sys.argv[2:]:
        run(gops, variant)
