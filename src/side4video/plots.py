"""Figures a user looks at: a run's training curves, a confusion matrix and the demo's comparison chart.

    plot_run(RUN_DIR)                 -> RUN_DIR/curves.png  (loss, lr, validation metrics from log.jsonl)
    save_confusion_matrix(cm, PNG)    counts and row-normalised colours, class names, colour bar
    save_demo_chart(results, PNG)     the demo's accuracy, memory and retrieval panels

All figures are written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Validation entries that are not percentages (counts, ranks) stay out of the metric panel.
_NOT_PERCENT = ("num_", "medr", "meanr")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int):
    """Lay out, write and close ``fig``; returns it (its artists stay inspectable)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return fig


def read_log(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The records of a ``log.jsonl`` grouped by type (``train``, ``epoch``), sorted by step.

    A resumed run appends to the same file and may log a step again; the later record wins.
    """
    path = Path(path)
    by_type: dict[str, dict[int, dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON record: {e.msg}") from None
            if "type" not in record or "step" not in record:
                raise ValueError(f"{path}:{n}: a log record needs 'type' and 'step', got keys {sorted(record)}")
            key = record["epoch"] if record["type"] == "epoch" and "epoch" in record else record["step"]
            by_type.setdefault(record["type"], {})[key] = record
    return {kind: sorted(records.values(), key=lambda r: r["step"]) for kind, records in by_type.items()}


Series = dict[str, tuple[list[float], list[float]]]  # label -> (steps, values)


def run_curves(log: dict[str, list[dict[str, Any]]]) -> dict[str, Series]:
    """What ``plot_run`` draws, panel by panel: ``loss`` (per logged step and per-epoch mean), ``lr`` and
    ``val`` (every validation metric in %), each over optimiser steps; a panel without data is left out."""
    steps, epochs = log.get("train", []), log.get("epoch", [])
    panels: dict[str, Series] = {"loss": {}}
    if steps:
        panels["loss"]["per logged step"] = ([r["step"] for r in steps], [r["loss"] for r in steps])
    if epochs:
        panels["loss"]["epoch mean"] = ([r["step"] for r in epochs], [r["train_loss"] for r in epochs])
    with_lr = [r for r in steps if "lr" in r]
    if with_lr:
        panels["lr"] = {"lr": ([r["step"] for r in with_lr], [r["lr"] for r in with_lr])}
    evals = [(r["step"], r["val"]) for r in epochs if isinstance(r.get("val"), dict)]
    names = sorted({k for _, v in evals for k, x in v.items()
                    if isinstance(x, (int, float)) and not isinstance(x, bool) and not k.startswith(_NOT_PERCENT)})
    if names:
        panels["val"] = {n: ([s for s, v in evals if n in v], [v[n] for _, v in evals if n in v]) for n in names}
    if not any(panels.values()):
        raise ValueError("no train or epoch records to plot")
    return {name: series for name, series in panels.items() if series}


_TITLES = {"loss": "training loss", "lr": "learning rate (largest group)", "val": "validation (%)"}


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``RUN_DIR/log.jsonl`` into ``curves.png`` (or ``out``): training loss, learning rate and
    validation metrics over optimiser steps (see ``run_curves``). Returns the PNG's path."""
    run_dir = Path(run_dir)
    log_file = run_dir / "log.jsonl"
    if not log_file.is_file():
        raise FileNotFoundError(f"{log_file}: no training log (is {run_dir} a training output directory?)")
    log = read_log(log_file)
    try:
        panels = run_curves(log)
    except ValueError as e:
        raise ValueError(f"{log_file}: {e}") from None
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        for label, (x, y) in series.items():
            if label == "per logged step":
                style = {"linewidth": 1, "alpha": 0.6}
            else:
                style = {"linewidth": 1.5} if panel == "lr" else {"marker": "o", "markersize": 4}
            ax.plot(x, y, label=label, **style)
            if panel == "val":
                ax.annotate(f"{y[-1]:.1f}", (x[-1], y[-1]), textcoords="offset points", xytext=(4, 0),
                            fontsize=7, va="center")
        if panel == "val":
            ax.set_ylim(0, 105)
        if panel == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        else:
            ax.legend(fontsize=8)
        ax.set_title(_TITLES[panel])
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    last = max((r for records in log.values() for r in records), key=lambda r: r["step"])
    fig.suptitle(f"{_run_name(run_dir)}: {last.get('epoch', '?')} epoch(s), {last['step']} steps", fontsize=10)
    path = Path(out) if out is not None else run_dir / "curves.png"
    _save(fig, path, dpi=110)
    return path


def _run_name(run_dir: Path) -> str:
    """``DIR (MODEL)`` from the run's ``config.yaml`` when it names the model."""
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        model = (yaml.safe_load(config.read_text()) or {}).get("model")
        model = model.get("name") if isinstance(model, dict) else model  # grouped or flat config
        if model:
            return f"{run_dir.name} ({model})"
    return run_dir.name


def save_confusion_matrix(
    cm: np.ndarray, path: str | Path, label_names: Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """A confusion matrix as a PNG: rows are true classes, columns predictions, coloured by the row's share
    (each true class sums to 1) with a colour bar; counts written in the cells up to 30 classes, class
    names on the axes up to 60. The title says how many videos and the top-1 accuracy. Returns the figure."""
    cm = np.asarray(cm)
    n = len(cm)
    if label_names is not None and len(label_names) != n:
        raise ValueError(f"{len(label_names)} label names for a {n}-class confusion matrix")
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (C, C), rows sum to 1
    size = min(3.5 + 0.45 * n, 40)
    fig, ax = _pyplot().subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    total = int(cm.sum())
    accuracy = 100 * np.trace(cm) / max(total, 1)
    ax.set_title(title or f"Confusion matrix: {total} videos, top-1 {accuracy:.1f} %", fontsize=10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 60:
        names = list(label_names) if label_names is not None else [str(i) for i in range(n)]
        ticks = np.arange(n)
        font = 9 if n <= 12 else 6
        ax.set_xticks(ticks, names, rotation=45 if label_names is not None else 0, ha="right", fontsize=font)
        ax.set_yticks(ticks, names, fontsize=font)
    if n <= 30:
        for (i, j), count in np.ndenumerate(cm):
            if count:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=10 if n <= 12 else 6)
    return _save(fig, path, dpi=110)


def save_demo_chart(results: dict[str, Any], path: str | Path) -> Figure:
    """The demo's chart from its ``results.json``: top-1 per method against chance and the frame-averaging
    ceiling, the profiler's ViT-B/16 training memory, and text-video recall against chance. Returns the figure."""
    rows, retrieval = results["recognition"], results.get("retrieval", [])
    chance, ceiling = results["chance_top1"], results["frame_mean_ceiling_top1"]
    ncols = 3 if retrieval else 2
    fig, axes = _pyplot().subplots(1, ncols, figsize=(5.0 * ncols, 3.8))
    acc, mem = axes[0], axes[1]

    labels = [r["method"] for r in rows]
    bars = acc.barh(labels, [r["top1"] for r in rows], color="tab:blue")
    acc.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    acc.axvline(chance, color="black", linestyle=":", linewidth=1)
    acc.axvline(ceiling, color="gray", linestyle="--", linewidth=1)
    acc.text(chance + 1, len(rows) - 0.45, "chance", fontsize=7)
    acc.text(ceiling + 1, len(rows) - 0.45, "best a frame-averaging model can do", fontsize=7, color="gray")
    acc.set_xlim(0, 110)
    acc.set_ylim(len(rows) - 0.2, -0.6)
    acc.set_xlabel("top-1 (%) on held-out videos")
    acc.set_title(f"Motion direction ({round(100 / chance)} classes)", fontsize=10)

    b16 = [r for r in rows if r.get("b16_memory_gb") is not None]
    bars = mem.barh([r["b16_model"] for r in b16], [r["b16_memory_gb"] for r in b16], color="tab:orange")
    mem.bar_label(bars, fmt="%.1f GB", fontsize=8, padding=2)
    mem.set_xlim(0, 1.25 * max(r["b16_memory_gb"] for r in b16))
    mem.invert_yaxis()
    mem.set_xlabel("training memory (GB = 10^9 bytes), profiler")
    mem.set_title("At ViT-B/16, 8 frames, batch 32", fontsize=10)

    if retrieval:
        ax = axes[2]
        keys = ("t2v_r1", "t2v_r5", "v2t_r1", "v2t_r5")
        x = np.arange(len(keys))
        width = 0.8 / len(retrieval)
        for k, r in enumerate(retrieval):
            bars = ax.bar(x + (k - (len(retrieval) - 1) / 2) * width, [r[key] for key in keys], width,
                          label=r["method"])
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        videos = retrieval[0]["num_videos"]
        for i, recall_at in enumerate((1, 5, 1, 5)):  # chance recall@k: k of the candidate videos
            level = 100 * min(recall_at / videos, 1)
            ax.hlines(level, i - 0.45, i + 0.45, color="black", linestyle=":", linewidth=1,
                      label="chance" if i == 0 else None)
        ax.set_xticks(x, ["text→video\nR@1", "text→video\nR@5", "video→text\nR@1", "video→text\nR@5"],
                      fontsize=8)
        ax.set_ylim(0, 125)
        ax.set_ylabel("recall (%)")
        ax.set_title(f"Text-video retrieval ({videos} videos, {retrieval[0]['num_texts']} captions)", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", ncols=3)
    return _save(fig, path, dpi=120)
