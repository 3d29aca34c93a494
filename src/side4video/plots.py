"""Figures: the confusion matrix of a recognition evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_confusion_matrix(cm: np.ndarray, path: str | Path, label_names: list[str] | None = None) -> None:
    """Row-normalised confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.25 * len(cm), 40)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if label_names is not None and len(cm) <= 60:
        ticks = np.arange(len(cm))
        ax.set_xticks(ticks, label_names, rotation=90, fontsize=6)
        ax.set_yticks(ticks, label_names, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
