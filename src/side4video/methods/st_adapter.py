"""ST-Adapter: depthwise 3D-convolution bottlenecks on the residual stream of a frozen ViT.

Each adapter sits on the residual stream before a block's LayerNorm (before the MLP: the
released K400 model; before MHSA: the paper's default; or both: the released SSv2 model) and acts
on patch tokens only; [CLS] passes through::

    x[patches] = x[patches] + Up(act(DWConv3d(Down(x[patches]))))     tokens as (B, C, T, h, w)

``act`` is the identity in the released code (the paper writes GELU: ``activation="gelu"``).
The conv weight and bias and both Linear biases start at zero, so every adapter is the
identity at initialisation. The ViT (all norms, embeddings, ``ln_post``) is frozen but stays in
the autograd graph: gradients flow through it to the adapters below, which is this method's
memory cost. Head (released code): ``ln_post`` of the frame-averaged [CLS] -> dropout -> Linear
(``pool="norm_then_mean"``: the mean of per-frame ``ln_post([CLS])``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..backbones.vit import VisionTransformer
from .baselines import FrameMeanClassifier
from .common import ClassifierConfig


class STAdapter(nn.Module):
    """``x + Up(act(DWConv3d(Down(x))))`` on patch tokens, called as ``adapter(x, num_frames)``."""

    def __init__(
        self,
        width: int,
        bottleneck: int,
        kernel: tuple[int, int, int] = (3, 1, 1),
        activation: Literal["gelu", "none"] = "gelu",
    ) -> None:
        super().__init__()
        if activation not in ("gelu", "none"):
            raise ValueError(f"ST-Adapter activation must be 'gelu' or 'none', got {activation!r}")
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"ST-Adapter kernel {tuple(kernel)} must have odd sizes to keep the token grid")
        self.down = nn.Linear(width, bottleneck)
        self.conv = nn.Conv3d(
            bottleneck, bottleneck, tuple(kernel), padding=tuple(k // 2 for k in kernel), groups=bottleneck
        )
        self.act = nn.GELU() if activation == "gelu" else nn.Identity()
        self.up = nn.Linear(bottleneck, width)
        for zero in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(zero)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt, n, _ = x.shape  # (B*T, 1+N, D)
        grid = math.isqrt(n - 1)
        if grid * grid != n - 1:
            raise ValueError(f"ST-Adapter needs a square patch grid, got {n - 1} patch tokens")
        b = bt // num_frames
        z = self.down(x[:, 1:])  # (B*T, N, C)
        c = z.shape[-1]
        z = z.view(b, num_frames, grid, grid, c).permute(0, 4, 1, 2, 3)  # (B, C, T, h, w)
        z = self.act(self.conv(z))
        z = z.permute(0, 2, 3, 4, 1).reshape(bt, n - 1, c)  # (B*T, N, C)
        return torch.cat([x[:, :1], x[:, 1:] + self.up(z)], dim=1)


@dataclass(frozen=True)
class STAdapterConfig(ClassifierConfig):
    bottleneck: int = 384
    kernel: tuple[int, int, int] = (3, 1, 1)  # both released models; the paper's ablation default is 3x3x3
    activation: Literal["gelu", "none"] = "none"  # released code: none; paper: GELU after the conv
    # Before the MLP (released K400 model), before MHSA (paper default) or both (released SSv2 model).
    placement: Literal["mlp", "attn", "attn+mlp"] = "mlp"
    pool: Literal["mean_then_norm", "norm_then_mean"] = "mean_then_norm"  # released: ln_post(mean_t CLS)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", tuple(self.kernel))  # JSON gives a list
        if self.placement not in ("mlp", "attn", "attn+mlp"):
            raise ValueError(
                f"STAdapterConfig.placement must be 'mlp', 'attn' or 'attn+mlp', got {self.placement!r}"
            )


class STAdapterModel(FrameMeanClassifier):
    """Frozen CLIP ViT with ST-Adapters; only the adapters and the head train."""

    def __init__(self, cfg: STAdapterConfig, backbone: VisionTransformer | None = None) -> None:
        # frozen, but gradients flow through it
        super().__init__(cfg, backbone, norm_after_mean=cfg.pool == "mean_then_norm", frozen=True)
        vit = self.backbone
        for block in vit.blocks:
            if cfg.placement in ("attn", "attn+mlp"):
                block.stream_pre_attn = self._adapter(cfg, vit.width)
            if cfg.placement in ("mlp", "attn+mlp"):
                block.stream_pre_mlp = self._adapter(cfg, vit.width)

    @staticmethod
    def _adapter(cfg: STAdapterConfig, width: int) -> STAdapter:
        return STAdapter(width, cfg.bottleneck, cfg.kernel, cfg.activation)
