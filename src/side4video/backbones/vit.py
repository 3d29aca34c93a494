"""One CLIP-style Vision Transformer for OpenAI CLIP (pre-norm, QuickGELU) and EVA-CLIP (post-norm, GELU).

Parameter names follow OpenAI's CLIP ``visual`` tower (``conv1``, ``class_embedding``,
``transformer.resblocks.{i}.attn.in_proj_weight``, ``ln_post``, ``proj`` ...), so OpenAI and
open_clip weights load without remapping. Adapter methods change the network by swapping a
component (``block_fn`` / ``attn_layer`` / ``mlp_layer``) or by setting one of the block's
injection points, never by copying this file.

Video models run the ViT on frames folded into the batch: ``(B*T, 3, H, W)``. Every block and
hook receives ``num_frames`` (T) so that temporal components can unfold the batch again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class VisionConfig:
    """Architecture of a CLIP image tower."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int = 224
    output_dim: int | None = 512  # width of ``proj``; None: no projection
    post_norm: bool = False  # EVA-CLIP bigE: x + LN(f(x)) instead of x + f(LN(x))
    act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    ln_eps: float = 1e-5
    patch_bias: bool = False  # EVA's patch embedding has a bias, OpenAI's has none
    ln_pre: bool = True  # EVA has no LayerNorm before the blocks
    proj_bias: bool = False  # EVA's ``head`` is a Linear with bias

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def with_image_size(self, image_size: int) -> VisionConfig:
        return replace(self, image_size=image_size)


VIT_B_32 = VisionConfig(width=768, layers=12, heads=12, mlp_dim=3072, patch_size=32, output_dim=512)
VIT_B_16 = VisionConfig(width=768, layers=12, heads=12, mlp_dim=3072, patch_size=16, output_dim=512)
VIT_L_14 = VisionConfig(width=1024, layers=24, heads=16, mlp_dim=4096, patch_size=14, output_dim=768)
EVA02_E_14 = VisionConfig(
    width=1792, layers=64, heads=16, mlp_dim=15360, patch_size=14, output_dim=1024,
    post_norm=True, act="gelu", ln_eps=1e-6, patch_bias=True, ln_pre=False, proj_bias=True,
)
VIT_TINY = VisionConfig(width=256, layers=4, heads=4, mlp_dim=1024, patch_size=16, image_size=112, output_dim=128)
VIT_TINY_EVA = dataclasses.replace(  # the tiny test ViT in EVA-CLIP bigE's layout (post-norm, GELU, biases)
    VIT_TINY, post_norm=True, act="gelu", ln_eps=1e-6, patch_bias=True, ln_pre=False, proj_bias=True
)

BACKBONES: dict[str, VisionConfig] = {
    "ViT-B-32": VIT_B_32,
    "ViT-B-16": VIT_B_16,
    "ViT-L-14": VIT_L_14,
    "EVA02-E-14": EVA02_E_14,
    "tiny": VIT_TINY,
    "tiny-eva": VIT_TINY_EVA,
}


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; expected 'quick_gelu' or 'gelu'")


class Attention(nn.Module):
    """Multi-head self-attention with the packed projection of ``nn.MultiheadAttention``.

    Split into ``project_qkv`` and ``attend`` so that a variant (e.g. ZeroI2V's STDHA)
    can rearrange keys and values between the two without rewriting either.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, hd)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, n, hd = q.shape
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * hd))

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return self.attend(*self.project_qkv(x))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.act = make_activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


Hook = nn.Module  # called as hook(x, num_frames) -> x


class ResidualAttentionBlock(nn.Module):
    """Transformer block, pre-norm (CLIP) or post-norm (EVA-CLIP bigE).

    Injection points, all ``None`` by default and each called as ``hook(x, num_frames)``:

    * ``stream_pre_attn`` / ``stream_pre_mlp``: on the residual stream, before a sub-layer
      (ST-Adapter's placement);
    * ``attn_in`` / ``attn_out`` / ``mlp_in`` / ``mlp_out``: inside the residual branch, on
      the sub-layer's input (after the pre-norm) and output (ZeroI2V's placement).
    """

    def __init__(
        self,
        cfg: VisionConfig,
        attn_layer: Callable[[int, int], nn.Module] = Attention,
        mlp_layer: Callable[[int, int, str], nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        self.post_norm = cfg.post_norm
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = attn_layer(cfg.width, cfg.heads)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = mlp_layer(cfg.width, cfg.mlp_dim, cfg.act)
        self.stream_pre_attn: Hook | None = None
        self.attn_in: Hook | None = None
        self.attn_out: Hook | None = None
        self.stream_pre_mlp: Hook | None = None
        self.mlp_in: Hook | None = None
        self.mlp_out: Hook | None = None

    @staticmethod
    def _hook(hook: Hook | None, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return x if hook is None else hook(x, num_frames)

    def _attn_branch(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self._hook(self.attn_in, x, num_frames)
        return self._hook(self.attn_out, self.attn(x, num_frames), num_frames)

    def _mlp_branch(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self._hook(self.mlp_in, x, num_frames)
        return self._hook(self.mlp_out, self.mlp(x), num_frames)

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        x = self._hook(self.stream_pre_attn, x, num_frames)
        if self.post_norm:
            x = x + self.ln_1(self._attn_branch(x, num_frames))
        else:
            x = x + self._attn_branch(self.ln_1(x), num_frames)
        x = self._hook(self.stream_pre_mlp, x, num_frames)
        if self.post_norm:
            return x + self.ln_2(self._mlp_branch(x, num_frames))
        return x + self._mlp_branch(self.ln_2(x), num_frames)


class Transformer(nn.Module):
    def __init__(self, cfg: VisionConfig, block_fn: Callable[..., nn.Module], **block_kwargs) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([block_fn(cfg, **block_kwargs) for _ in range(cfg.layers)])


def resize_pos_embed(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubically resample a ``(1 + g*g, D)`` positional embedding to ``(1 + new_grid**2, D)``."""
    cls, grid = pos[:1], pos[1:]
    old = math.isqrt(grid.shape[0])
    if old * old != grid.shape[0]:
        raise ValueError(f"positional embedding has {grid.shape[0]} patch positions, not a square grid")
    if old == new_grid:
        return pos
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


