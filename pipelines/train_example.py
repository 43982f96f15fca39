"""A training loop over the GOP loader: DALI replaces DataLoader and Sampler.

    python -m pipelines.train_example                      # embedded synthetic 6-camera set
    torchrun --nproc_per_node 8 -m pipelines.train_example --gop_base_path /data/gops --group_num 4

With no dataset flags it makes a small synthetic multi-camera dataset under data/demo, preprocesses
it and trains on it, so it runs anywhere (on the CPU with ``--backend cpu``, the default without a
GPU). The seed's flags keep the seed's meaning. NVTX ranges mark load, decode and step for
Nsight Systems.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nvtx


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipelines.train_example", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    seed_flags = parser.add_argument_group("the seed's flags")
    seed_flags.add_argument("--index_file", default=None,
                            help="dataset index {video_dir: {clip_id: frame_count}} (default: the "
                                 "manifest preprocess wrote in --gop_base_path)")
    seed_flags.add_argument("--group_num", type=int, default=4,
                            help="clips per batch (each with every camera)")
    seed_flags.add_argument("--num_workers", type=int, default=2, help="DALI worker processes")
    seed_flags.add_argument("--video_base_path", default=None,
                            help="source videos; when given, preprocess them first (resumable)")
    seed_flags.add_argument("--gop_base_path", default=None, help="GOP store root")
    seed_flags.add_argument("--use_persistent_index", action=argparse.BooleanOptionalAction,
                            default=True, help="keep GOP indices in memory across epochs")
    seed_flags.add_argument("--fix_gop_size", type=int, default=None,
                            help="every GOP has this many frames: compute bin names, read no index")
    parser.add_argument("--cameras", default=None,
                        help="comma-separated camera video names (default: the manifest's)")
    parser.add_argument("--pattern", choices=["stream", "random", "sequence"], default="stream")
    parser.add_argument("--sequence_length", type=int, default=4)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--backend", choices=["auto", "nvdec", "dali", "cpu"], default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=None,
                        help="steps per epoch at most (the next epoch goes on where it stopped)")
    parser.add_argument("--resize", type=int, nargs=2, default=(64, 112), metavar=("H", "W"),
                        help="frames are resized on the decode device before the model")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


DEMO_DATA = Path("data/demo")   # the embedded default: videos/ and gops/ made here on first run


class TinyVideoNet:
    """A stand-in model: enough to make the loop real (forward, backward, all-reduce)."""

    def __new__(cls, cameras: int):
        import torch
        return torch.nn.Sequential(
            torch.nn.Conv3d(3 * cameras, 16, kernel_size=(1, 5, 5), stride=(1, 4, 4)),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
            torch.nn.Linear(16, 1))


def main(argv=None) -> None:
    import torch
    import torch.distributed as dist

    from dali_gop import SequencePattern, make_loader
    from preprocess.demo import make_demo_gop_store
    from preprocess.runner import preprocess

    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    on_gpu = torch.cuda.is_available() and args.backend != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)

    if args.gop_base_path is None:
        gop_root = DEMO_DATA / "gops"
        if rank == 0:
            make_demo_gop_store(DEMO_DATA)
    else:
        gop_root = Path(args.gop_base_path)
        if args.video_base_path and rank == 0:
            print(preprocess(args.video_base_path, gop_root).format())
    if world > 1:
        dist.barrier()   # the other ranks wait for rank 0's preprocessing

    pattern = SequencePattern(args.sequence_length, args.stride) if args.pattern == "sequence" \
        else args.pattern
    loader = make_loader(gop_root, pattern, backend=args.backend,
                         batch_size=args.group_num, num_workers=args.num_workers,
                         index_file=args.index_file, fix_gop_size=args.fix_gop_size,
                         cameras=args.cameras.split(",") if args.cameras else None,
                         persistent_index=args.use_persistent_index, seed=args.seed,
                         resize=tuple(args.resize))
    model = TinyVideoNet(len(loader.cameras)).to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if rank == 0:
        print(f"rank 0/{world}: {len(loader.clip_names)} clips x {len(loader.cameras)} cameras, "
              f"pattern {args.pattern}, backend {loader.backend_name}, {len(loader)} batches/epoch "
              f"on this rank, device {device}")
    for epoch in range(args.epochs):
        started, frames_seen, steps = time.perf_counter(), 0, 0
        batches = iter(loader)
        while args.max_steps is None or steps < args.max_steps:
            with nvtx.annotate("load", color="blue"):
                try:
                    batch = next(batches)
                except StopIteration:
                    break
            with nvtx.annotate("step", color="green"):
                frames = batch["frames"].to(device, non_blocking=True)      # B, C, T, H, W, 3
                b, c, t, h, w, _ = frames.shape
                x = frames.permute(0, 1, 5, 2, 3, 4).reshape(b, c * 3, t, h, w).float() / 255
                target = batch["frame_idx"].to(device).float().mean(dim=1, keepdim=True) / 100
                loss = torch.nn.functional.mse_loss(model(x), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            frames_seen += b * c * t
            steps += 1
        if steps == 0:
            continue
        seconds = time.perf_counter() - started
        if rank == 0:
            print(f"epoch {epoch}: {steps} steps, {frames_seen} frames in {seconds:.1f} s "
                  f"({frames_seen / seconds:.0f} frames/s on rank 0), loss {loss.item():.4f}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
