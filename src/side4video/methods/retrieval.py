"""Text-video retrieval: Side4Video (side network + token-wise matching) and frozen CLIP4Clip.

Side4Video (paper eq. 4): the side network's output is averaged over patches per frame, lifted
back to the ViT width by ``U_p`` (zero-initialised, so training starts from CLIP itself), added
to the ViT's last-layer [CLS], then CLIP's ``ln_post`` and ``proj`` give T frame embeddings::

    s_final = proj(ln_post(U_p(mean_n s_out) + Z_cls))               (B, T, E)

Text tokens (every non-pad position after ``ln_final`` and ``text_projection``) are matched with
the frames token-wise (DRL / FILIP): with L2-normalised tokens ``t_i`` and frames ``f_j``,

    t2v = sum_i softmax_i(w_text(t_i)) max_j <t_i, f_j>
    v2t = sum_j softmax_j(w_frame(f_j)) max_i <t_i, f_j>
    logit = (t2v + v2t) / 2 * exp(logit_scale)

and trained with a symmetric InfoNCE loss over the (globally gathered, under DDP) batch.

The CLIP4Clip baseline with a frozen image encoder ("CLIP4Clip 🔒") mean-pools CLIP's per-frame
image embeddings and matches them to CLIP's EOT text embedding by cosine similarity.

Both models share one interface: ``encode_video(video)``, ``encode_text(ids, mask)``,
``similarity(video_emb, text_emb, text_mask) -> (num_texts, num_videos)`` (cosine scale, no
temperature) and ``forward(video, ids, mask) -> loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..backbones.text import TEXT_TOWERS, TextConfig, TextTransformer
from ..backbones.vit import VisionTransformer, build_vit, freeze
from .side4video import Side4Video, backbone_context


def _resolve_text(cfg) -> None:
    """``text=None`` -> the backbone's CLIP text tower; a dict (from a checkpoint) -> ``TextConfig``."""
    text = cfg.text
    if text is None:
        if cfg.backbone not in TEXT_TOWERS:
            raise KeyError(f"no default text tower for backbone {cfg.backbone!r}; pass text=TextConfig(...)")
        text = TEXT_TOWERS[cfg.backbone]
    elif isinstance(text, dict):
        text = TextConfig(**text)
    object.__setattr__(cfg, "text", text)
    if cfg.text_length > text.context_length:
        raise ValueError(f"text_length {cfg.text_length} exceeds the context length {text.context_length}")


@dataclass(frozen=True)
class RetrievalConfig:
    """Side4Video for text-video retrieval (side-network fields as in ``Side4VideoConfig``)."""

    backbone: str = "ViT-B-32"
    num_frames: int = 12
    side_layers: int = 12
    side_width: int = 320
    text_length: int = 32  # tokens per caption (SOT and EOT included) used by the recipe
    text: TextConfig | None = None  # None: the CLIP text tower of ``backbone``
    head_width: int = 64
    mlp_ratio: float = 4.0
    taps: Literal["interval", "top"] = "interval"
    fusion: Literal["sum", "avg"] = "sum"
    down_norm: Literal["pre", "post"] = "pre"
    cls_shift: bool = True
    post_norm: bool = False
    checkpoint_parts: bool = False
    autocast_backbone: bool = True
    matching_hidden: int = 2  # hidden width of the token-weight MLPs, in multiples of the embed dim

    def __post_init__(self) -> None:
        _resolve_text(self)


@dataclass(frozen=True)
class Clip4ClipConfig:
    """CLIP4Clip (mean pooling). With ``train_backbone=False`` (the paper's "CLIP4Clip 🔒 ViT") the
    image encoder is frozen and only the text tower is trained; with True both towers are fine-tuned."""

    backbone: str = "ViT-B-32"
    num_frames: int = 12
    text_length: int = 32
    text: TextConfig | None = None
    autocast_backbone: bool = True
    train_backbone: bool = False

    def __post_init__(self) -> None:
        _resolve_text(self)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow through this rank's slice.

    Without an initialised process group (or with one rank) ``x`` is returned unchanged. Every
    rank must pass a tensor of the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a square ``(B, B)`` logit matrix with matching pairs on the diagonal, both ways."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def _weight_mlp(dim: int, hidden: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
    nn.init.zeros_(mlp[2].weight)  # uniform token / frame weights at the start
    nn.init.zeros_(mlp[2].bias)
    return mlp


