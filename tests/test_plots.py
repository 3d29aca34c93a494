"""Figures: training curves from log.jsonl, the confusion matrix and the demo chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from side4video.plots import plot_run, read_log, run_curves, save_confusion_matrix, save_demo_chart

DEMO_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "demo" / "results.json"


def _write_log(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curves_of_a_resumed_run_keep_the_later_records(tmp_path):
    train = [{"type": "train", "step": s, "time": 0, "loss": 2.0 - 0.1 * s, "lr": 1e-3 * s, "epoch": 1 + (s > 2)}
             for s in (1, 2, 3)]
    val1 = {"top1": 25.0, "top5": 100.0, "mean_class_acc": 25.0, "num_samples": 4}
    epoch1 = {"type": "epoch", "step": 2, "time": 0, "epoch": 1, "train_loss": 1.85, "val": val1}
    crashed = {"type": "epoch", "step": 4, "time": 0, "epoch": 2, "train_loss": 9.9}
    # the run crashed after epoch 2's log line but before its checkpoint: resuming redoes steps 3-4
    again = [{"type": "train", "step": s, "time": 1, "loss": 1.0, "lr": 5e-4, "epoch": 2} for s in (3, 4)]
    epoch2 = {"type": "epoch", "step": 4, "time": 1, "epoch": 2, "train_loss": 1.0,
              "val": {"top1": 75.0, "top5": 100.0, "mean_class_acc": 70.0, "num_samples": 4}}
    _write_log(tmp_path / "log.jsonl", [*train, epoch1, crashed, *again, epoch2])
    curves = run_curves(read_log(tmp_path / "log.jsonl"))
    assert list(curves) == ["loss", "lr", "val"]
    assert curves["loss"]["per logged step"] == ([1, 2, 3, 4], [1.9, 1.8, 1.0, 1.0])
    assert curves["loss"]["epoch mean"] == ([2, 4], [1.85, 1.0])
    assert curves["lr"]["lr"] == ([1, 2, 3, 4], [1e-3, 2e-3, 5e-4, 5e-4])
    assert set(curves["val"]) == {"top1", "top5", "mean_class_acc"}  # counts are not percentages
    assert curves["val"]["top1"] == ([2, 4], [25.0, 75.0])

    png = plot_run(tmp_path)
    assert png == tmp_path / "curves.png"
    assert Image.open(png).size == (round(4.6 * 3 * 110), round(3.6 * 110))  # three panels

    (tmp_path / "log.jsonl").write_text('{"type": "train", "step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON record"):
        plot_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no training log"):
        plot_run(tmp_path / "elsewhere")


def test_confusion_matrix_has_counts_names_colour_bar_and_title(tmp_path):
    cm = np.array([[8, 0, 0, 0], [0, 6, 2, 0], [1, 0, 7, 0], [0, 3, 0, 5]])
    names = ["left", "right", "up", "down"]
    fig = save_confusion_matrix(cm, tmp_path / "cm.png", names)
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax, colour_bar = fig.axes
    assert colour_bar.get_ylabel() == "share of the true class"
    assert ax.get_title() == "Confusion matrix: 32 videos, top-1 81.2 %"
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(i, j): int(c) for (i, j), c in np.ndenumerate(cm) if c}  # (true, predicted) -> count
    with pytest.raises(ValueError, match="3 label names for a 4-class"):
        save_confusion_matrix(cm, tmp_path / "cm.png", names[:3])


def test_demo_chart_labels_values_chance_and_retrieval(tmp_path):
    results = json.loads(DEMO_RESULTS.read_text())
    fig = save_demo_chart(results, tmp_path / "chart.png")
    accuracy, memory, retrieval = fig.axes
    bar_labels = [t.get_text() for t in accuracy.texts if t.get_text()[:1].isdigit()]
    assert bar_labels == [f"{r['top1']:.1f}" for r in results["recognition"]]
    assert {line.get_xdata()[0] for line in accuracy.lines} == {25.0, 50.0}  # chance and the frame-mean ceiling
    assert [t.get_text() for t in memory.texts] == [f"{r['b16_memory_gb']:.1f} GB" for r in results["recognition"]]
    assert "GB = 10^9 bytes" in memory.get_xlabel()
    side4video = results["retrieval"][0]
    assert [t.get_text() for t in retrieval.texts][:4] == [f"{side4video[k]:.0f}"
                                                          for k in ("t2v_r1", "t2v_r5", "v2t_r1", "v2t_r5")]
    chance = sorted({round(seg[0][1], 2) for c in retrieval.collections if hasattr(c, "get_segments")
                     for seg in c.get_segments()})
    assert chance == [round(100 / side4video["num_videos"], 2), round(500 / side4video["num_videos"], 2)]
