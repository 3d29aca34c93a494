"""Every method on a CUDA GPU at the Side4Video paper's Table 2 settings, beside the profiler's prediction.

    python benchmarks/gpu.py [--out benchmarks/results] [--methods NAME ...]
    python benchmarks/gpu.py --dry-run      # the same code path on CPU with the tiny presets

Per method (8 frames; batch 32 at B/16, 16 at L/14, as in Table 2): ``max_memory_allocated`` of one AdamW
training step under bf16 autocast (``profile_model(device="cuda")``), seconds per step, the profiler's
predicted peak at the same precision and their difference, and evaluation clips/s (3 views of a video batched
into one forward under bf16 autocast, as ``side4video eval`` runs them). Writes ``gpu.json`` and ``gpu.md``.
With ``--dry-run`` the tiny presets run on the CPU at batch 1 x 2 frames and 64 pixels (float32 training, as
on CPU), writing ``gpu_dry_run.{json,md}``: a check of the script, not of any GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from side4video.engine.recognition import predict_views
from side4video.models import create_model
from side4video.profiler import profile_model

# (preset, batch size): Side4Video Table 2 settings.
ROWS = [
    ("frozen-meanp-b16", 32), ("st-adapter-b16", 32), ("zeroi2v-b16", 32), ("side4video-b16-light", 32),
    ("side4video-b16", 32), ("full-finetune-b16", 32), ("st-adapter-l14", 16), ("side4video-l14-light", 16),
    ("side4video-l14", 16),
]
DRY_ROWS = [("frozen-meanp-tiny", 1), ("st-adapter-tiny", 1), ("side4video-tiny", 1)]
FRAMES, CLASSES, VIEWS = 8, 174, 3


def eval_clips_per_s(name: str, device: torch.device, frames: int, image_size: int | None, repeats: int = 3) -> float:
    """Clips per second of ``predict_views`` on ``VIEWS`` views of one video, batched into one forward."""
    model = create_model(name, num_classes=CLASSES, num_frames=frames, image_size=image_size).to(device).eval()
    size = model.backbone.cfg.image_size
    video = torch.randn(1, VIEWS, 3, frames, size, size, device=device)  # (B, V, 3, T, H, W)
    cuda = device.type == "cuda"
    seconds = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for r in range(repeats + 1):  # the first run warms up
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            predict_views(model, video, VIEWS)
            if cuda:
                torch.cuda.synchronize()
            if r:
                seconds.append(time.perf_counter() - start)
    return VIEWS / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", help="presets to run (default: the Table 2 rows)")
    parser.add_argument("--dry-run", action="store_true", help="tiny presets on the CPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.dry_run:
        device, precision, frames, image_size, rows = torch.device("cpu"), "fp32", 2, 64, DRY_ROWS
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
        device, precision, frames, image_size, rows = torch.device("cuda"), "bf16-mixed", FRAMES, None, ROWS
    if args.methods:
        batch = dict(rows)
        rows = [(name, batch.get(name, rows[0][1])) for name in args.methods]

    records = []
    gib = 2**30
    lines = [
        f"{device.type} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'dry run'}), {frames} frames, "
        f"{precision}; memory in GiB",
        "",
        "| model | batch | measured peak | predicted | prediction error | step (s) | eval clips/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, batch in rows:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        prof = profile_model(name, num_classes=CLASSES, frames=frames, batch_size=batch, image_size=image_size,
                             device=device.type, precision=precision)
        rec = prof.to_dict() | {"eval_clips_per_s": round(eval_clips_per_s(name, device, frames, image_size), 3)}
        records.append(rec)
        lines.append(
            f"| {name} | {batch} | {prof.measured_peak_bytes / gib:.2f} | {prof.train_memory_bytes / gib:.2f} "
            f"| {100 * prof.prediction_error:+.1f} % | {prof.step_time_s:.3f} | {rec['eval_clips_per_s']:.1f} |"
        )
        print(lines[-1], flush=True)
    stem = "gpu_dry_run" if args.dry_run else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