class TokenWiseMatching(nn.Module):
    """Weighted token-wise max-similarity between text tokens and frames (DRL-style)."""

    def __init__(self, dim: int, hidden_ratio: int = 2) -> None:
        super().__init__()
        self.text_weight = _weight_mlp(dim, hidden_ratio * dim)
        self.frame_weight = _weight_mlp(dim, hidden_ratio * dim)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Similarity ``(Nt, Nv)`` of ``text (Nt, L, E)`` with ``mask (Nt, L)`` (true on real tokens)
        and ``frames (Nv, T, E)``."""
        mask = mask.bool()
        w_text = self.text_weight(text).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)  # (Nt, L)
        w_frame = self.frame_weight(frames).squeeze(-1).softmax(-1)  # (Nv, T)
        text, frames = F.normalize(text, dim=-1), F.normalize(frames, dim=-1)
        sim = torch.einsum("ald,vtd->avlt", text, frames)  # (Nt, Nv, L, T)
        t2v = (sim.amax(dim=3) * w_text[:, None]).sum(-1)  # (Nt, Nv); pad tokens have weight 0
        best_token = sim.masked_fill(~mask[:, None, :, None], float("-inf")).amax(dim=2)  # (Nt, Nv, T)
        v2t = (best_token * w_frame[None]).sum(-1)  # (Nt, Nv)
        return 0.5 * (t2v + v2t)


class ContrastiveRetrieval:
    """Shared loss and text side of the retrieval models (needs ``self.text``, ``encode_video``,
    ``encode_text`` and ``_similarity``)."""

    text: TextTransformer

    def _check_text(
        self, text: TextTransformer | None, cfg: RetrievalConfig | Clip4ClipConfig, embed_dim: int
    ) -> TextTransformer:
        text = text if text is not None else TextTransformer(cfg.text)
        if text.cfg.output_dim != embed_dim:
            raise ValueError(f"text tower embeds to {text.cfg.output_dim} but the image tower to {embed_dim}")
        return text

    def similarity(
        self,
        video_emb: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Similarity ``(num_texts, num_videos)``, without the temperature; ``chunk_size`` texts at a time."""
        if chunk_size is None:
            return self._similarity(video_emb, text_emb, text_mask)
        rows = []
        for start in range(0, text_emb.shape[0], chunk_size):
            part = slice(start, start + chunk_size)
            mask = None if text_mask is None else text_mask[part]
            rows.append(self._similarity(video_emb, text_emb[part], mask))
        return torch.cat(rows)

    def forward(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE loss of a batch of matching (video, caption) pairs."""
        video_emb = all_gather_with_grad(self.encode_video(video))
        text_emb = all_gather_with_grad(self.encode_text(ids, mask))
        mask = all_gather_with_grad(mask)
        logits = self._similarity(video_emb, text_emb, mask) * self.text.logit_scale.exp()
        return symmetric_infonce(logits)


class Side4VideoRetrieval(ContrastiveRetrieval, Side4Video):
    """Side4Video retrieval model. ``head`` is ``U_p``; the ViT's ``ln_post`` and ``proj`` are trained."""

    def __init__(
        self,
        cfg: RetrievalConfig,
        backbone: VisionTransformer | None = None,
        text: TextTransformer | None = None,
    ) -> None:
        super().__init__(cfg, backbone)
        vit = self.backbone
        if self.taps[-1] != vit.cfg.layers - 1:
            raise ValueError(f"the side network must read the ViT's last layer; taps are {self.taps}")
        if vit.proj is None:
            raise ValueError("retrieval needs a backbone with an output projection (output_dim)")
        for p in (*vit.ln_post.parameters(), vit.proj, vit.proj_bias):
            if p is not None:
                p.requires_grad_(True)
        nn.init.zeros_(self.head.weight)  # s_final starts as CLIP's image embedding of each frame
        self.text = self._check_text(text, cfg, vit.cfg.output_dim)
        self.cfg = replace(cfg, text=self.text.cfg)
        self.matching = TokenWiseMatching(vit.cfg.output_dim, cfg.matching_hidden)

    def _make_head(self) -> nn.Module:
        return nn.Linear(self.cfg.side_width, self.backbone.cfg.width, bias=False)  # U_p

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Frame embeddings ``(B, T, E)`` of a normalised clip ``(B, 3, T, H, W)``."""
        b, _, t, _, _ = video.shape
        feats = self.backbone_features(video)
        side = self.forward_side(video, feats)  # (B, T, N, d)
        cls = feats[-1][:, 0].view(b, t, -1).to(side.dtype)  # (B, T, D): last-layer [CLS]
        x = self.head(side.mean(dim=2)) + cls  # (B, T, D)
        return self.backbone.project(self.backbone.ln_post(x))  # (B, T, E)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``(B, L, E)``; ``mask`` marks the real tokens for ``similarity``."""
        return self.text.forward_tokens(ids)

    def _similarity(self, video_emb: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor | None):
        if text_mask is None:
            raise ValueError("token-wise matching needs the text attention mask")
        return self.matching(text_emb, text_mask, video_emb)


class Clip4Clip(ContrastiveRetrieval, nn.Module):
    """CLIP4Clip meanP: mean of normalised per-frame CLIP embeddings, cosine similarity."""

    def __init__(
        self,
        cfg: Clip4ClipConfig,
        backbone: VisionTransformer | None = None,
        text: TextTransformer | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else build_vit(cfg.backbone)
        if not cfg.train_backbone:
            freeze(self.backbone)
        if self.backbone.proj is None:
            raise ValueError("retrieval needs a backbone with an output projection (output_dim)")
        self.text = self._check_text(text, cfg, self.backbone.cfg.output_dim)
        self.cfg = replace(cfg, text=self.text.cfg)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Video embedding ``(B, E)``: mean over frames of the L2-normalised CLIP image embeddings."""
        b, _, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, 3, h, w)  # (B*T, 3, H, W)
        grad = torch.enable_grad() if self.cfg.train_backbone else torch.no_grad()
        with grad, backbone_context(video.device, self.cfg.autocast_backbone):
            emb = self.backbone.encode_image(frames)  # (B*T, E)
        return F.normalize(emb.float().view(b, t, -1), dim=-1).mean(dim=1)  # (B, E)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP's EOT text embedding ``(B, E)`` (the mask is not needed: the tower is causal)."""
        return self.text.encode_text(ids)

    def _similarity(self, video_emb: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor | None):
        return F.normalize(text_emb, dim=-1) @ F.normalize(video_emb, dim=-1).t()  # (Nt, Nv)

    def train(self, mode: bool = True) -> Clip4Clip:
        super().train(mode)
        if not self.cfg.train_backbone:
            self.backbone.eval()
        return self


def param_groups(
    model: nn.Module, lr_new: float = 1e-4, lr_clip: float = 1e-7, weight_decay: float = 0.2
) -> list[dict]:
    """Optimizer groups of the trainable parameters: CLIP's own parts (text tower, ``logit_scale``,
    the ViT's ``ln_post`` / ``proj``) get ``lr_clip``, new modules ``lr_new``; weight decay only
    on matrices (not on biases, norms, embeddings' scales or ``logit_scale``)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "clip" if name.startswith(("text.", "backbone.")) else "new"
        groups.setdefault((part, p.ndim >= 2), []).append(p)
    return [
        {
            "name": f"{part}_{'decay' if decay else 'no_decay'}",
            "params": params,
            "lr": lr_clip if part == "clip" else lr_new,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (part, decay), params in sorted(groups.items())
    ]
