"""Action recognition: cross-entropy (label smoothing, optional mixup) and multi-view top-k evaluation.

A test item holds at most ``eval_chunk`` of a video's ``crops x clips`` views (``VideoClipDataset`` with
``view_chunk``: only those views' frames are decoded), a batch ``(B, V, 3, T, H, W)``; the clips go
through the model ``eval_chunk`` at a time, so memory is bounded however many views are asked for. Views
are averaged as softmax probabilities: summed per (video, first view of the chunk) and averaged per video
once every rank's results are gathered; pairs seen twice (the padding a ``DistributedSampler`` adds) are
counted once. A non-finite model output is an error (``NonFiniteError``), never a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..methods.common import autocast_context
from ..metrics import classification_metrics, confusion_matrix
from .distributed import DistInfo, all_gather_objects, sharded_loader
from .tasks import NonFiniteError, NoReadableVideoError, Task

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class Predictions:
    """Per-video results, sorted by dataset index, each sample once."""

    index: np.ndarray  # (N,) dataset indices
    probs: np.ndarray  # (N, C) softmax probabilities averaged over views
    labels: np.ndarray  # (N,)
    bad: list  # BadSample reports seen while evaluating


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
    model: nn.Module, loader: DataLoader, info: DistInfo, cfg: TrainConfig, progress: bool = False
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
        with autocast_context(info.device, cfg.optim.amp, getattr(torch, cfg.optim.amp_dtype)):
            p = predict_views(model, video, cfg.eval.eval_chunk)  # (B, C)
        index.append(batch["index"].numpy())
        start.append(batch.get("view_start", torch.zeros_like(batch["index"])).numpy())
        sums.append(p.cpu().double().numpy() * video.shape[1])  # summed over this item's views
        counts.append(np.full(len(p), video.shape[1]))
        labels.append(batch["label"].numpy())
    local = [np.concatenate(x) if x else None for x in (index, start, sums, counts, labels)]
    shards = all_gather_objects((local, bad), info)
    all_bad = list({(b.path, b.reason): b for s in shards for b in s[1]}.values())  # a video's chunks: once
    parts = [s[0] for s in shards if s[0][0] is not None]
    if not parts:
        raise NoReadableVideoError(all_bad)
    idx, first, psum, count, lab = (np.concatenate([p[i] for p in parts]) for i in range(5))
    _, once = np.unique(np.stack([idx, first], axis=1), axis=0, return_index=True)  # padding counted once
    idx, psum, count, lab = idx[once], psum[once], count[once], lab[once]
    videos, slot = np.unique(idx, return_inverse=True)  # sorted video indices
    total = np.zeros((len(videos), psum.shape[1]))
    np.add.at(total, slot, psum)
    labels_of = np.zeros(len(videos), np.int64)
    labels_of[slot] = lab
    views = np.bincount(slot, weights=count, minlength=len(videos))  # (N,) views per video
    return Predictions(videos, (total / views[:, None]).astype(np.float32), labels_of, all_bad)


def mixup(video: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each clip with another of the batch: returns (mixed video, partner permutation, weight lambda)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(video.shape[0], device=video.device)
    return lam * video + (1.0 - lam) * video[perm], perm, lam


class RecognitionTask(Task):
    """Action recognition on ``VideoClipDataset`` lists (``path label`` lines)."""

    name = "recognition"
    metric = "top1"

    def model_kwargs(self, cfg: TrainConfig) -> dict[str, Any]:
        return {"num_classes": cfg.model.num_classes}

    def build_dataset(self, cfg: TrainConfig, model_cfg: Any, train: bool, list_file: str | Path | None = None
                      ) -> Dataset:
        """``VideoClipDataset`` for training (augmented, repeated) or testing (crops x clips views)."""
        from ..data import AugmentConfig, VideoClipDataset

        d, e = cfg.data, cfg.eval
        list_file = list_file or (d.train_list if train else d.val_list)
        if list_file is None:
            raise ValueError(f"no {'train' if train else 'val'}_list given")
        common = dict(
            num_frames=cfg.model.frames, train=train, image_size=cfg.model.image_size, sampling=d.sampling,
            frame_interval=d.frame_interval, bad_sample_policy=d.bad_sample_policy,
            frames_template=d.frames_template, decode_short_side=d.decode_short_side, seed=cfg.run.seed,
            augment=AugmentConfig(**d.augment),
            num_classes=cfg.model.num_classes,  # a label out of range: an error naming file and line
        )  # the augment config also holds the normalisation used at test time
        if train:
            return VideoClipDataset(list_file, d.data_root, repeated_aug=d.repeated_aug, **common)
        return VideoClipDataset(list_file, d.data_root, num_clips=e.test_clips, num_crops=e.test_crops,
                                test_resize=e.test_resize, test_position=e.test_segment_position,
                                view_chunk=e.eval_chunk, **common)

    def make_loader(self, dataset: Dataset, cfg: TrainConfig, info: DistInfo, train: bool) -> DataLoader:
        from ..data import collate_clips

        batch = cfg.optim.batch_size if train else (cfg.eval.eval_batch_size or cfg.optim.batch_size)
        return sharded_loader(dataset, info, batch, cfg.data.num_workers, cfg.run.seed, train, collate_clips)

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device, cfg: TrainConfig | None = None
             ) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's clips and the number of clips: ``video`` is ``(B, R, 3, T, H, W)``."""
        smoothing = cfg.optim.label_smoothing if cfg is not None else 0.0
        alpha = cfg.optim.mixup_alpha if cfg is not None else 0.0
        video = batch["video"].to(device, non_blocking=True).flatten(0, 1)  # (B*R, 3, T, H, W)
        labels = batch["view_labels"].to(device).flatten()  # (B*R,): a flip may swap a view's label
        if alpha > 0:
            video, perm, lam = mixup(video, alpha)
            logits = model(video).float()  # (B*R, C)
            loss = lam * F.cross_entropy(logits, labels, label_smoothing=smoothing) + (
                1.0 - lam
            ) * F.cross_entropy(logits, labels[perm], label_smoothing=smoothing)
        else:
            logits = model(video).float()  # (B*R, C)
            loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        return loss, video.shape[0]

    def example_batch(self, model: nn.Module, video: torch.Tensor) -> dict[str, Any]:
        """A training batch around ``video (B, 3, T, H, W)`` (one view each, label 0)."""
        labels = torch.zeros(video.shape[0], 1, dtype=torch.long, device=video.device)
        return {"video": video[:, None], "view_labels": labels}

    def encode(self, model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
        return model(clip)  # (B, C) logits

    def evaluate(
        self, model: nn.Module, loader: DataLoader, cfg: TrainConfig, info: DistInfo, progress: bool = False
    ) -> tuple[dict[str, Any], Predictions]:
        preds = gather_predictions(model, loader, info, cfg, progress=progress)
        return classification_metrics(preds.probs, preds.labels), preds

    def describe(self, metrics: dict[str, Any]) -> str:
        return (f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  "
                f"mean class acc {metrics['mean_class_acc']:.2f}")

    def summary(self, metrics: dict[str, Any], cfg: TrainConfig) -> str:
        return f"{metrics['num_samples']} videos, views {self.eval_settings(cfg)['views']} (crops x clips)"

    def eval_settings(self, cfg: TrainConfig) -> dict[str, Any]:
        return {"views": f"{cfg.eval.test_crops}x{cfg.eval.test_clips}"}

    def save_results(self, results: Predictions, cfg: TrainConfig, out_dir: Path) -> None:
        """``confusion.png`` when ``eval.confusion_matrix`` is set."""
        if cfg.eval.confusion_matrix:
            save_confusion(results, out_dir / "confusion.png", cfg.data.label_names)


def save_confusion(preds: Predictions, path: str | Path, label_names_file: str | None) -> None:
    """The confusion matrix of ``preds`` as a PNG, with the class names of ``label_names_file`` if given."""
    from ..data import read_label_names
    from ..plots import save_confusion_matrix

    cm = confusion_matrix(preds.probs, preds.labels, num_classes=preds.probs.shape[1]).numpy()
    names = read_label_names(label_names_file, preds.probs.shape[1]) if label_names_file else None
    save_confusion_matrix(cm, path, names)


RECOGNITION = RecognitionTask()
