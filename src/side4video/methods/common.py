"""What every video model here shares: its config base, the backbone it wraps, frame folding.

* ``VideoConfig`` / ``ClassifierConfig``: the fields every preset has (backbone name, frames) and
  those of every classifier (classes, head dropout); each method's config extends one of them.
* ``VideoModel``: holds ``cfg`` and ``backbone`` (taken as given or built from ``cfg.backbone``),
  freezes the backbone when asked to (one call: :func:`freeze`), keeps a backbone that runs
  without autograd in eval mode while the rest trains, and offers ``set_grad_checkpointing`` and
  the optimiser hook ``no_weight_decay()`` (names of parameters never decayed, timm-style).
* ``fold_frames`` / ``unfold_frames``: a clip ``(B, 3, T, H, W)`` as ``B*T`` images and back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..backbones.vit import VisionTransformer, build_vit, freeze


@dataclass(frozen=True)
class VideoConfig:
    backbone: str = "ViT-B-16"
    num_frames: int = 8
    autocast_backbone: bool = True  # bf16 autocast for a backbone run without autograd, on CUDA
    # dtype of the frozen weights of a backbone run without autograd: auto = bfloat16 on CUDA (where it
    # runs in bf16 anyway: no per-step casts, half the memory), float32 elsewhere
    backbone_dtype: Literal["auto", "float32", "bfloat16"] = "auto"


@dataclass(frozen=True)
class ClassifierConfig(VideoConfig):
    num_classes: int = 400
    dropout: float = 0.5  # before the classifier's Linear


def fold_frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W) -> (B*T, 3, H, W)``, frames of a clip consecutive."""
    if video.ndim != 5:
        raise ValueError(f"expected a clip (B, 3, T, H, W), got shape {tuple(video.shape)}")
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def unfold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(B*T, ...) -> (B, T, ...)``."""
    return x.view(x.shape[0] // num_frames, num_frames, *x.shape[1:])


def autocast_context(device: torch.device, enabled: bool = True, dtype: torch.dtype = torch.bfloat16):
    """Autocast to ``dtype`` on CUDA when ``enabled``; nothing on other devices (CPU runs in float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class VideoModel(nn.Module):
    """Base of every model: ``cfg``, ``backbone`` and how the backbone is treated in training.

    ``frozen``: every backbone parameter stops requiring gradients. ``no_grad_backbone``: the
    backbone also runs without autograd (see :meth:`run_backbone`), so nothing of it is kept for
    backward and it stays in eval mode while the model trains. Methods with modules inside the
    backbone (adapters) freeze it but keep it in the graph (``no_grad_backbone=False``).
    """

    def __init__(
        self,
        cfg: VideoConfig,
        backbone: VisionTransformer | None,
        *,
        frozen: bool = True,
        no_grad_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_vit(cfg.backbone)
        if frozen:
            freeze(self.backbone)
        self.no_grad_backbone = no_grad_backbone

    def run_backbone(self, fn, frames: torch.Tensor, *args, **kwargs):
        """``fn(frames, *args, **kwargs)``; without autograd (and in bf16 on CUDA) when the backbone is run so."""
        if not self.no_grad_backbone:
            return fn(frames, *args, **kwargs)
        autocast = self.cfg.autocast_backbone and frames.device.type == "cuda"
        if not autocast:  # run in the weights' dtype
            frames = frames.to(self.backbone.conv1.weight.dtype)
        with torch.no_grad(), autocast_context(frames.device, self.cfg.autocast_backbone):
            return fn(frames, *args, **kwargs)

    def keep_frozen_weights(self, device: torch.device | str) -> VideoModel:
        """Cast the frozen weights of a backbone run without autograd to ``cfg.backbone_dtype`` for training
        or inference on ``device`` (``auto``: bfloat16 on CUDA, float32 elsewhere). Trainable backbone
        parameters (e.g. a retrieval model's ``ln_post``) stay float32."""
        if self.no_grad_backbone:
            name = self.cfg.backbone_dtype
            if name == "auto":
                name = "bfloat16" if torch.device(device).type == "cuda" else "float32"
            for p in self.backbone.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(getattr(torch, name))
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ViT block in backward instead of storing its activations."""
        self.backbone.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of trainable parameters the optimiser must not decay, beyond its own rule."""
        return set()

    def lr_group(self, name: str) -> str:
        """The learning-rate group of parameter ``name``: ``"backbone"`` for the trainable parts inside the
        backbone (adapters, temporal embedding, ``ln_post``; ``backbone_lr_mult`` scales their rate), else
        ``"default"``."""
        return "backbone" if name.startswith("backbone.") else "default"

    def train(self, mode: bool = True) -> VideoModel:
        super().train(mode)
        if self.no_grad_backbone:
            self.backbone.eval()  # run without autograd: never in training mode
        return self
