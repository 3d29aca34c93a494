"""Plain baselines on a CLIP ViT, and the frame-mean classifier they share with ST-Adapter and ZeroI2V.

Every model here runs the ViT on the frames of a clip (folded into the batch), takes the
[CLS] token after ``ln_post`` (width D, not ``proj``) and averages it over frames::

    f      = mean_t ln_post(ViT(frame_t)[CLS])          (B, D)
    logits = Linear(dropout(f))

* ``FrozenMeanP``: the ViT is frozen and run under ``torch.no_grad()`` (a linear probe).
* ``FullFinetune``: every ViT weight trains (optionally with activation checkpointing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.vit import VisionTransformer
from .common import ClassifierConfig, VideoModel, fold_frames, unfold_frames


class FrameMeanHead(nn.Module):
    """Dropout then Linear on frame-averaged features, weight init N(0, 0.02), zero bias."""

    def __init__(self, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))  # (B, D) -> (B, num_classes)


class FrameMeanClassifier(VideoModel):
    """A ViT run per frame, mean of ``ln_post([CLS])`` over frames, :class:`FrameMeanHead`.

    Subclasses decide what trains and how the ViT is modified (adapters at its injection points,
    another attention layer ...); ``grad_checkpointing`` in their config recomputes ViT blocks.
    ``norm_after_mean``: ``ln_post`` of the frame-averaged [CLS] instead (ST-Adapter's released head).
    """

    def __init__(
        self, cfg: ClassifierConfig, backbone: VisionTransformer | None, norm_after_mean: bool = False, **kw
    ) -> None:
        super().__init__(cfg, backbone, **kw)
        self.norm_after_mean = norm_after_mean
        self.head = FrameMeanHead(self.backbone.width, cfg.num_classes, cfg.dropout)
        self.set_grad_checkpointing(getattr(cfg, "grad_checkpointing", False))

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Frame-averaged ``ln_post([CLS])``: ``(B, 3, T, H, W) -> (B, D)``."""
        t = video.shape[2]
        tokens = self.run_backbone(self.backbone.forward_features, fold_frames(video), t)  # (B*T, 1+N, D)
        cls = unfold_frames(tokens[:, 0], t)  # (B, T, D)
        if self.norm_after_mean:
            return self.backbone.ln_post(cls.mean(dim=1))  # (B, D)
        return self.backbone.ln_post(cls).mean(dim=1)  # (B, D)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))


@dataclass(frozen=True)
class FrozenMeanPConfig(ClassifierConfig):
    pass


class FrozenMeanP(FrameMeanClassifier):
    """Linear probe: frozen ViT under ``no_grad``, only the head trains."""

    def __init__(self, cfg: FrozenMeanPConfig, backbone: VisionTransformer | None = None) -> None:
        super().__init__(cfg, backbone, frozen=True, no_grad_backbone=True)


@dataclass(frozen=True)
class FullFinetuneConfig(ClassifierConfig):
    grad_checkpointing: bool = False  # recompute each ViT block in backward instead of storing it


class FullFinetune(FrameMeanClassifier):
    """Every ViT weight and the head train.

    ``proj`` (and EVA's ``proj_bias``) are not used by the classifier: they are frozen so that
    optimisers and DDP never see parameters that get no gradient.
    """

    def __init__(self, cfg: FullFinetuneConfig, backbone: VisionTransformer | None = None) -> None:
        super().__init__(cfg, backbone, frozen=False)
        for p in (self.backbone.proj, self.backbone.proj_bias):
            if p is not None:
                p.requires_grad_(False)
