"""Side4Video: a spatial-temporal side network beside a frozen image ViT.

The ViT runs under ``torch.no_grad()``: none of its activations are kept for backward and no
gradient flows through it. A light network of ``l`` blocks of width ``d`` reads the ViT's
intermediate tokens (multi-level features) and alone is trained.

Layout of the side network as the authors' released code computes it (channel-last throughout,
``x`` is ``(B, T, N, d)``)::

    s_0     = BN3d(Conv3d_(3,p,p)(video))                       stem, no [CLS]
    z_k     = Linear_D->d(LN_D(Z^{tap k}))                      down-projection of ViT layer tap_k
    s_in    = 0.5 s_out + 0.5 z_k[patches]                      fusion on patch tokens (paper eq. 2: sum)
    x       = x + PW2(DW_t(PW1(BN3d(x))))                        temporal: depthwise-separable conv
    h       = LN([shift(z_k[cls]); x + pos])                     one LayerNorm over 1 + N tokens
    x       = x + Attn(q=h[patches], kv=h)                       [CLS]-shift attention
    x       = x + MLP(BN3d(x))
    logits  = Linear(dropout(GAP_{T,H,W}(BN3d(x))))

Paper-text variants are options: ``fusion="sum"``; ``cls_attn_norm="paper"`` (queries and keys
``LN(x) + pos``, the shifted [CLS] un-normalised). The post-norm variant (the EVA-CLIP E/14 code)
moves each norm after its part (``x + BN(conv(x))``, ``x + LN(attn([cls; x + pos]))``,
``x + BN(mlp(x))``), projects down with ``LN_d(Linear(Z))`` (``down_norm="post"``), pools without
BN (``head_norm=False``) and checkpoints each part's activations. Initialisation follows the
released code of each variant (:meth:`SideNetwork.reset_parameters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backbones.vit import Attention, VisionConfig, VisionTransformer
from .common import ClassifierConfig, VideoConfig, VideoModel, fold_frames
from .layers import layer_norm_linear, linear_gelu_linear


@dataclass(frozen=True)
class SideConfig(VideoConfig):
    """The side network's fields, shared by the recognition and the retrieval configs."""

    side_layers: int = 12
    side_width: int = 320
    head_width: int = 64  # attention heads = side_width // head_width
    mlp_ratio: float = 4.0
    taps: Literal["interval", "top"] = "interval"  # which ViT layers feed a shallower side network
    fusion: Literal["sum", "avg"] = "avg"  # released code: 0.5/0.5 average; paper eq. (2): sum
    cls_attn_norm: Literal["released", "paper"] = "released"  # LN([cls; x + pos]) / LN(x) + pos, raw cls
    down_norm: Literal["pre", "post"] = "pre"  # paper: Linear(LN(Z)); EVA code: LN(Linear(Z))
    cls_shift: bool = True
    post_norm: bool = False  # E/14 variant
    checkpoint_parts: bool = False  # activation checkpointing of each part of every side block
    fused_down_projection: bool = True  # keep only the ViT tokens for the down-projection's backward
    fused_mlp: bool = True  # recompute the side MLP's GELU in backward instead of keeping its output


@dataclass(frozen=True)
class Side4VideoConfig(SideConfig, ClassifierConfig):
    """Side4Video for recognition: the side network and a classifier head."""

    dropout: float = 0.0  # before the classifier's Linear: drop_fc 0 in every released config
    head_norm: bool = True  # BN3d before pooling (the released E/14 code has none)


