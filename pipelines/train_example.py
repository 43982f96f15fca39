"""A training loop over the GOP loader: DALI replaces DataLoader and Sampler.

    python -m pipelines.train_example                      # embedded synthetic 6-camera set
    torchrun --nproc_per_node 8 -m pipelines.train_example --gop_base_path /data/gops --group_num 4

With no dataset flags it makes a small synthetic multi-camera dataset under data/demo, preprocesses
it and trains on it, so it runs anywhere (on the CPU with ``--backend cpu``, the default without a
GPU). The seed's flags keep the seed's meaning. NVTX ranges mark load, decode and step for
Nsight Systems.

``--checkpoint PATH`` saves the model, the optimizer, the step and the loader's state every
``--checkpoint_every`` steps; ``--resume PATH`` goes on from such a checkpoint with the batch after
the last one trained on, at any number of ranks.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dali_gop.errors import ArgumentParser, ConfigError, run_cli
from dali_gop.hooks import annotate

PROG = "python -m pipelines.train_example"


def parse_args(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__)
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
                        help="steps per epoch at most (the rest of the epoch is left out)")
    parser.add_argument("--resize", type=int, nargs=2, default=(64, 112), metavar=("H", "W"),
                        help="frames are resized on the decode device before the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="save model, optimizer, step and loader state here (rank 0)")
    parser.add_argument("--checkpoint_every", type=int, default=100, metavar="N",
                        help="steps between checkpoints")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="go on from this checkpoint, with the batch after its last")
    args = parser.parse_args(argv)
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint_every must be >= 1, not {args.checkpoint_every}")
    return args


DEMO_DATA = Path("data/demo")   # the embedded default: videos/ and gops/ made here on first run


class TinyVideoNet:
    """A stand-in model: enough to make the loop real (forward, backward, all-reduce)."""

    def __new__(cls, cameras: int):
        import torch
        return torch.nn.Sequential(
            torch.nn.Conv3d(3 * cameras, 16, kernel_size=(1, 5, 5), stride=(1, 4, 4)),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
            torch.nn.Linear(16, 1))


def save_checkpoint(path: str, model, optimizer, loader, step: int) -> None:
    """Everything a resumed run needs, written whole or not at all: a run killed while saving
    keeps the checkpoint before."""
    import torch
    temporary = f"{path}.tmp{os.getpid()}"
    torch.save({"model": getattr(model, "module", model).state_dict(),
                "optimizer": optimizer.state_dict(), "loader": loader.state_dict(),
                "step": step}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str, device) -> dict:
    import torch
    if not os.path.isfile(path):
        raise ConfigError(f"--resume {path}: no such checkpoint file")
    checkpoint = torch.load(path, map_location=device)
    missing = {"model", "optimizer", "loader", "step"} - set(checkpoint)
    if missing:
        raise ConfigError(f"--resume {path}: not a checkpoint of this script (it lacks "
                          f"{', '.join(sorted(missing))})")
    return checkpoint


def main(argv=None) -> int:
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
    checkpoint = load_checkpoint(args.resume, device) if args.resume else None

    if args.gop_base_path is None:
        gop_root = DEMO_DATA / "gops"
        if rank == 0:
            make_demo_gop_store(DEMO_DATA)
    else:
        gop_root = Path(args.gop_base_path)
        if args.video_base_path and rank == 0:
            summary = preprocess(args.video_base_path, gop_root)
            print(summary.format())
            if not summary.ok:
                # training on what is left would silently leave those videos out
                what = (f"{len(summary.failed)} video(s) failed" if summary.failed else
                        "the manifest was not updated")
                raise ConfigError(f"preprocessing {args.video_base_path}: {what} (see above); "
                                  "fix or remove them and run again")
    if world > 1:
        dist.barrier()   # the other ranks wait for rank 0's preprocessing

    pattern = SequencePattern(args.sequence_length, args.stride) if args.pattern == "sequence" \
        else args.pattern
    loader = make_loader(gop_root, pattern, backend=args.backend,
                         batch_size=args.group_num, num_workers=args.num_workers,
                         index_file=args.index_file, fix_gop_size=args.fix_gop_size,
                         cameras=args.cameras.split(",") if args.cameras else None,
                         persistent_index=args.use_persistent_index, seed=args.seed,
                         resize=tuple(args.resize),
                         state=checkpoint["loader"] if checkpoint else None)
    model = TinyVideoNet(len(loader.cameras)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    if rank == 0:
        resumed = f", resumed at epoch {loader.epoch} step {step}" if checkpoint else ""
        print(f"rank 0/{world}: {len(loader.clip_names)} clips x {len(loader.cameras)} cameras, "
              f"pattern {args.pattern}, backend {loader.backend_name}, {len(loader)} batches/epoch "
              f"on this rank, device {device}{resumed}")
    for epoch in range(loader.epoch, args.epochs):
        batches = iter(loader)    # this epoch: a resumed one goes on, any other starts
        # a resumed epoch counts the steps trained before the checkpoint
        started, frames_seen, steps = time.perf_counter(), 0, loader.state_dict()["batches"]
        first = steps
        while args.max_steps is None or steps < args.max_steps:
            with annotate("load", color="blue"):
                try:
                    batch = next(batches)
                except StopIteration:
                    break
            with annotate("step", color="green"):
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
            step += 1
            if args.checkpoint and rank == 0 and step % args.checkpoint_every == 0:
                save_checkpoint(args.checkpoint, model, optimizer, loader, step)
        if steps == first:
            continue
        seconds = time.perf_counter() - started
        if rank == 0:
            print(f"epoch {epoch}: {steps - first} steps, {frames_seen} frames in {seconds:.1f} s "
                  f"({frames_seen / seconds:.0f} frames/s on rank 0), loss {loss.item():.4f}")
    if args.checkpoint and rank == 0:
        save_checkpoint(args.checkpoint, model, optimizer, loader, step)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
