"""Throughput benchmark: frames/s of the dali-gop loader against the NVDEC ceiling, against what a
DALI or PyNvVideoCodec user has today, and beside a training step, in one run on the same data.

    python -m pipelines.throughput [--quick] [--data DIR] [--out results.json] [--chart results.png]
    torchrun --nproc_per_node N -m pipelines.throughput ...     # one rank per GPU, figures summed
    python -m pipelines.throughput.chart results.json           # redraw the chart

Makes the synthetic nuScenes-like set if absent (10 clips x 6 cameras, 1600x900 HEVC, GOP 30, no
B-frames, 12 fps, 240 frames, textured so the bitrate is camera-like), preprocesses it, then
measures these groups (``--skip`` leaves some out):

  ceiling  NVDEC ceiling: raw decode of the GOP bins, no DALI, on PyNvVideoCodec's sessions
           (frames not copied; NV12 and NVDEC's RGB) and on our own (each frame copied once);
           the ceiling is the fastest row
  loader   the dali-gop loader on the --backend (nvdec; cpu runs without a GPU): stream, random,
           and stream order with stream decoding off (--profile: where each batch's time goes)
  dali     the dali-gop loader on the dali backend (DALI's fn.decoders.video on the GOP bytes)
  reader   DALI fn.readers.video(device="gpu") on the mp4 files: in file order, and
           random_shuffle=True, one frame per sample
  pynvc    PyNvVideoCodec on the mp4 files, demuxed at run time: each file decoded whole, and
           random frames through SimpleDecoder (it seeks to the keyframe and decodes forward)
  train    the loader (nvdec) feeding a stand-in training step on the same GPU: model alone
           (before the loader and after it), loader alone, together, and together / max(model,
           loader)
  budget   the loader (nvdec) within each of --budgets (make_loader's memory_budget): frames/s
           and the peak device memory it really took, for stream and random access

Frames are counted as delivered after warm-up batches (loader: samples x cameras x T per batch;
readers.video: frames in each batch). The stream row times ``--stream_epochs`` whole epochs after
one untimed: a training run's steady state, epoch boundaries included (the first epoch also pays
for the caching allocator's first blocks and the decoders' creation). Each row also shows the CPU
cores it kept busy (CPU time of this process and its DALI workers over wall time), its peak device
memory above its start (all allocators), and how busy the GPU's video decoders were in its timed
part (NVML's decoder utilization, mean %). Under torchrun each rank measures its own shard on its
own GPU (LOCAL_RANK), all ranks at once; rank 0 prints per-rank and summed figures and writes the
JSON and the chart.
"""
