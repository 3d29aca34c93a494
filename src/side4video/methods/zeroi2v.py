"""ZeroI2V: zero-cost image-to-video adaptation with STDHA and mergeable linear adapters.

* **STDHA** (spatial-temporal dual-headed attention): after the packed q/k/v projection, the
  keys and values of a head with offset ``dt`` at frame t come from frame t + dt (frames with
  no such neighbour keep their own; no wrap-around). Queries never move; [CLS] moves with the
  other tokens. No parameters are added.
* **Linear adapters** ``A(x) = x + s * up(down(x))`` (no activation, ``up`` zero-initialised),
  four per block, inside the residual branches: after ``ln_1`` (``attn_in``), after
  ``out_proj`` (``attn_out``), after ``ln_2`` (``mlp_in``), after ``c_proj`` (``mlp_out``).
* A ``T x D`` temporal embedding (zeros) added to every token after the positional embedding.

Trained: adapters, temporal embedding, ``ln_post``, head. Because each adapter is affine and
sits next to a Linear, :meth:`ZeroI2V.reparameterize` folds it into that Linear, with
``A(x) = Wa x + ba``, ``Wa = I + s W_up W_down``, ``ba = s (W_up b_down + b_up)``::

    adapter before Linear (W, b):  W' = W Wa,  b' = W ba + b
    adapter after  Linear (W, b):  W' = Wa W,  b' = Wa b + ba

The merged model is the same class with ``merged=True``: a plain ViT with STDHA, whose
inference cost equals the image model's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..backbones.vit import Attention, VisionTransformer, build_vit
from .baselines import FrameMeanClassifier
from .common import ClassifierConfig

# Paper Table 6: leading heads' offsets, in the table's order, by dataset -> heads -> frames
# (12 heads: ViT-B, 16 heads: ViT-L). The remaining heads are spatial (offset 0).
TABLE6_OFFSETS: dict[str, dict[int, dict[int, tuple[int, ...]]]] = {
    "k400": {
        12: {8: (1, -1), 16: (1, -1, 2), 32: (1, -1, 2, -2, 3)},
        16: {8: (1, 1, -1, -1), 16: (1, 1, -1, -1, 2), 32: (1, 1, -1, -1, 2, -2, 3)},
    },
    "ssv2": {
        12: {8: (1, -1), 16: (1, -1, 2, -2), 32: (1, -1, 2, -2, 3)},
        16: {8: (1, 1, -1, -1), 16: (1, 1, -1, -1, 2, 2, -2, -2), 32: (1, 1, -1, -1, 2, -2, 3)},
    },
}


def default_head_offsets(heads: int, num_frames: int, table: str = "k400") -> tuple[int, ...]:
    """Per-head offsets from paper Table 6, padded with spatial heads to ``heads`` entries.

    Frame counts between the table's rows use the row of the largest listed count not above
    ``num_frames`` (the 8-frame row below 8 frames).
    """
    if table not in TABLE6_OFFSETS:
        raise KeyError(f"unknown STDHA offset table {table!r}; choose from {sorted(TABLE6_OFFSETS)}")
    rows = TABLE6_OFFSETS[table].get(heads)
    if rows is None:
        raise ValueError(
            f"paper Table 6 has no STDHA offsets for a {heads}-head ViT (only {sorted(TABLE6_OFFSETS[table])});"
            " set ZeroI2VConfig.head_offsets"
        )
    listed = [f for f in sorted(rows) if f <= num_frames] or [min(rows)]
    return pad_offsets(rows[listed[-1]], heads)


def pad_offsets(offsets: tuple[int, ...], heads: int) -> tuple[int, ...]:
    if len(offsets) > heads:
        raise ValueError(f"{len(offsets)} STDHA head offsets given for a {heads}-head attention")
    return tuple(int(o) for o in offsets) + (0,) * (heads - len(offsets))


class STDHA(Attention):
    """Attention whose head i reads keys/values of frame ``t + offsets[i]`` (its own where none).

    Input ``(B*T, 1+N, D)`` with frames folded into the batch; same parameters as ``Attention``.
    """

    def __init__(self, width: int, heads: int, offsets: tuple[int, ...] = ()) -> None:
        super().__init__(width, heads)
        self.offsets = pad_offsets(tuple(offsets), heads)

    @classmethod
    def from_attention(cls, attn: Attention, offsets: tuple[int, ...]) -> STDHA:
        """An STDHA that shares ``attn``'s parameters."""
        with torch.device("meta"):
            new = cls(attn.out_proj.in_features, attn.heads, offsets)
        new.in_proj_weight, new.in_proj_bias, new.out_proj = attn.in_proj_weight, attn.in_proj_bias, attn.out_proj
        return new

    def source_frames(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """``src[t, h]``: the frame whose keys/values head h reads at frame t, ``(T, H)``."""
        t = torch.arange(num_frames, device=device)[:, None]  # (T, 1)
        src = t + torch.tensor(self.offsets, device=device)[None]  # (T, H)
        return torch.where((src >= 0) & (src < num_frames), src, t)

    def shift(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt, h, n, hd = x.shape  # (B*T, H, N, hd)
        x = x.view(bt // num_frames, num_frames, h, n, hd)  # (B, T, H, N, hd)
        src = self.source_frames(num_frames, x.device)
        x = x[:, src, torch.arange(h, device=x.device)]  # (B, T, H, N, hd)
        return x.reshape(bt, h, n, hd)

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        q, k, v = self.project_qkv(x)  # 3 x (B*T, H, N, hd)
        if any(self.offsets):
            k, v = self.shift(k, num_frames), self.shift(v, num_frames)
        return self.attend(q, k, v)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, offsets={self.offsets}"


class LinearAdapter(nn.Module):
    """``x + scale * up(down(x))``; ``up`` starts at zero so the adapter starts as the identity."""

    def __init__(self, width: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.xavier_uniform_(self.down.weight)
        for zero in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zero)

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return x + self.scale * self.up(self.down(x))

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Wa, ba)`` in float64 with ``A(x) = x @ Wa.T + ba``."""
        w_down, b_down, w_up, b_up = (p.double() for p in (self.down.weight, self.down.bias,
                                                           self.up.weight, self.up.bias))
        eye = torch.eye(w_up.shape[0], dtype=torch.float64, device=w_up.device)
        return eye + self.scale * w_up @ w_down, self.scale * (w_up @ b_down + b_up)


@torch.no_grad()
def fold_into_input(adapter: LinearAdapter, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """In place: Linear ``(weight, bias)`` applied after ``adapter`` becomes one Linear."""
    wa, ba = adapter.affine()
    w = weight.double()
    bias.copy_(w @ ba + bias.double())
    weight.copy_(w @ wa)


@torch.no_grad()
def fold_into_output(adapter: LinearAdapter, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """In place: ``adapter`` applied after Linear ``(weight, bias)`` becomes one Linear."""
    wa, ba = adapter.affine()
    bias.copy_(wa @ bias.double() + ba)
    weight.copy_(wa @ weight.double())


class TemporalEmbedding(nn.Module):
    """A learned ``(T, D)`` embedding added to every token of frame t, called as ``emb(x, num_frames)``."""

    def __init__(self, num_frames: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(num_frames, width))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if num_frames != self.embedding.shape[0]:
            raise ValueError(
                f"temporal embedding was built for {self.embedding.shape[0]} frames, got clips of {num_frames}"
            )
        bt, n, d = x.shape  # (B*T, 1+N, D)
        x = x.view(bt // num_frames, num_frames, n, d) + self.embedding.to(x.dtype)[:, None]  # (B, T, 1+N, D)
        return x.view(bt, n, d)


ADAPTER_POINTS = ("attn_in", "attn_out", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class ZeroI2VConfig(ClassifierConfig):
    adapter_ratio: float = 0.25  # bottleneck = round(ratio * width)
    adapter_scale: float = 0.5  # paper: 0.5 for K400, 1 for SSv2
    head_offsets: tuple[int, ...] | None = None  # None: paper Table 6 for the backbone and frame count
    offset_table: Literal["k400", "ssv2"] = "k400"  # which Table 6 (they differ at 16 frames)
    grad_checkpointing: bool = False
    merged: bool = False  # adapters folded into the ViT weights (built by ZeroI2V.reparameterize)

    def __post_init__(self) -> None:
        if self.head_offsets is not None:  # JSON gives a list
            object.__setattr__(self, "head_offsets", tuple(int(o) for o in self.head_offsets))


class ZeroI2V(FrameMeanClassifier):
    """Frozen CLIP ViT with STDHA, linear adapters and a temporal embedding."""

    def __init__(self, cfg: ZeroI2VConfig, backbone: VisionTransformer | None = None) -> None:
        super().__init__(cfg, backbone, frozen=True)  # frozen, but gradients flow through it
        vit = self.backbone
        offsets = cfg.head_offsets
        if offsets is None:
            offsets = default_head_offsets(vit.cfg.heads, cfg.num_frames, cfg.offset_table)
        bottleneck = round(cfg.adapter_ratio * vit.width)
        for block in vit.blocks:
            block.attn = STDHA.from_attention(block.attn, offsets)
            if not cfg.merged:
                for point in ADAPTER_POINTS:
                    setattr(block, point, LinearAdapter(vit.width, bottleneck, cfg.adapter_scale))
        vit.embed_hook = TemporalEmbedding(cfg.num_frames, vit.width)
        vit.ln_post.requires_grad_(True)

    @property
    def head_offsets(self) -> tuple[int, ...]:
        return self.backbone.blocks[0].attn.offsets

    def reparameterize(self) -> ZeroI2V:
        """A new, adapter-free model computing the same function (adapters folded into the Linears)."""
        if self.cfg.merged:
            raise ValueError("this ZeroI2V model is already merged")
        with torch.device("meta"):
            merged = ZeroI2V(dataclasses.replace(self.cfg, merged=True), build_vit(self.backbone.cfg))
        own = self.state_dict()
        merged.load_state_dict({k: own[k].detach().clone() for k in merged.state_dict()}, assign=True)
        for src, dst in zip(self.backbone.blocks, merged.backbone.blocks, strict=True):
            fold_into_input(src.attn_in, dst.attn.in_proj_weight, dst.attn.in_proj_bias)
            fold_into_output(src.attn_out, dst.attn.out_proj.weight, dst.attn.out_proj.bias)
            fold_into_input(src.mlp_in, dst.mlp.c_fc.weight, dst.mlp.c_fc.bias)
            fold_into_output(src.mlp_out, dst.mlp.c_proj.weight, dst.mlp.c_proj.bias)
        return merged.train(self.training)
