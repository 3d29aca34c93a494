"""Profile every method at the papers' settings and write the README's comparison tables.

    python benchmarks/profile_table.py [--device meta|cuda] [--out benchmarks/results]

Writes ``profile_<device>.json`` (one profiler record per row and precision) and ``profile_<device>.md``:
the predicted peak memory of a training step in fp32 and in bf16-mixed (and, for Side4Video, with the side
network checkpointed), action
recognition at the Side4Video paper's Table 2 settings (8 frames, batch 32 for B/16 and 16 for L/14), and
text-video retrieval at ViT-B/16 (12 frames, 32-token captions, batch 16 per GPU: the recipe's 128 over 8).
Paper figures: Side4Video Tables 1-4 (tunable params, GFLOPs, memory on an A100), ST-Adapter and ZeroI2V
papers for theirs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from side4video.models import PRESETS
from side4video.profiler import profile_model

# (preset, batch size, kwargs, paper: tunable params M, GFLOPs per view, memory GB).
# ZeroI2V Table 3 gives the plain ViT-L/14 at 1946 GFLOPs over 3 views.
# Papers give GFLOPs over 3 views (8 frames x 3 clips); E/14 per view (Side4Video Table 4: 7.98 T).
ROWS: list[tuple[str, int, dict, tuple[float | None, float | None, float | None]]] = [
    ("frozen-meanp-b16", 32, {}, (None, 422 / 3, None)),
    ("full-finetune-b16", 32, {}, (86, 422 / 3, None)),
    ("st-adapter-b16", 32, {}, (7, 455 / 3, 28.8)),
    ("zeroi2v-b16", 32, {}, (14, None, None)),
    ("zeroi2v-b16", 32, {"merged": True}, (None, 422 / 3, None)),
    ("side4video-b16-light", 32, {}, (4, 445 / 3, 8.9)),
    ("side4video-b16", 32, {}, (21, 528 / 3, 18.8)),
    ("frozen-meanp-l14", 16, {}, (None, 1946 / 3, None)),
    ("full-finetune-l14", 16, {}, (304, 1946 / 3, None)),
    ("st-adapter-l14", 16, {}, (20, 2062 / 3, 51.4)),
    ("zeroi2v-l14", 16, {}, (None, None, None)),
    ("zeroi2v-l14", 16, {"merged": True}, (None, 1946 / 3, None)),
    ("side4video-l14-light", 16, {}, (22, 2092 / 3, 15.3)),
    ("side4video-l14", 16, {}, (102, 2611 / 3, 37.0)),
    ("side4video-e14-light", 8, {}, (None, 7980, None)),
]


# (preset, paper memory GB), Side4Video Table 3 (MSR-VTT, ViT-B/16).
RETRIEVAL_ROWS = [("clip4clip-b16", 8.2), ("clip4clip-frozen-b16", 3.8), ("side4video-retrieval-b16", 5.8)]
RETRIEVAL_FRAMES, RETRIEVAL_BATCH = 12, 16


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="meta", choices=["meta", "cpu", "cuda"])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=174)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    gb = 1e9
    records, lines = [], [
        "| model | batch | tunable params (M) | paper | GFLOPs / view | paper | fp32 (GB) | bf16-mixed (GB) "
        "| bf16-mixed, side network checkpointed (GB) | paper memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, kwargs, (p_params, p_gflops, p_mem) in ROWS:
        if name not in PRESETS:
            continue
        common = dict(num_classes=args.num_classes, frames=args.frames, batch_size=batch, device=args.device)
        fp32 = profile_model(name, precision="fp32", **common, **kwargs)
        bf16 = profile_model(name, precision="bf16-mixed", **common, **kwargs)
        records += [fp32.to_dict() | kwargs, bf16.to_dict() | kwargs]
        ckpt = "–"
        if hasattr(PRESETS[name].config, "checkpoint_parts"):
            ck = profile_model(name, precision="bf16-mixed", **common, **kwargs, checkpoint_parts=True)
            records.append(ck.to_dict() | kwargs | {"checkpoint_parts": True})
            ckpt = f"{ck.train_memory_bytes / gb:.2f}"
        label = name + (" (merged)" if kwargs.get("merged") else "")
        lines.append(
            f"| {label} | {batch} | {fp32.tunable_params / 1e6:.2f} | {fmt(p_params, 'g')} "
            f"| {fp32.gflops_per_view:.1f} | {fmt(p_gflops, '.1f')} | {fp32.train_memory_bytes / gb:.2f} "
            f"| {bf16.train_memory_bytes / gb:.2f} | {ckpt} | {fmt(p_mem, 'g')} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "| retrieval model | batch | tunable params (M) | GFLOPs / clip | fp32 (GB) | bf16-mixed (GB) "
        "| paper memory (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p_mem in RETRIEVAL_ROWS:
        common = dict(frames=RETRIEVAL_FRAMES, batch_size=RETRIEVAL_BATCH, device=args.device)
        fp32 = profile_model(name, precision="fp32", **common)
        bf16 = profile_model(name, precision="bf16-mixed", **common)
        records += [fp32.to_dict(), bf16.to_dict()]
        lines.append(
            f"| {name} | {RETRIEVAL_BATCH} | {fp32.tunable_params / 1e6:.2f} | {fp32.gflops_per_view:.1f} "
            f"| {fp32.train_memory_bytes / gb:.2f} | {bf16.train_memory_bytes / gb:.2f} | {p_mem:g} |"
        )
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{args.device}.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.out / f"profile_{args.device}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
