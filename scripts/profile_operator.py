"""Where does a batch's time go in the nvdec operator? Run on the GPU machine:
    python3 scripts/profile_operator.py /tmp/prof
(makes a 4 clips x 6 cameras x 120 frames 1600x900 set there first). Prints per-call timings."""
import sys, time, collections
import numpy as np
import torch
from pathlib import Path

def main():
    global GOPS
    root = Path(sys.argv[1])
    from dali_gop.synthetic import make_dataset
    from preprocess.runner import preprocess
    t = time.perf_counter()
    make_dataset(root / "videos", clips=4, cameras=6, frames=120, width=1600, height=900, gop=30, codec="hevc", textured=True)
    print("dataset", time.perf_counter() - t, preprocess(root / "videos", root / "gops", progress=False).format())
    GOPS = root / "gops"
    stats = collections.defaultdict(list)

    def timed(cls, name):
        orig = getattr(cls, name)
        def wrapper(self, *a, **k):
            t = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                stats[f"{cls.__name__}.{name}"].append(time.perf_counter() - t)
        setattr(cls, name, wrapper)

    from dali_gop.backends import nvdec
    timed(nvdec.NvdecBatchDecoder, "__call__")
    timed(nvdec.NvdecBatchDecoder, "_start")
    timed(nvdec.BitstreamStash, "put")
    timed(nvdec.NvdecBatchDecoder, "_decode_gop")
    timed(nvdec.DecodedGop, "take")

    from pipelines.loader import make_loader

    def run(label, n=120, **kw):
        stats.clear()
        loader = make_loader(GOPS, backend="nvdec", shard_id=0, num_shards=1, **kw)
        it = iter(loader)
        for _ in range(10): next(it)
        torch.cuda.synchronize()
        stats.clear()
        times = []
        frames = 0
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            times.append(time.perf_counter() - t)
            frames += b["frames"].shape[0] * b["frames"].shape[1] * b["frames"].shape[2]
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        print(f"\n== {label}: {frames / wall:,.0f} frames/s, next() median {np.median(times)*1e3:.1f} ms p90 {np.percentile(times, 90)*1e3:.1f} ms")
        for k, v in sorted(stats.items()):
            print(f"   {k:<34} n={len(v):5d} mean {np.mean(v)*1e3:7.2f} ms  total {np.sum(v):6.2f} s")
        del loader, it

    run("stream g4 w4", pattern="stream", batch_size=4, num_workers=4)
    run("stream g4 w8", pattern="stream", batch_size=4, num_workers=8)
    run("stream g16 w8", pattern="stream", batch_size=16, num_workers=8, n=60)
    run("random g4 w4", pattern="random", batch_size=4, num_workers=4)
    run("random g4 w8", pattern="random", batch_size=4, num_workers=8, n=100)

    # DALI + workers + stash alone: no decode (GPU op returns a preallocated tensor)
    from nvidia.dali import pipeline_def, fn, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    from dali_gop.source import GopSource, Dataset
    from dali_gop.sampling import pattern_from_name
    for pat, g, w in (("stream", 4, 4), ("stream", 16, 8), ("random", 4, 4)):
        src = GopSource(Dataset.open(GOPS), pattern_from_name(pat), batch_size=g)
        stash = nvdec.BitstreamStash()
        out = torch.zeros((6, 1, 900, 1600, 3), dtype=torch.uint8, device="cuda")
        def fake(tokens):
            stash.take()
            from torch.utils.dlpack import to_dlpack
            return [to_dlpack(out) for _ in tokens]
        @pipeline_def(batch_size=g, num_threads=4, device_id=0, py_num_workers=w, py_start_method="spawn", prefetch_queue_depth=2)
        def p():
            data, plan, fi, clip, cam = fn.external_source(source=src, num_outputs=5, batch=False, parallel=True, prefetch_queue_depth=2, dtype=[types.UINT8, types.INT64, types.INT64, types.INT64, types.INT64])
            tok = fn.python_function(data, plan, function=stash.put, batch_processing=True)
            return fn.dl_tensor_python_function(tok.gpu(), function=fake, batch_processing=True, device="gpu"), fi
        it = DALIGenericIterator([p()], ["frames", "fi"], size=src.shard_size(), auto_reset=True)
        n = 0
        for i, b in enumerate(it):
            if i == 10: t = time.perf_counter(); n = 0
            n += b["frames"].shape[0] * 6 if False else b[0]["frames"].shape[0] * 6
            if i == 110: break
        print(f"no-decode pipeline {pat} g{g} w{w}: {n / (time.perf_counter() - t):,.0f} frames/s")
        del it

    # the source alone, in this process: how long does a worker take per sample?
    from dali_gop.source import GopSource, Dataset
    from dali_gop.sampling import pattern_from_name
    for pat in ("stream", "random"):
        src = GopSource(Dataset.open(GOPS), pattern_from_name(pat), batch_size=4)
        samples = src.samples(0)
        t = time.perf_counter()
        for i in range(200):
            src.read(samples, i)
        print(f"source.read {pat}: {(time.perf_counter() - t) / 200 * 1e3:.2f} ms per sample")

if __name__ == '__main__':
    main()
