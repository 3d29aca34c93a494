"""CPU speed of every method at ViT-B/16: training step time over the frozen ViT's forward, and evaluation clips/s.

    python benchmarks/cpu_speed.py [--frames 8] [--repeats 5] [--views 3] [--threads 2] [--out benchmarks/results]

For each method one AdamW training step on batch 1 x ``frames`` (float32, as training runs on CPU) is timed
against the frozen ViT-B/16's forward on the same frames under ``no_grad``, run just before it. Rounds are
interleaved (every method once per round, each paired with its own reference run); the ratio is the median
over ``repeats`` rounds of the paired ratios, after one warm-up round. Times are the process's CPU time
(``time.process_time``) with ``threads`` compute threads: on a shared machine, waiting for a core does not
count, so other processes' load changes the numbers little (wall time would with one thread only rise).

The FLOP-ideal ratio is the multiply-accumulates of the whole training step (forward and backward, counted
on the meta device) over those of the frozen forward: the ratio a machine whose speed were the same for
every operator would reach. Side networks should stay within 1.15x of it.

Evaluation: ``views`` views of one video (1 crop x ``views`` clips, the Side4Video Table 2 test) batched
into one forward by ``predict_views``, as ``side4video eval`` runs them; clips/s = views / seconds.
Writes ``cpu_speed.json`` and ``cpu_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from side4video.backbones.vit import build_vit
from side4video.engine.recognition import predict_views
from side4video.models import create_model
from side4video.profiler import count_macs

METHODS = [
    "frozen-meanp-b16", "side4video-b16-light", "side4video-b16", "st-adapter-b16", "zeroi2v-b16",
    "full-finetune-b16",
]
SIDE_NETWORKS = ("side4video-b16-light", "side4video-b16")
CLASSES = 174
SIZE = 224


def step_macs(name: str, frames: int) -> int:
    """Multiply-accumulates of one training step (forward + backward) of ``name``, on the meta device."""
    with torch.device("meta"):
        model = create_model(name, num_classes=CLASSES, num_frames=frames)
        video = torch.randn(1, 3, frames, SIZE, SIZE)
        labels = torch.zeros(1, dtype=torch.long)
    return count_macs(model, lambda: F.cross_entropy(model(video), labels).backward(), train=True)


def frozen_macs(frames: int) -> int:
    with torch.device("meta"):
        vit = build_vit("ViT-B-16")
        images = torch.randn(frames, 3, SIZE, SIZE)
    return count_macs(vit, lambda: vit.forward_features(images))


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t = args.frames

    vit = build_vit("ViT-B-16").eval()
    frames = torch.randn(t, 3, SIZE, SIZE)
    video = torch.randn(1, 3, t, SIZE, SIZE)
    labels = torch.zeros(1, dtype=torch.long)
    models, optims = {}, {}
    for name in args.methods:
        models[name] = create_model(name, num_classes=CLASSES, num_frames=t).train()
        optims[name] = torch.optim.AdamW([p for p in models[name].parameters() if p.requires_grad], lr=1e-5)

    def reference() -> None:
        with torch.no_grad():
            vit.forward_features(frames)

    def step(name: str) -> None:
        loss = F.cross_entropy(models[name](video), labels)
        loss.backward()
        optims[name].step()
        optims[name].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {name: [] for name in args.methods}
    ratios: dict[str, list[float]] = {name: [] for name in args.methods}
    for r in range(args.repeats + 1):  # round 0 warms up
        for name in args.methods:
            ref, seconds = timed(reference), timed(lambda n=name: step(n))
            if r:
                times[name].append(seconds)
                ratios[name].append(seconds / ref)
            print(f"round {r} {name}: {seconds:.3f} s, frozen forward {ref:.3f} s", flush=True)

    views = torch.randn(1, args.views, 3, t, SIZE, SIZE)  # (B, V, 3, T, H, W)
    eval_times: dict[str, list[float]] = {name: [] for name in args.methods}
    for r in range(3):
        for name in args.methods:
            models[name].eval()
            with torch.no_grad():
                seconds = timed(lambda n=name: predict_views(models[n], views, args.views))
            if r:
                eval_times[name].append(seconds)

    ref_macs = frozen_macs(t)
    rows = []
    for name in args.methods:
        ratio = statistics.median(ratios[name])
        ideal = step_macs(name, t) / ref_macs
        rows.append({
            "model": name,
            "step_time_s": round(statistics.median(times[name]), 4),
            "ratio": round(ratio, 3),
            "flop_ideal_ratio": round(ideal, 3),
            "ratio_over_ideal": round(ratio / ideal, 3),
            "eval_clips_per_s": round(args.views / statistics.median(eval_times[name]), 3),
        })
    record = {
        "frames": t, "batch_size": 1, "repeats": args.repeats, "views": args.views, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "clock": "process CPU time", "methods": rows,
    }
    lines = [
        f"CPU ({args.threads} thread(s), process CPU time), ViT-B/16, batch 1 x {t} frames, float32; median "
        f"of {args.repeats} interleaved rounds, each step paired with a frozen ViT-B/16 forward.",
        "",
        "| model | step (CPU s) | step / frozen forward | FLOP-ideal | measured / ideal "
        f"| eval clips/s ({args.views} views batched) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['step_time_s']:.3f} | {r['ratio']:.2f} | {r['flop_ideal_ratio']:.2f} "
        f"| {r['ratio_over_ideal']:.2f} | {r['eval_clips_per_s']:.2f} |"
        for r in rows
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "cpu_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
