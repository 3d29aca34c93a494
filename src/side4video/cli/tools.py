"""``side4video models``, ``profile``, ``fit``, ``export``, ``demo`` and ``plot``."""

from __future__ import annotations

import argparse
import json

from ..profiler import PRECISIONS
from ..units import GB


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every preset: task, backbone, method, tunable parameters, description")
    p.add_argument("--json", action="store_true", help="print one JSON object per preset")


def run_models(args: argparse.Namespace) -> int:
    from ..models import describe_presets
    from ..units import format_count

    rows = describe_presets()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = ("preset", "task", "backbone", "method", "tunable", "description")
    table = [(r["name"], r["task"], r["backbone"], r["method"], format_count(r["tunable_params"]), r["description"])
             for r in rows]
    widths = [max(len(cells[i]) for cells in (header, *table)) for i in range(len(header) - 1)]
    for cells in (header, *table):
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1])
    print("tunable: trainable parameters with the preset's 400-class head for recognition "
          "(side4video profile NAME --num-classes N for another)")
    return 0


def add_profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, FLOPs and the memory of a training step of a preset")
    p.add_argument("model", help="preset name (side4video models lists them)")
    p.add_argument("--num-classes", type=int, default=400,
                   help="classes of the recognition head (default: %(default)s)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="clips per training step, for the memory (default: %(default)s)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's)")
    p.add_argument("--device", default="meta", choices=["meta", "cpu", "cuda"],
                   help="meta counts without allocating anything; cpu / cuda also time training steps "
                        "(default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="training precision (default: what training uses on --device: fp32 on CPU, else bf16-mixed)")
    p.add_argument("--checkpoint-parts", action="store_true",
                   help="Side4Video: activation checkpointing of every side-block part")
    p.add_argument("--merged", action="store_true", help="profile ZeroI2V after re-parameterisation")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_profile(args: argparse.Namespace) -> int:
    from ..profiler import profile_model

    overrides = {"checkpoint_parts": True} if args.checkpoint_parts else {}
    prof = profile_model(args.model, num_classes=args.num_classes, frames=args.frames, batch_size=args.batch_size,
                         image_size=args.image_size, device=args.device, merged=args.merged, precision=args.precision,
                         **overrides)
    if args.json:
        print(json.dumps(prof.to_dict()))
        return 0
    print(f"{prof.model} on {prof.backbone}, {prof.frames} frames at {prof.image_size}px, batch {prof.batch_size}, "
          f"{prof.precision}")
    print(f"  parameters        {prof.total_params / 1e6:10.2f} M total, {prof.tunable_params / 1e6:.2f} M tunable")
    print(f"  GFLOPs per view   {prof.gflops_per_view:10.2f}")
    print(f"  weights           {prof.weight_bytes / GB:10.2f} GB (+ gradients {prof.grad_bytes / GB:.2f}, "
          f"AdamW {prof.optimizer_bytes / GB:.2f}, batch {prof.input_bytes / GB:.2f})")
    print(f"  activations       {prof.activation_bytes / GB:10.2f} GB kept for backward")
    print(f"  training memory   {prof.train_memory_bytes / GB:10.2f} GB predicted peak of a training step")
    if prof.measured_peak_bytes is not None:
        print(f"  measured peak     {prof.measured_peak_bytes / GB:10.2f} GB on {args.device} "
              f"(prediction {100 * prof.prediction_error:+.1f} %), {prof.step_time_s:.3f} s per step")
    return 0


def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="the largest batch of a preset that trains on a GPU, and the accumulation")
    p.add_argument("model", help="preset name (side4video models lists them)")
    p.add_argument("--gpu-memory", required=True,
                   help="memory of one GPU: 24GiB, 80GiB (as GPUs are sold), or 25.7GB (GB = 10^9 bytes)")
    p.add_argument("--frames", type=int, help="frames per clip (default: the preset's)")
    p.add_argument("--global-batch", type=int, help="the recipe's batch over all GPUs, reached by accumulation")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed",
                   help="training precision (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=400,
                   help="classes of the recognition head (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_fit(args: argparse.Namespace) -> int:
    from ..planner import ALLOCATOR_FRACTION, CONTEXT_BYTES, parse_bytes, plan

    p = plan(args.model, parse_bytes(args.gpu_memory), frames=args.frames, global_batch=args.global_batch,
             num_gpus=args.gpus, precision=args.precision, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(p.to_dict()))
        return 0
    print(f"{p.model}, {p.frames} frames, {p.precision}, {p.num_gpus} GPU(s) of {p.gpu_memory_bytes / GB:.1f} GB: "
          f"{p.usable_bytes / GB:.1f} GB usable ({CONTEXT_BYTES / GB:.2f} GB CUDA context and "
          f"{100 * ALLOCATOR_FRACTION:.0f} % allocator margin kept free)")
    for o in p.options:
        print(f"  {'with' if o.checkpointing else 'without':7s} side-network checkpointing: largest batch "
              f"{o.batch_size:4d} ({o.train_memory_bytes / GB:.2f} GB)")
    total = p.batch_size * p.grad_accum * p.num_gpus
    print(f"  -> batch {p.batch_size} x {p.grad_accum} accumulation step(s) x {p.num_gpus} GPU(s) = {total}"
          f"{'' if p.global_batch is None else f' (recipe: {p.global_batch})'}, "
          f"checkpointing {'on' if p.checkpointing else 'off'}, {p.train_memory_bytes / GB:.2f} GB per GPU")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a ZeroI2V checkpoint's adapters into the ViT (verified) and save it")
    p.add_argument("checkpoint", help="ZeroI2V training checkpoint")
    p.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    p.add_argument("--atol", type=float, default=1e-5,
                   help="largest allowed merged-vs-unmerged difference (default: %(default)s)")
    p.add_argument("--pretrained", help="backbone weights, for checkpoints saved without the frozen weights "
                                        "(default: the run's)")


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_merged

    out = export_merged(args.checkpoint, args.out, atol=args.atol, pretrained=args.pretrained)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out} (merged; max |merged - unmerged| = {config['merge_max_abs_diff']:.2e})")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and compare every method on a synthetic temporal task (CPU, minutes)")
    p.add_argument("--output-dir", default="demo_output",
                   help="where the data, runs and report go (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="training epochs per method (default: the demo's, 14 and 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training runs (default: %(default)s)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last.pt (and the merged "
                                                                   "ZeroI2V export); by default none is kept")


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo as demo

    demo(args.output_dir, epochs=args.epochs, seed=args.seed, keep_checkpoints=args.keep_checkpoints)
    return 0


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a training run's curves (RUN_DIR/curves.png) or a demo's chart")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training output folder (log.jsonl) or a demo output "
                                                      "folder (results.json)")
    p.add_argument("--out", help="PNG to write (default: RUN_DIR/curves.png, or RUN_DIR/chart.png for a demo)")


def run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..plots import plot_run, save_demo_chart

    run_dir = Path(args.run_dir)
    if not (run_dir / "log.jsonl").is_file() and (run_dir / "results.json").is_file():
        out = Path(args.out or run_dir / "chart.png")
        save_demo_chart(json.loads((run_dir / "results.json").read_text()), out)
    else:
        out = plot_run(run_dir, args.out)
    print(f"wrote {out}")
    return 0
