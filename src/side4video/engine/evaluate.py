"""Multi-view evaluation for recognition: softmax averaged over views, metrics, confusion matrix.

A test batch holds views of each video, ``(B, V, 3, T, H, W)``: all ``crops x clips`` of them, or (a
dataset with ``view_chunk``) a chunk of them, so that no more than a chunk is ever decoded. The clips go
through the model in chunks of ``chunk`` clips, so memory is bounded whatever the number of views.
Probabilities are summed per (video, first view) and averaged per video once every rank's results are
gathered; pairs seen twice (the padding a ``DistributedSampler`` adds when the dataset size is not a
multiple of the world size) are counted once. A non-finite model output is an error, never a prediction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_gather_objects


class NonFiniteError(RuntimeError):
    """A model's weights or outputs (or the loss) are NaN or infinite: the model has diverged."""


class NoReadableVideoError(ValueError):
    """Evaluation found no readable video; ``bad`` holds the ``BadSample`` reports."""

    def __init__(self, bad: list) -> None:
        shown = ", ".join(b.path for b in bad[:3]) + (f", ... ({len(bad)} in all)" if len(bad) > 3 else "")
        super().__init__(f"no readable video to evaluate; unreadable: {shown or 'none listed'}")
        self.bad = bad


@dataclass
class Predictions:
    """Per-video results, sorted by dataset index, each sample once."""

    index: np.ndarray  # (N,) dataset indices
    probs: np.ndarray  # (N, C) softmax probabilities averaged over views
    labels: np.ndarray  # (N,)
    bad: list  # BadSample reports seen while evaluating


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype = torch.bfloat16):
    """Autocast on CUDA when ``enabled``; nothing on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_views(model: nn.Module, video: torch.Tensor, chunk: int) -> torch.Tensor:
    """Softmax probabilities averaged over the views: ``(B, V, 3, T, H, W) -> (B, C)``; raises
    ``NonFiniteError`` if the model's outputs are not finite."""
    b, v = video.shape[:2]
    clips = video.flatten(0, 1)  # (B*V, 3, T, H, W)
    logits = torch.cat([model(c).float() for c in clips.split(chunk)])  # (B*V, C)
    if not torch.isfinite(logits).all():
        raise NonFiniteError("non-finite model outputs (NaN or inf): its weights have diverged")
    return logits.softmax(dim=-1).view(b, v, -1).mean(dim=1)  # (B, C)


@torch.no_grad()
def gather_predictions(
    model: nn.Module,
    loader: DataLoader,
    info: DistInfo,
    chunk: int,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.bfloat16,
    progress: bool = False,
) -> Predictions:
    """Run ``model`` on every batch of ``loader`` (this rank's shard) and gather all ranks' results."""
    model.eval()
    index, start, sums, counts, labels, bad = [], [], [], [], [], []
    batches = loader
    if progress and info.is_main:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", unit="batch", dynamic_ncols=True)
    for batch in batches:
        bad.extend(batch["bad"])
        if batch["label"].numel() == 0:
            continue
        video = batch["video"].to(info.device, non_blocking=True)  # (B, V, 3, T, H, W)
        with autocast_context(info.device, amp, amp_dtype):
            p = predict_views(model, video, chunk)  # (B, C)
        index.append(batch["index"].numpy())
        start.append(batch.get("view_start", torch.zeros_like(batch["index"])).numpy())
        sums.append(p.cpu().double().numpy() * video.shape[1])
        counts.append(np.full(len(p), video.shape[1]))
        labels.append(batch["label"].numpy())
    local = [np.concatenate(x) if x else None for x in (index, start, sums, counts, labels)]
    shards = all_gather_objects((local, bad), info)
    parts = [s[0] for s in shards if s[0][0] is not None]
    all_bad = list({(b.path, b.reason): b for s in shards for b in s[1]}.values())  # a video's chunks: once
    if not parts:
        empty = np.zeros(0, np.int64)
        return Predictions(empty, np.zeros((0, 0)), empty, all_bad)
    idx, first, psum, count, lab = (np.concatenate([p[i] for p in parts]) for i in range(5))
    _, once = np.unique(np.stack([idx, first], axis=1), axis=0, return_index=True)  # padding counted once
    idx, psum, count, lab = idx[once], psum[once], count[once], lab[once]
    videos, slot = np.unique(idx, return_inverse=True)  # sorted video indices
    total = np.zeros((len(videos), psum.shape[1]))
    np.add.at(total, slot, psum)
    views = np.bincount(slot, weights=count, minlength=len(videos))
    labels_of = np.zeros(len(videos), np.int64)
    labels_of[slot] = lab
    return Predictions(videos, (total / views[:, None]).astype(np.float32), labels_of, all_bad)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, topk: tuple[int, ...] = (1, 5)) -> dict:
    """Top-k accuracies (k clipped to the number of classes) and mean class accuracy, in %.

    Mean class accuracy averages the per-class top-1 recall over the classes present in ``labels``.
    """
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    num_classes = probs.shape[1]
    ranked = np.argsort(-probs, axis=1, kind="stable")  # (N, C), best first
    hits = ranked == labels[:, None]  # (N, C)
    metrics = {f"top{k}": float(hits[:, : min(k, num_classes)].any(axis=1).mean() * 100) for k in topk}
    correct = hits[:, 0]
    classes = np.unique(labels)
    metrics["mean_class_acc"] = float(np.mean([correct[labels == c].mean() for c in classes]) * 100)
    metrics["num_samples"] = int(len(labels))
    return metrics


def confusion_matrix(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    num_classes = probs.shape[1]
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, probs.argmax(axis=1)), 1)
    return cm


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


def evaluate_checkpoint(
    path: str | Path, device: str = "auto", progress: bool = False, **changes: Any
) -> tuple[dict, Predictions, Any]:
    """Evaluate a training checkpoint or a merged export on its run's validation data.

    ``changes`` replace fields of the run's ``TrainConfig`` (``val_list``, ``test_crops``, ...; None keeps
    the run's value). Returns (metrics, predictions, config); under torchrun every rank gets the metrics.
    """
    import dataclasses

    from ..models import get_preset
    from .checkpoint import load_model_for_inference
    from .distributed import cleanup, init_distributed
    from .tasks import get_task

    owns_group = not dist.is_initialized()
    info = init_distributed(device)
    try:
        model, cfg = load_model_for_inference(path, info.device)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
        task = get_task(get_preset(cfg.model).task)
        loader = task.make_loader(task.build_dataset(cfg, train=False), cfg, info, train=False)
        metrics, preds = task.evaluate(model, loader, cfg, info, progress=progress)
        return metrics, preds, cfg
    finally:
        if owns_group:
            cleanup()
