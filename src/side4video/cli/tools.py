"""``side4video profile``, ``export`` and ``demo``."""

from __future__ import annotations

import argparse
import json


def add_profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, FLOPs, activation and training memory of a preset")
    p.add_argument("model")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int)
    p.add_argument("--device", default="meta", choices=["meta", "cpu", "cuda"])
    p.add_argument("--merged", action="store_true", help="profile ZeroI2V after re-parameterisation")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_profile(args: argparse.Namespace) -> int:
    from ..profiler import profile_model

    prof = profile_model(args.model, num_classes=args.num_classes, frames=args.frames, batch_size=args.batch_size,
                         image_size=args.image_size, device=args.device, merged=args.merged)
    if args.json:
        print(json.dumps(prof.to_dict()))
        return 0
    gib = 1024**3
    print(f"{prof.model} on {prof.backbone}, {prof.frames} frames at {prof.image_size}px, batch {prof.batch_size}")
    print(f"  parameters        {prof.total_params / 1e6:10.2f} M total, {prof.tunable_params / 1e6:.2f} M tunable")
    print(f"  GFLOPs per view   {prof.gflops_per_view:10.2f}")
    print(f"  activations       {prof.activation_bytes / gib:10.2f} GiB saved for backward")
    print(f"  training memory   {prof.train_memory_bytes / gib:10.2f} GiB (activations + weights + grads + AdamW)")
    if prof.cuda_peak_bytes is not None:
        print(f"  CUDA peak         {prof.cuda_peak_bytes / gib:10.2f} GiB, {prof.step_time_s:.3f} s per step")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a ZeroI2V checkpoint's adapters into the ViT (verified) and save it")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    p.add_argument("--atol", type=float, default=1e-5, help="largest allowed merged-vs-unmerged difference")
    p.add_argument("--pretrained", help="backbone weights, for checkpoints saved without the frozen weights")


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_merged

    out = export_merged(args.checkpoint, args.out, atol=args.atol, pretrained=args.pretrained)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out} (merged; max |merged - unmerged| = {config['merge_max_abs_diff']:.2e})")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and compare every method on a synthetic temporal task (CPU, minutes)")
    p.add_argument("--output-dir", default="demo_output")
    p.add_argument("--epochs", type=int, help="training epochs per method (default: the demo's)")
    p.add_argument("--seed", type=int, default=0)


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo as demo

    demo(args.output_dir, epochs=args.epochs, seed=args.seed)
    return 0