def tap_indices(side_layers: int, vit_layers: int, mode: str = "interval") -> list[int]:
    """0-based ViT block indices read by each side block.

    ``interval``: every (L/l)-th layer, i.e. layers 2, 4, ..., L counting from 1 when l = L/2;
    ``top``: the last l layers. With l = L both are every layer.
    """
    if side_layers > vit_layers:
        raise ValueError(f"side network of {side_layers} blocks is deeper than the {vit_layers}-block ViT")
    if mode == "interval":
        if vit_layers % side_layers:
            raise ValueError(f"interval taps need {vit_layers} ViT layers to be a multiple of {side_layers}")
        step = vit_layers // side_layers
        return [step * (k + 1) - 1 for k in range(side_layers)]
    if mode == "top":
        return list(range(vit_layers - side_layers, vit_layers))
    raise ValueError(f"unknown tap mode {mode!r}; expected 'interval' or 'top'")


def shift_cls(cls: torch.Tensor) -> torch.Tensor:
    """Shift [CLS] channels across frames: ``(B, T, d) -> (B, T, d)``.

    The first half of the channels at frame t comes from frame t+1, the second half from t-1;
    positions with no such neighbour are zero. Every channel moves.
    """
    half = cls.shape[-1] // 2
    forward = F.pad(cls[:, 1:, :half], (0, 0, 0, 1))  # frame t <- t+1, zero at t = T-1
    backward = F.pad(cls[:, :-1, half:], (0, 0, 1, 0))  # frame t <- t-1, zero at t = 0
    return torch.cat([forward, backward], dim=-1)


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm3d for channel-last tokens: statistics per channel over every other axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


class TemporalConv(nn.Module):
    """Depthwise-separable temporal convolution: PW 1x1x1 -> depthwise 3x1x1 -> PW 1x1x1."""

    def __init__(self, width: int, kernel: int = 3) -> None:
        super().__init__()
        self.pw1 = nn.Linear(width, width)  # a 1x1x1 convolution on channel-last tokens
        self.dw = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.pw2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        x = self.pw1(x)  # (B, T, N, d)
        x = x.permute(0, 2, 3, 1).reshape(b * n, d, t)  # (B*N, d, T)
        x = self.dw(x)
        x = x.reshape(b, n, d, t).permute(0, 3, 1, 2)  # (B, T, N, d)
        return self.pw2(x)


