"""ZeroI2V: zero-cost image-to-video adaptation with STDHA and mergeable linear adapters.

* **STDHA** (spatial-temporal dual-headed attention): after the packed q/k/v projection, runs of
  key and value channels read another frame: a shift group ``(offset, channels)`` at frame t
  comes from frame t + offset (frames with no such neighbour keep their own; no wrap-around).
  The groups start at channel 0 and follow each other; the released configs give the first
  ``C / shift_div`` channels t - 1, the next t + 1, then optional longer shifts
  (:func:`released_shift_groups`). Queries never move; [CLS] moves with the other tokens. No
  parameters are added.
* **Linear adapters** ``A(x) = x + s * up(dropout(down(x)))`` (no activation, ``up`` zero-initialised,
  dropout 0.1 in training as released), up to four per block, inside the residual branches: after
  ``ln_1`` (``attn_in``), after ``out_proj`` (``attn_out``), after ``ln_2`` (``mlp_in``), after
  ``c_proj`` (``mlp_out``);
  ``qkv_adapters`` splits ``attn_in`` into separate q, k and v adapters (six per block).
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
import torch.nn.functional as F
from torch import nn

from ..backbones.vit import Attention, VisionTransformer, build_vit
from .baselines import FrameMeanClassifier
from .common import ClassifierConfig

ShiftGroups = tuple[tuple[int, int], ...]  # (frame offset, channels) runs, from channel 0 of K and V

# The authors' released configs, per head (every released pattern is whole heads on its backbone):
# dataset -> heads -> frames -> offsets of the leading heads; head i at frame t reads frame t + offset.
RELEASED_HEAD_OFFSETS: dict[str, dict[int, dict[int, tuple[int, ...]]]] = {
    "k400": {12: {8: (-1, 1)}, 16: {8: (-1, -1, 1, 1), 32: (-1, -1, 1, 1, -2, -2)}},
    "ssv2": {12: {16: (-1, 1, -2, 2)}, 16: {32: (-1, -1, 1, 1, -2, 2, -3)}},
}
# Paper Table 6, in the paper's sign convention (its "+1" is the released code's t - 1): the rows the
# authors released no config for.
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
    """Per-head offsets of the released config for ``(heads, num_frames)``, else paper Table 6's row.

    Table 6 is read in the released code's direction (its "+1" heads read frame t - 1). Frame
    counts between the table's rows use the row of the largest listed count not above
    ``num_frames`` (the 8-frame row below 8 frames). Heads not listed are spatial (offset 0).
    """
    if table not in TABLE6_OFFSETS:
        raise KeyError(f"unknown STDHA offset table {table!r}; choose from {sorted(TABLE6_OFFSETS)}")
    released = RELEASED_HEAD_OFFSETS[table].get(heads, {}).get(num_frames)
    if released is not None:
        return pad_offsets(released, heads)
    rows = TABLE6_OFFSETS[table].get(heads)
    if rows is None:
        raise ValueError(
            f"paper Table 6 has no STDHA offsets for a {heads}-head ViT (only {sorted(TABLE6_OFFSETS[table])});"
            " set ZeroI2VConfig.shift_groups or head_offsets"
        )
    listed = [f for f in sorted(rows) if f <= num_frames] or [min(rows)]
    return pad_offsets(tuple(-o for o in rows[listed[-1]]), heads)


def pad_offsets(offsets: tuple[int, ...], heads: int) -> tuple[int, ...]:
    if len(offsets) > heads:
        raise ValueError(f"{len(offsets)} STDHA head offsets given for a {heads}-head attention")
    return tuple(int(o) for o in offsets) + (0,) * (heads - len(offsets))


def head_shift_groups(offsets: tuple[int, ...], width: int, heads: int) -> ShiftGroups:
    """Per-head offsets as channel groups: head i is channels ``[i * hd, (i + 1) * hd)``."""
    offsets = pad_offsets(tuple(offsets), heads)
    return tuple((o, width // heads) for o in offsets if any(offsets))


def released_shift_groups(
    width: int,
    shift_div: int,
    long_shift_div: int = -1,
    long_shift_right: bool = False,
    shifts: tuple[tuple[int, int, bool], ...] = (),
    stride: int = 1,
) -> ShiftGroups:
    """The released STDHA channel pattern (``stdha_cfg``) as channel groups.

    ``C // shift_div`` channels read t - stride, the next ``C // shift_div`` t + stride; with
    ``long_shift_div`` the next ``C // long_shift_div`` read t - 2 (and as many t + 2 with
    ``long_shift_right``). ``shifts`` continues the ``_long`` variant's pattern: ``(distance, div,
    right)`` for shift2..shift4: ``C // div`` channels read t - distance (then as many t + distance
    if ``right``).
    """
    fold = width // shift_div
    groups = [(-stride, fold), (stride, fold)]
    if long_shift_div > 0:
        shifts = ((2, long_shift_div, long_shift_right),) + tuple(shifts)
    for distance, div, right in shifts:
        if div > 0:
            groups.append((-distance, width // div))
            if right:
                groups.append((distance, width // div))
    return tuple((o, c) for o, c in groups if c > 0)


def check_shift_groups(groups: ShiftGroups, width: int) -> ShiftGroups:
    groups = tuple((int(o), int(c)) for o, c in groups)
    if any(c <= 0 for _, c in groups):
        raise ValueError(f"STDHA shift groups need a positive channel count each, got {groups}")
    if sum(c for _, c in groups) > width:
        raise ValueError(f"STDHA shift groups {groups} cover {sum(c for _, c in groups)} channels of {width}")
    return groups


class STDHA(Attention):
    """Attention whose K/V channels in each shift group read frame ``t + offset`` (their own where none).

    ``groups`` are ``(offset, channels)`` runs over the packed K and V channels from channel 0
    (channel c belongs to head ``c // head_dim``); channels after the last group are spatial.
    Input ``(B*T, 1+N, D)`` with frames folded into the batch, or ``(3, B*T, 1+N, D)``: separate
    inputs for q, k and v. Same parameters as ``Attention``.
    """

    def __init__(self, width: int, heads: int, groups: ShiftGroups = ()) -> None:
        super().__init__(width, heads)
        self.groups = check_shift_groups(groups, width)

    @classmethod
    def from_attention(cls, attn: Attention, groups: ShiftGroups) -> STDHA:
        """An STDHA that shares ``attn``'s parameters."""
        with torch.device("meta"):
            new = cls(attn.out_proj.in_features, attn.heads, groups)
        new.in_proj_weight, new.in_proj_bias, new.out_proj = attn.in_proj_weight, attn.in_proj_bias, attn.out_proj
        return new

    def shift(self, qkv: torch.Tensor) -> torch.Tensor:
        """Shift the K and V channels of ``qkv`` ``(B, T, N, 3, D)`` across frames."""
        t = qkv.shape[1]
        out = qkv.clone()
        start = 0
        for offset, channels in self.groups:
            stop = start + channels
            if offset and abs(offset) < t:
                dst = slice(max(0, -offset), t - max(0, offset))
                src = slice(max(0, offset), t - max(0, -offset))
                out[:, dst, :, 1:, start:stop] = qkv[:, src, :, 1:, start:stop]
            start = stop
        return out

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        d = self.out_proj.in_features
        if x.dim() == 4:  # separate q, k, v inputs, each (B*T, N, D)
            w, b = self.in_proj_weight.view(3, d, d), self.in_proj_bias.view(3, d)
            qkv = torch.stack([F.linear(x[i], w[i], b[i]) for i in range(3)], dim=2)  # (B*T, N, 3, D)
        else:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, d))  # (B*T, N, 3, D)
        bt, n = qkv.shape[:2]
        if self.groups:
            qkv = self.shift(qkv.view(bt // num_frames, num_frames, n, 3, d)).view(bt, n, 3, d)
        q, k, v = qkv.view(bt, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B*T, H, N, hd)
        return self.attend(q, k, v)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, groups={self.groups}"


class LinearAdapter(nn.Module):
    """``x + scale * up(dropout(down(x)))``; ``up`` starts at zero so the adapter starts as the identity.
    Dropout acts in training only, so the adapter stays affine at inference (and can be merged)."""

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, width)
        nn.init.xavier_uniform_(self.down.weight)
        for zero in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zero)

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return x + self.scale * self.up(self.dropout(self.down(x)))

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


