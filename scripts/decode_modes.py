"""Which way of driving PyNvVideoCodec decodes fastest? Raw decode of the benchmark bins, no DALI.
Run on the GPU machine after the benchmark set exists:
    python3 scripts/decode_modes.py /tmp/bench/<set>/gops
Prints frames/s for whole-GOP and prefix decodes, default vs LOW latency, thread counts,
with and without keeping a copy of each frame (what a cache of decoded frames costs)."""
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from dali_gop.backends.nvdec import create_decoder, decode_packets, packets_of
from dali_gop.store import GopStore


def load(gop_root):
    store = GopStore(gop_root)
    work = []
    for index_path in sorted(Path(gop_root).rglob(".gop_index.json")):
        video = index_path.parent.relative_to(gop_root).as_posix()
        index = store.index(video)
        for gop in index.gops:
            read = store.read([(video, [gop.end - 1])])
            work.append((index.codec, read.data, read.segments[0]))
    return work


def run(label, work, threads, *, depth=None, keep=True, low=False, flush=True, rgb=True):
    local = threading.local()
    rng = random.Random(0)
    items = [(w, depth(rng) if depth else None) for w in work]

    def decode(item):
        (codec, data, segment), d = item
        if not hasattr(local, "decoder"):
            torch.cuda.set_device(0)
            local.stream = torch.cuda.Stream()
            local.decoder = create_decoder(codec, local.stream.cuda_stream, 0, rgb=rgb,
                                           low_latency=low)
        kept = []

        def sink(position, frame):
            if keep and (d is None or position == d - 1):
                kept.append(torch.from_dlpack(frame).clone())

        packets = packets_of(data, segment)
        if d is not None:
            packets = packets[:d]
        with torch.cuda.stream(local.stream):
            n = decode_packets(local.decoder, packets, sink, flush=flush, low_latency=low)
        return n

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, items[:threads]))
        torch.cuda.synchronize()
        t = time.perf_counter()
        frames = sum(pool.map(decode, items))
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    wanted = len(items) if depth else frames
    print(f"{label:<52} {frames / dt:>8,.0f} decoded/s {wanted / dt:>8,.0f} wanted/s "
          f"(mean depth {frames / len(items):.1f})", flush=True)


def round_robin(label, work, threads, slots, step):
    """The old stream scheme: many LOW-latency decoders, a few packets each in turn."""
    pool = ThreadPoolExecutor(threads)
    queues = [work[i::slots] for i in range(slots)]
    lock = threading.Lock()
    decoders = {}
    done = threading.Event()
    remaining = [slots]
    frames = [0]

    def task(slot, gop_i, fed):
        if gop_i >= len(queues[slot]):
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()
            return
        codec, data, segment = queues[slot][gop_i]
        if slot not in decoders:
            s = torch.cuda.Stream()
            decoders[slot] = (create_decoder(codec, s.cuda_stream, 0, low_latency=True), s)
        dec, s = decoders[slot]
        packets = packets_of(data, segment)
        chunk = packets[fed:fed + step]
        last = fed + len(chunk) == len(packets)
        kept = []
        with torch.cuda.stream(s):
            n = decode_packets(dec, chunk, lambda p, f: kept.append(torch.from_dlpack(f).clone()),
                               flush=last, low_latency=True)
        with lock:
            frames[0] += n
        pool.submit(task, slot, gop_i + 1 if last else gop_i, 0 if last else fed + len(chunk))

    t = time.perf_counter()
    for slot in range(slots):
        pool.submit(task, slot, 0, 0)
    done.wait()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    pool.shutdown()
    print(f"{label:<52} {frames[0] / dt:>8,.0f} decoded/s", flush=True)


def main():
    work = load(sys.argv[1])
    print(f"{len(work)} GOPs, {torch.cuda.get_device_name(0)}")
    uniform = lambda rng: rng.randint(1, 30)  # noqa: E731
    for threads in (16, 24, 32):
        run(f"whole GOP, default latency, {threads} thr, no copy", work, threads, keep=False)
    for threads in (16, 32):
        run(f"whole GOP, default latency, {threads} thr, copy each", work, threads)
    run("whole GOP, NV12, 16 thr, no copy", work, 16, keep=False, rgb=False)
    run("whole GOP, LOW latency, 16 thr, copy each", work, 16, low=True)
    run("whole GOP, LOW latency, 32 thr, copy each", work, 32, low=True)
    for threads in (16, 32):
        run(f"prefix 1..30, default, flush, {threads} thr", work, threads, depth=uniform)
    run("prefix 1..30, LOW, flush, 16 thr", work, 16, depth=uniform, low=True)
    run("prefix 1..30, LOW, no flush, 16 thr", work, 16, depth=uniform, low=True, flush=False)
    run("prefix 1..30, LOW, no flush, 32 thr", work, 32, depth=uniform, low=True, flush=False)
    round_robin("round robin LOW, 96 decoders, 4 packets, 16 thr", work, 16, 96, 4)
    round_robin("round robin LOW, 96 decoders, 30 packets, 16 thr", work, 16, 96, 30)


if __name__ == "__main__":
    main()