class ClsShiftAttention(Attention):
    """Spatial self-attention whose keys and values also see one extra token (the shifted ViT [CLS])."""

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape  # x: (B*T, N, d); extra: (B*T, 1, d)
        w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
        src = x if extra is None else torch.cat([extra, x], dim=1)  # (B*T, 1+N, d)
        q = F.linear(x, w_q, b_q).view(b, n, self.heads, -1).transpose(1, 2)  # (B*T, H, N, hd)
        kv = F.linear(src, w_kv, b_kv).view(b, src.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.attend(q, kv[0], kv[1])


class SideMlp(nn.Module):
    """Linear -> GELU -> Linear; ``fused`` recomputes the GELU in backward instead of keeping its output."""

    def __init__(self, width: int, hidden: int, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and torch.is_grad_enabled():
            return linear_gelu_linear(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(x)))


class SideBlock(nn.Module):
    """Temporal conv, [CLS]-shift attention and MLP, each a residual part (pre- or post-norm)."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, post_norm: bool, checkpoint_parts: bool,
        cls_attn_norm: str = "released", fused_mlp: bool = True,
    ) -> None:
        super().__init__()
        if cls_attn_norm not in ("released", "paper"):
            raise ValueError(f"cls_attn_norm must be 'released' or 'paper', got {cls_attn_norm!r}")
        self.post_norm = post_norm
        self.cls_attn_norm = cls_attn_norm
        self.checkpoint_parts = checkpoint_parts
        self.norm_temporal = ChannelBatchNorm(width)
        self.temporal = TemporalConv(width)
        self.norm_attn = nn.LayerNorm(width)
        self.attn = ClsShiftAttention(width, heads)
        self.norm_mlp = ChannelBatchNorm(width)
        self.mlp = SideMlp(width, int(width * mlp_ratio), fused_mlp)

    def _temporal(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            return self.norm_temporal(self.temporal(x))
        return self.temporal(self.norm_temporal(x))

    def _attention(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        cls = cls[:, :, None]  # (B, T, 1, d)
        if self.post_norm:  # queries x + pos, keys/values [cls; x + pos], LN after
            h = torch.cat([cls, x + pos], dim=2)
        elif self.cls_attn_norm == "released":  # one LN over [cls; x + pos]
            h = self.norm_attn(torch.cat([cls, x + pos], dim=2))
        else:  # paper text: LN(x) + pos, the shifted cls as it comes
            h = torch.cat([cls, self.norm_attn(x) + pos], dim=2)
        h = h.reshape(b * t, 1 + n, d)  # (B*T, 1+N, d)
        h = self.attn(h[:, 1:], h[:, :1]).view(b, t, n, d)
        return self.norm_attn(h) if self.post_norm else h

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            return self.norm_mlp(self.mlp(x))
        return self.mlp(self.norm_mlp(x))

    def _part(self, fn, *args: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_parts and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x: (B, T, N, d); cls: (B, T, d); pos: (N, d)
        x = x + self._part(self._temporal, x)
        x = x + self._part(self._attention, x, cls, pos)
        return x + self._part(self._mlp, x)


class DownProjection(nn.Module):
    """ViT width D -> side width d, on [CLS] and patch tokens: Linear(LN(Z)) or LN(Linear(Z)).

    With ``fused`` the pre-norm form keeps only the ViT tokens ``Z`` for backward, in the dtype the
    backbone gave them (``layer_norm_linear``), instead of ``Z`` in the side network's dtype and LN(Z).
    """

    def __init__(self, vit_width: int, width: int, norm: str = "pre", fused: bool = True) -> None:
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"down_norm must be 'pre' or 'post', got {norm!r}")
        self.norm_first = norm == "pre"
        self.fused = fused
        self.norm = nn.LayerNorm(vit_width if self.norm_first else width)
        self.proj = nn.Linear(vit_width, width)

    def forward(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``z (..., D)`` in the backbone's dtype -> ``(..., d)``; ``dtype``: the side network's."""
        if self.norm_first and self.fused:
            n = self.norm
            return layer_norm_linear(z, n.weight, n.bias, self.proj.weight, self.proj.bias, n.eps)
        z = z.to(dtype)
        return self.proj(self.norm(z)) if self.norm_first else self.norm(self.proj(z))


class RecognitionHead(nn.Module):
    """BN3d (or none) -> global average pool over T*H*W -> dropout -> Linear (PyTorch's default init)."""

    def __init__(self, width: int, num_classes: int, dropout: float, norm: bool = True) -> None:
        super().__init__()
        self.norm = ChannelBatchNorm(width) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).mean(dim=(1, 2))  # (B, T, N, d) -> (B, d)
        return self.fc(self.dropout(x))


