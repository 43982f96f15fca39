"""Which way of driving PyNvVideoCodec decodes fastest? Raw decode of the benchmark bins, no DALI.
Run on the GPU machine after the benchmark set exists:
    python3 scripts/decode_modes.py /tmp/bench/<set>/gops
Prints frames/s for whole-GOP and GOP-prefix decodes: packet by packet vs one Decode call per
segment, thread counts, and what keeping each frame costs (wrap, clone, or one device copy).
(The low-latency rows of docs/logs/decode-modes-* came from an earlier version of this script.)"""
import random
import sys
import threading
from pathlib import Path

import torch

import numpy as np

from dali_gop.backends._nvdec import _packet, create_decoder, decode_packets, packets_of
from dali_gop._store import GopStore
from pipelines.baselines import timed_in_threads


def load(gop_root):
    store = GopStore(gop_root)
    work = []
    for index_path in sorted(Path(gop_root).rglob(".gop_index.json")):
        video = index_path.parent.relative_to(gop_root).as_posix()
        index = store.index(video)
        for gop in index.gops:
            read = store.read([(video, [gop.end - 1])])
            work.append((index.codec, read.data, read.plan.segments[0]))
    return work


class _Cai:
    """A device buffer seen through __cuda_array_interface__ (no stream: no synchronization)."""

    def __init__(self, pointer, nbytes):
        self.__cuda_array_interface__ = dict(shape=(nbytes,), typestr="|u1", data=(pointer, False),
                                             version=3, strides=None)


def run(label, work, threads, *, depth=None, keep="clone", feed="packets", low=False):
    """keep: what happens to each wanted frame: None, "dlpack" (wrap only), "clone" (wrap and copy
    with torch), "memcpy" (one cuMemcpyDtoDAsync into a tensor, as the nvdec backend does),
    "memcpy0" (the same call moving 0 bytes: the call's cost without the copy), "kernel" (the
    frame wrapped through __cuda_array_interface__ and copied by an SM kernel, not a copy engine),
    "batch" (whole segments only: the frames of each ``Decode`` call copied by one
    cuMemcpyBatchAsync, called without the GIL), "other-stream" (memcpy on a second stream of the
    thread, which waits for the decode through an event; timing only: the decoder's stream waits
    for the copies only at the end of the GOP).
    ``low``: low-latency decoders, no flush when all fed frames came out (the bench set has no
    B-frames, so its packets decode in display order)."""
    from dali_gop.backends._nvdec import CudaDriver
    copier = CudaDriver(hold_gil=True)   # as the operator's copies were when this was measured
    local = threading.local()
    rng = random.Random(0)
    items = [(w, depth(rng) if depth else None) for w in work]

    def decode(item):
        (codec, data, segment), d = item
        if not hasattr(local, "decoder"):
            torch.cuda.set_device(0)
            local.stream = torch.cuda.Stream()
            local.decoder = create_decoder(codec, local.stream.cuda_stream, 0, low_latency=low)
        kept = []

        def sink(position, frame):
            if not keep or (d is not None and position != d - 1):
                return
            if keep == "dlpack":
                kept.append(torch.from_dlpack(frame))
            elif keep == "clone":
                kept.append(torch.from_dlpack(frame).clone())
            else:
                if not hasattr(local, "buffer"):
                    local.buffer = torch.empty(tuple(frame.shape), dtype=torch.uint8,
                                               device="cuda")
                    local.copy_stream = torch.cuda.Stream()
                    local.int32 = local.buffer.view(-1).view(torch.int32)
                if keep == "kernel":
                    source = torch.as_tensor(_Cai(frame.GetPtrToPlane(0), local.buffer.numel()),
                                             device="cuda").view(torch.int32)
                    torch.add(source, 0, out=local.int32)
                elif keep == "other-stream":
                    decoded = torch.cuda.Event()
                    decoded.record(local.stream)
                    local.copy_stream.wait_event(decoded)
                    copier.copy(local.buffer.data_ptr(), frame.GetPtrToPlane(0),
                                local.buffer.numel(), local.copy_stream.cuda_stream)
                    local.pending = True
                else:
                    copier.copy(local.buffer.data_ptr(), frame.GetPtrToPlane(0),
                                0 if keep == "memcpy0" else local.buffer.numel(),
                                local.stream.cuda_stream)

        if keep == "batch":
            return decode_batched(local, packets_of(data, segment, feed), segment, d)
        packets = packets_of(data, segment)
        if d is not None:
            packets = packets[:d]
        if feed == "segment":   # the same bytes, one view
            start = segment.offset
            packets = [data[start:start + sum(len(p) for p in packets)]]
        with torch.cuda.stream(local.stream):
            # low: no flush once every fed frame is out (the bench set has no B-frames)
            n = decode_packets(local.decoder, packets, sink,
                               (d or segment.num_outputs) if low else None)
        if getattr(local, "pending", False):   # the next GOP's output may reuse the buffers
            local.stream.wait_stream(local.copy_stream)
        return n

    def decode_batched(local, packets, segment, d):
        if not hasattr(local, "batch"):
            local.batch = CudaDriver(hold_gil=False)   # drops the GIL, as the operator's threads do
            local.buffers = torch.empty((segment.num_outputs + 2, 900 * 1600 * 3),
                                        dtype=torch.uint8, device="cuda")
        position = 0
        with torch.cuda.stream(local.stream):
            for packet in packets + [None]:
                frames = local.decoder.Decode(_packet(packet))
                if frames:
                    nbytes = int(np.prod(frames[0].shape))
                    base = local.buffers.data_ptr()
                    dsts = [base + ((position + i) % local.buffers.shape[0]) * nbytes
                            for i in range(len(frames))]
                    local.batch.copy_many(dsts, [f.GetPtrToPlane(0) for f in frames],
                                          [nbytes] * len(dsts), local.stream.cuda_stream, 0)
                    position += len(frames)
        return position

    frames, dt = timed_in_threads(decode, items, threads, 0)
    wanted = len(items) if depth else frames
    print(f"{label:<52} {frames / dt:>8,.0f} decoded/s {wanted / dt:>8,.0f} wanted/s "
          f"(mean depth {frames / len(items):.1f})", flush=True)


def main():
    work = load(sys.argv[1])
    print(f"{len(work)} GOPs, {torch.cuda.get_device_name(0)}")
    uniform = lambda rng: rng.randint(1, 30)  # noqa: E731
    for feed in ("packets", "segment"):
        for threads in (32, 48):
            run(f"whole GOP, {feed}, {threads} thr, no copy", work, threads, keep=None, feed=feed)
            run(f"whole GOP, {feed}, {threads} thr, memcpy", work, threads, keep="memcpy",
                feed=feed)
        for threads in (32, 48):
            run(f"prefix 1..30, {feed}, flush, {threads} thr, memcpy", work, threads,
                depth=uniform, keep="memcpy", feed=feed)


if __name__ == "__main__":
    main()
