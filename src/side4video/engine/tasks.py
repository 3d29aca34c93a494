"""What differs between tasks: the model's arguments, the datasets, the training loss and the evaluation.

The training loop (``train.py``) asks ``get_task(get_preset(cfg.model).task)`` for these and stays the
same for every task. Only action recognition is implemented; a retrieval task (text-video pairs,
symmetric InfoNCE, recall@k) plugs in by adding a class with the same four methods to ``TASKS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models import create_model
from .config import TrainConfig
from .distributed import DistInfo
from .evaluate import Predictions, classification_metrics, gather_predictions


def mixup(video: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each clip with another of the batch: returns (mixed video, partner permutation, weight lambda)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(video.shape[0], device=video.device)
    return lam * video + (1.0 - lam) * video[perm], perm, lam


class RecognitionTask:
    """Action recognition: cross-entropy with label smoothing (and optional mixup), multi-view top-k."""

    name = "recognition"

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return create_model(
            cfg.model, num_classes=cfg.num_classes, num_frames=cfg.frames, pretrained=cfg.pretrained,
            image_size=cfg.image_size, **cfg.model_overrides,
        )

    def build_dataset(self, cfg: TrainConfig, train: bool, list_file: str | Path | None = None) -> Dataset:
        """``VideoClipDataset`` for training (augmented, repeated) or testing (crops x clips views)."""
        from ..data import AugmentConfig, VideoClipDataset

        list_file = list_file or (cfg.train_list if train else cfg.val_list)
        if list_file is None:
            raise ValueError(f"no {'train' if train else 'val'}_list given")
        common = dict(
            num_frames=cfg.frames, train=train, image_size=cfg.image_size, sampling=cfg.sampling,
            frame_interval=cfg.frame_interval, bad_sample_policy=cfg.bad_sample_policy,
            frames_template=cfg.frames_template, seed=cfg.seed, augment=AugmentConfig(**cfg.augment),
        )  # the augment config also holds the normalisation used at test time
        if train:
            return VideoClipDataset(list_file, cfg.data_root, repeated_aug=cfg.repeated_aug, **common)
        return VideoClipDataset(list_file, cfg.data_root, num_clips=cfg.test_clips, num_crops=cfg.test_crops,
                                test_short_side=cfg.test_short_side, **common)

    def loss(self, model: nn.Module, batch: dict[str, Any], cfg: TrainConfig, device: torch.device):
        """Mean loss over the batch's clips and the number of clips: ``video`` is ``(B, R, 3, T, H, W)``."""
        video = batch["video"].to(device, non_blocking=True).flatten(0, 1)  # (B*R, 3, T, H, W)
        labels = batch["view_labels"].to(device).flatten()  # (B*R,): a flip may swap a view's label
        if cfg.mixup_alpha > 0:
            video, perm, lam = mixup(video, cfg.mixup_alpha)
            logits = model(video).float()  # (B*R, C)
            loss = lam * F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing) + (
                1.0 - lam
            ) * F.cross_entropy(logits, labels[perm], label_smoothing=cfg.label_smoothing)
        else:
            logits = model(video).float()  # (B*R, C)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        return loss, video.shape[0]

    def evaluate(
        self, model: nn.Module, loader: DataLoader, cfg: TrainConfig, info: DistInfo, progress: bool = False
    ) -> tuple[dict[str, Any], Predictions]:
        preds = gather_predictions(
            model, loader, info, cfg.eval_chunk, amp=cfg.amp, amp_dtype=getattr(torch, cfg.amp_dtype),
            progress=progress,
        )
        return classification_metrics(preds.probs, preds.labels), preds


TASKS: dict[str, type] = {"recognition": RecognitionTask}


def get_task(name: str) -> Any:
    if name not in TASKS:
        raise NotImplementedError(f"task {name!r} is not supported by the training engine yet; "
                                  f"supported: {sorted(TASKS)}")
    return TASKS[name]()