class QKVAdapter(nn.Module):
    """Separate linear adapters for the query, key and value inputs: ``(B*T, N, D) -> (3, B*T, N, D)``."""

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.q, self.k, self.v = (LinearAdapter(width, bottleneck, scale, dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return torch.stack([self.q(x), self.k(x), self.v(x)])


ADAPTER_POINTS = ("attn_in", "attn_out", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class ZeroI2VConfig(ClassifierConfig):
    adapter_ratio: float = 0.25  # bottleneck = int(ratio * width)
    adapter_scale: float = 0.5  # paper: 0.5 for K400, 1 for SSv2
    adapter_points: tuple[str, ...] = ADAPTER_POINTS  # released num_tadapter=1: without "mlp_out"
    qkv_adapters: bool = False  # paper's 6-adapter variant: separate q, k, v adapters at "attn_in"
    # STDHA: (offset, channels) groups from channel 0 of K and V (the general form), or per-head
    # offsets; neither: the released config (else paper Table 6) for the backbone and frame count.
    shift_groups: tuple[tuple[int, int], ...] | None = None
    head_offsets: tuple[int, ...] | None = None
    offset_table: Literal["k400", "ssv2"] = "k400"  # which table for the default (they differ at 16 frames)
    adapter_dropout: float = 0.1  # between the adapters' down and up projections (released: 0.1; 0 on SSv2 B/16)
    grad_checkpointing: bool = False
    merged: bool = False  # adapters folded into the ViT weights (built by ZeroI2V.reparameterize)

    def __post_init__(self) -> None:  # JSON gives lists
        if self.head_offsets is not None:
            object.__setattr__(self, "head_offsets", tuple(int(o) for o in self.head_offsets))
        if self.shift_groups is not None:
            object.__setattr__(self, "shift_groups", tuple((int(o), int(c)) for o, c in self.shift_groups))
        object.__setattr__(self, "adapter_points", tuple(self.adapter_points))
        unknown = sorted(set(self.adapter_points) - set(ADAPTER_POINTS))
        if unknown:
            raise ValueError(f"ZeroI2VConfig.adapter_points: unknown {unknown}; choose from {ADAPTER_POINTS}")
        if self.qkv_adapters and "attn_in" not in self.adapter_points:
            raise ValueError("ZeroI2VConfig.qkv_adapters needs the 'attn_in' adapter point")
        if self.shift_groups is not None and self.head_offsets is not None:
            raise ValueError("ZeroI2VConfig: set shift_groups or head_offsets, not both")

    def resolve_shift_groups(self, width: int, heads: int) -> ShiftGroups:
        if self.shift_groups is not None:
            return self.shift_groups
        offsets = self.head_offsets
        if offsets is None:
            offsets = default_head_offsets(heads, self.num_frames, self.offset_table)
        return head_shift_groups(offsets, width, heads)


class ZeroI2V(FrameMeanClassifier):
    """Frozen CLIP ViT with STDHA, linear adapters and a temporal embedding."""

    def __init__(self, cfg: ZeroI2VConfig, backbone: VisionTransformer | None = None) -> None:
        super().__init__(cfg, backbone, frozen=True)  # frozen, but gradients flow through it
        vit = self.backbone
        groups = cfg.resolve_shift_groups(vit.width, vit.cfg.heads)
        bottleneck = int(cfg.adapter_ratio * vit.width)
        for block in vit.blocks:
            block.attn = STDHA.from_attention(block.attn, groups)
            if not cfg.merged:
                for point in cfg.adapter_points:
                    kind = QKVAdapter if point == "attn_in" and cfg.qkv_adapters else LinearAdapter
                    setattr(block, point, kind(vit.width, bottleneck, cfg.adapter_scale, cfg.adapter_dropout))
        vit.embed_hook = TemporalEmbedding(cfg.num_frames, vit.width)
        vit.ln_post.requires_grad_(True)

    @property
    def shift_groups(self) -> ShiftGroups:
        return self.backbone.blocks[0].attn.groups

    def reparameterize(self) -> ZeroI2V:
        """A new, adapter-free model computing the same function (adapters folded into the Linears)."""
        if self.cfg.merged:
            raise ValueError("this ZeroI2V model is already merged")
        with torch.device("meta"):
            merged = ZeroI2V(dataclasses.replace(self.cfg, merged=True), build_vit(self.backbone.cfg))
        own = self.state_dict()
        merged.load_state_dict({k: own[k].detach().clone() for k in merged.state_dict()}, assign=True)
        d = self.backbone.width
        for src, dst in zip(self.backbone.blocks, merged.backbone.blocks, strict=True):
            attn, mlp = dst.attn, dst.mlp
            if isinstance(src.attn_in, QKVAdapter):  # each adapter into its rows of the packed projection
                for i, adapter in enumerate((src.attn_in.q, src.attn_in.k, src.attn_in.v)):
                    rows = slice(i * d, (i + 1) * d)
                    fold_into_input(adapter, attn.in_proj_weight[rows], attn.in_proj_bias[rows])
            elif src.attn_in is not None:
                fold_into_input(src.attn_in, attn.in_proj_weight, attn.in_proj_bias)
            if src.attn_out is not None:
                fold_into_output(src.attn_out, attn.out_proj.weight, attn.out_proj.bias)
            if src.mlp_in is not None:
                fold_into_input(src.mlp_in, mlp.c_fc.weight, mlp.c_fc.bias)
            if src.mlp_out is not None:
                fold_into_output(src.mlp_out, mlp.c_proj.weight, mlp.c_proj.bias)
        return merged.train(self.training)