class VisionTransformer(nn.Module):
    """CLIP image tower. Input ``(B, 3, H, W)``, normalised with CLIP's mean and std."""

    def __init__(
        self,
        cfg: VisionConfig,
        block_fn: Callable[..., nn.Module] = ResidualAttentionBlock,
        attn_layer: Callable[[int, int], nn.Module] = Attention,
        mlp_layer: Callable[[int, int, str], nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.conv1 = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.randn(d) * d**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.num_patches + 1, d) * d**-0.5)
        self.ln_pre = nn.LayerNorm(d, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        self.transformer = Transformer(cfg, block_fn, attn_layer=attn_layer, mlp_layer=mlp_layer)
        self.ln_post = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.proj = nn.Parameter(torch.randn(d, cfg.output_dim) * d**-0.5) if cfg.output_dim else None
        self.proj_bias = nn.Parameter(torch.zeros(cfg.output_dim)) if cfg.output_dim and cfg.proj_bias else None
        # Called as hook(tokens, num_frames) after the positional embedding (ZeroI2V's temporal embedding).
        self.embed_hook: Hook | None = None
        self.grad_checkpointing = False

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    @property
    def width(self) -> int:
        return self.cfg.width

    def embed(self, images: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Patch embedding, [CLS], positions, ``ln_pre``: ``(B, 3, H, W) -> (B, 1+N, D)``."""
        x = self.conv1(images)  # (B, D, h, w)
        b, d, h, w = x.shape
        if h * w != self.cfg.num_patches:
            raise ValueError(
                f"input {images.shape[-2]}x{images.shape[-1]} gives a {h}x{w} patch grid but the model "
                f"was built for {self.cfg.image_size}x{self.cfg.image_size}; load it with image_size="
                f"{images.shape[-1]} to interpolate the positional embedding"
            )
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_embedding.to(x.dtype).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+N, D)
        if self.embed_hook is not None:
            x = self.embed_hook(x, num_frames)
        return self.ln_pre(x)

    def _run_block(self, block: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, num_frames, use_reentrant=False)
        return block(x, num_frames)

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: Sequence[int] | None = None,
        num_frames: int = 1,
        stop_early: bool = True,
        dtype: torch.dtype | None = None,
    ) -> list[torch.Tensor]:
        """Output tokens ``(B, 1+N, D)`` (CLS first) of the blocks in ``indices``.

        ``indices`` are 0-based block indices (default: every block). With ``stop_early`` the
        blocks after the last requested one are not run. ``dtype`` casts each output as it is taken
        (the residual stream keeps its own dtype), so that only the cast copies stay alive.
        """
        n = len(self.blocks)
        wanted = list(range(n)) if indices is None else [i if i >= 0 else n + i for i in indices]
        bad = [i for i in wanted if not 0 <= i < n]
        if bad:
            raise IndexError(f"block indices {bad} out of range for a {n}-block ViT")
        keep = set(wanted)
        last = max(wanted) if stop_early and wanted else n - 1
        x = self.embed(images, num_frames)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self._run_block(block, x, num_frames)
            if i in keep:
                outputs[i] = x if dtype is None else x.to(dtype)
        return [outputs[i] for i in wanted]

    def forward_features(self, images: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Tokens after the last block, ``(B, 1+N, D)``, before ``ln_post``."""
        return self.forward_intermediates(images, indices=[-1], num_frames=num_frames)[0]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's head on the [CLS] token: ``ln_post`` then ``proj``: ``(..., 1+N, D) -> (..., E)``."""
        return self.project(self.ln_post(tokens[..., 0, :]))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return x
        x = x @ self.proj.to(x.dtype)
        return x if self.proj_bias is None else x + self.proj_bias.to(x.dtype)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding ``(B, E)``."""
        return self.pool(self.forward_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` (its train/eval mode is unchanged)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def build_vit(
    cfg: VisionConfig | str,
    image_size: int | None = None,
    **kwargs,
) -> VisionTransformer:
    """A randomly initialised ViT from a config or a backbone name (``ViT-B-16``, ``tiny`` ...)."""
    if isinstance(cfg, str):
        if cfg not in BACKBONES:
            raise KeyError(f"unknown backbone {cfg!r}; choose from {sorted(BACKBONES)}")
        cfg = BACKBONES[cfg]
    if image_size is not None:
        cfg = cfg.with_image_size(image_size)
    return VisionTransformer(cfg, **kwargs)