class SideNetwork(nn.Module):
    """The side network: stem, one down-projection and one block per tapped ViT layer.

    ``forward(video, feats)`` takes the clip and the tapped ViT tokens (each ``(B*T, 1+N, D)``)
    and returns the side tokens ``(B, T, N, d)``; heads (recognition, retrieval) read them.
    """

    def __init__(self, cfg: SideConfig, vit: VisionConfig) -> None:
        super().__init__()
        d, p = cfg.side_width, vit.patch_size
        if d % cfg.head_width:
            raise ValueError(f"side width {d} is not a multiple of the head width {cfg.head_width}")
        self.fusion = cfg.fusion
        self.cls_shift = cfg.cls_shift
        self.post_norm = cfg.post_norm
        self.taps = tap_indices(cfg.side_layers, vit.layers, cfg.taps)
        self.stem = nn.Conv3d(3, d, kernel_size=(3, p, p), stride=(1, p, p), padding=(1, 0, 0))
        self.stem_norm = nn.BatchNorm3d(d)
        self.down = nn.ModuleList(
            DownProjection(vit.width, d, cfg.down_norm, cfg.fused_down_projection) for _ in self.taps
        )
        self.pos_embed = nn.Parameter(torch.empty(vit.num_patches, d))  # shared by all blocks
        self.blocks = nn.ModuleList(
            SideBlock(d, d // cfg.head_width, cfg.mlp_ratio, cfg.post_norm, cfg.checkpoint_parts, cfg.cls_attn_norm,
                      cfg.fused_mlp)
            for _ in self.taps
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The released code's initialisation.

        CLIP code (pre-norm): attention in_proj N(0, d^-1/2), out_proj and MLP fc2 N(0, d^-1/2 24^-1/2),
        MLP fc1 and the down-projection N(0, (2d)^-1/2), attention biases zero, position embedding
        N(0, 0.01). EVA code (post-norm): PyTorch's defaults everywhere, position embedding N(0, 0.02).
        Norms start at 1 / 0; everything else (convolutions, other biases) keeps PyTorch's defaults.
        """
        d = self.pos_embed.shape[1]
        nn.init.normal_(self.pos_embed, std=0.02 if self.post_norm else 0.01)
        for block in self.blocks:
            attn = block.attn
            if self.post_norm:  # separate q, k, v Linears with PyTorch's default init, packed
                bound = d**-0.5
                nn.init.uniform_(attn.in_proj_weight, -bound, bound)
                nn.init.uniform_(attn.in_proj_bias, -bound, bound)
                continue
            proj_std = d**-0.5 * 24**-0.5
            nn.init.normal_(attn.in_proj_weight, std=d**-0.5)
            nn.init.zeros_(attn.in_proj_bias)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(attn.out_proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * d) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        if not self.post_norm:
            for down in self.down:
                nn.init.normal_(down.proj.weight, std=(2 * d) ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for block in self.blocks:
            block.checkpoint_parts = enable

    def forward(self, video: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        b, _, t, _, _ = video.shape
        x = self.stem_norm(self.stem(video))  # (B, d, T, h, w)
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T, N, d)
        n, d = x.shape[2], x.shape[3]
        for down, block, z in zip(self.down, self.blocks, feats, strict=True):
            z = down(z, x.dtype).view(b, t, n + 1, d)  # (B, T, 1+N, d)
            patches = z[:, :, 1:]
            x = x + patches if self.fusion == "sum" else 0.5 * x + 0.5 * patches
            cls = shift_cls(z[:, :, 0]) if self.cls_shift else z[:, :, 0]  # (B, T, d)
            x = block(x, cls, self.pos_embed)
        return x


class SideModel(VideoModel):
    """A frozen ViT run without autograd, and a :class:`SideNetwork` reading its tapped layers."""

    def __init__(self, cfg: SideConfig, backbone: VisionTransformer | None) -> None:
        super().__init__(cfg, backbone, frozen=True, no_grad_backbone=True)
        self.side = SideNetwork(cfg, self.backbone.cfg)

    def backbone_features(self, video: torch.Tensor) -> list[torch.Tensor]:
        """The tapped ViT tokens, each ``(B*T, 1+N, D)``, computed without autograd and kept in the dtype of
        the frozen weights (bf16 on CUDA by default: under autocast the residual stream is float32)."""
        return self.run_backbone(self.backbone.forward_intermediates, fold_frames(video), self.side.taps,
                                 video.shape[2], dtype=self.backbone.conv1.weight.dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint each part of every side block (the frozen ViT keeps nothing for backward anyway)."""
        self.side.set_grad_checkpointing(enable)


class Side4Video(SideModel):
    """Side4Video for action recognition. Input: a normalised clip ``(B, 3, T, H, W)``; output: logits."""

    def __init__(self, cfg: Side4VideoConfig, backbone: VisionTransformer | None = None) -> None:
        super().__init__(cfg, backbone)
        self.head = RecognitionHead(cfg.side_width, cfg.num_classes, cfg.dropout, cfg.head_norm)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Side tokens ``(B, T, N, d)``."""
        return self.side(video, self.backbone_features(video))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))  # (B, num_classes)
