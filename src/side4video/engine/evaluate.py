"""Multi-view evaluation for recognition: softmax averaged over views, metrics, confusion matrix.

A test batch holds every view of each video, ``(B, V, 3, T, H, W)`` with ``V = crops x clips``. The
``B * V`` clips go through the model in chunks of ``chunk`` clips, so memory is bounded whatever V is.
Under ``torchrun`` every rank evaluates its shard; the per-sample probabilities are gathered with the
dataset index of each sample and de-duplicated, so the padding a ``DistributedSampler`` adds when the
dataset size is not a multiple of the world size is never counted twice.
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

from ..plots import save_confusion_matrix  # noqa: F401 (its home is plots.py; imported here by callers)
from .distributed import DistInfo, all_gather_objects


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
    """Softmax probabilities averaged over the views: ``(B, V, 3, T, H, W) -> (B, C)``."""
    b, v = video.shape[:2]
    clips = video.flatten(0, 1)  # (B*V, 3, T, H, W)
    probs = torch.cat([model(c).float().softmax(dim=-1) for c in clips.split(chunk)])  # (B*V, C)
    return probs.view(b, v, -1).mean(dim=1)  # (B, C)


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
    index, probs, labels, bad = [], [], [], []
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
        probs.append(p.cpu().numpy())
        labels.append(batch["label"].numpy())
    local = (
        np.concatenate(index) if index else np.zeros(0, np.int64),
        np.concatenate(probs) if probs else None,
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        bad,
    )
    shards = all_gather_objects(local, info)
    all_index = np.concatenate([s[0] for s in shards])
    all_probs = np.concatenate([s[1] for s in shards if s[1] is not None])
    all_labels = np.concatenate([s[2] for s in shards])
    _, first = np.unique(all_index, return_index=True)  # sorted unique indices, first occurrence of each
    return Predictions(all_index[first], all_probs[first], all_labels[first], [b for s in shards for b in s[3]])


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
