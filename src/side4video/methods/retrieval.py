"""Text-video retrieval: Side4Video (side network + token-wise matching) and frozen CLIP4Clip.

Side4Video (paper eq. 4): the side network's output is normalised by a BatchNorm3d (the authors'
code; ``post_bn``), averaged over patches per frame, lifted back to the ViT width by ``U_p``
(zero-initialised, so training starts from CLIP itself), added to the ViT's last-layer [CLS], then
CLIP's ``ln_post`` and ``proj`` (frozen for OpenAI CLIP, as released) give T frame embeddings::

    s_final = proj(ln_post(U_p(mean_n BN(s_out)) + Z_cls))           (B, T, E)

Text tokens (every non-pad position after ``ln_final`` and ``text_projection``) are matched with
the frames token-wise (DRL / FILIP): with L2-normalised tokens ``t_i`` and frames ``f_j``,

    t2v = sum_i softmax_i(w_text(t_i)) max_j <t_i, f_j>               (i over the real tokens)
    v2t = sum_j softmax_j(w_frame(f_j)) max_i <t_i, f_j>              (i over all positions, a pad scoring 0)
    logit = (t2v + v2t) / 2 * exp(logit_scale)

with ``w_text`` / ``w_frame`` = Linear(E, E) -> ReLU -> Linear(E, 1), initialised N(0, 0.02).

trained with a symmetric InfoNCE loss over the (globally gathered, under DDP) batch: the loss lives
with the retrieval task (``engine/retrieval.py``), the models only embed and score.

The CLIP4Clip baseline with a frozen image encoder ("CLIP4Clip 🔒") mean-pools CLIP's per-frame
image embeddings and matches them to CLIP's EOT text embedding by cosine similarity.

Both models share one interface: ``encode_video(video)``, ``encode_text(ids, mask)``,
``similarity(video_emb, text_emb, text_mask) -> (num_texts, num_videos)`` (cosine scale, no
temperature), ``logit_scale`` (CLIP's learned temperature, log scale) and
``forward(video, ids, mask) -> (video_emb, text_emb)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.text import TEXT_TOWERS, TextConfig, TextTransformer
from ..backbones.vit import VisionTransformer
from .common import VideoConfig, VideoModel, fold_frames, unfold_frames
from .side4video import SideConfig, SideModel


@dataclass(frozen=True)
class TextVideoConfig(VideoConfig):
    """Fields of every retrieval model: frames, caption length and the CLIP text tower."""

    num_frames: int = 12
    text_length: int = 32  # tokens per caption (SOT and EOT included) used by the recipe
    text: TextConfig | None = None  # None: the CLIP text tower of ``backbone``

    def __post_init__(self) -> None:
        """``text=None`` -> the backbone's CLIP text tower; a dict (from a checkpoint) -> ``TextConfig``."""
        text = self.text
        if text is None:
            if self.backbone not in TEXT_TOWERS:
                raise KeyError(f"no default text tower for backbone {self.backbone!r}; pass text=TextConfig(...)")
            text = TEXT_TOWERS[self.backbone]
        elif isinstance(text, dict):
            text = TextConfig(**text)
        object.__setattr__(self, "text", text)
        if self.text_length > text.context_length:
            raise ValueError(f"text_length {self.text_length} exceeds the context length {text.context_length}")


@dataclass(frozen=True)
class RetrievalConfig(TextVideoConfig, SideConfig):
    """Side4Video for text-video retrieval: the side network, ``U_p`` and token-wise matching.

    Defaults follow the authors' released code; the other choices stay available."""

    post_bn: bool = True  # BatchNorm3d on the side output before the per-frame mean (released; paper eq. 4: none)
    train_projection: bool = False  # ln_post / proj trained (released: EVA-CLIP only; paper text: always)
    matching_hidden: int = 1  # hidden width of the token-weight MLPs, in multiples of the embed dim (released: 1)
    matching_init: Literal["normal", "uniform"] = "normal"  # N(0, 0.02) (released) / last layer zero: equal weights
    pad_tokens: Literal["zero", "exclude"] = "zero"  # padded positions: similarity 0, in the max (released) / left out


@dataclass(frozen=True)
class Clip4ClipConfig(TextVideoConfig):
    """CLIP4Clip (mean pooling). With ``train_backbone=False`` (the paper's "CLIP4Clip 🔒 ViT") the
    image encoder is frozen and only the text tower is trained; with True both towers are fine-tuned."""

    train_backbone: bool = False


def _weight_mlp(dim: int, hidden: int, init: str) -> nn.Sequential:
    """Linear -> ReLU -> Linear(1): one weight logit per token or frame."""
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
    for layer in (mlp[0], mlp[2]):
        nn.init.zeros_(layer.bias)
        if init == "normal":
            nn.init.normal_(layer.weight, std=0.02)
    if init == "uniform":
        nn.init.zeros_(mlp[2].weight)  # equal token / frame weights at the start
    return mlp


class TokenWiseMatching(nn.Module):
    """Weighted token-wise max-similarity between text tokens and frames (DRL-style).

    ``pad_tokens="zero"`` (the authors' code): the similarities are multiplied by the text mask, so a
    padded position scores 0 and takes part in each frame's max over tokens; ``"exclude"``: it is left out.
    """

    def __init__(self, dim: int, hidden_ratio: int = 1, init: str = "normal", pad_tokens: str = "zero") -> None:
        super().__init__()
        if init not in ("normal", "uniform") or pad_tokens not in ("zero", "exclude"):
            raise ValueError(f"matching_init must be normal or uniform and pad_tokens zero or exclude, got "
                             f"{init!r}, {pad_tokens!r}")
        self.text_weight = _weight_mlp(dim, hidden_ratio * dim, init)
        self.frame_weight = _weight_mlp(dim, hidden_ratio * dim, init)
        self.pad_tokens = pad_tokens

    def forward(self, text: torch.Tensor, mask: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Similarity ``(Nt, Nv)`` of ``text (Nt, L, E)`` with ``mask (Nt, L)`` (true on real tokens)
        and ``frames (Nv, T, E)``."""
        mask = mask.bool()
        w_text = self.text_weight(text).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)  # (Nt, L)
        w_frame = self.frame_weight(frames).squeeze(-1).softmax(-1)  # (Nv, T)
        text, frames = F.normalize(text, dim=-1), F.normalize(frames, dim=-1)
        sim = torch.einsum("ald,vtd->avlt", text, frames)  # (Nt, Nv, L, T)
        pad = ~mask[:, None, :, None]  # (Nt, 1, L, 1)
        sim = sim.masked_fill(pad, 0.0 if self.pad_tokens == "zero" else float("-inf"))
        t2v = (sim.amax(dim=3).nan_to_num(neginf=0.0) * w_text[:, None]).sum(-1)  # (Nt, Nv); pads weigh 0
        v2t = (sim.amax(dim=2) * w_frame[None]).sum(-1)  # (Nt, Nv)
        return 0.5 * (t2v + v2t)


class TextVideoModel(VideoModel):
    """The text side and the shared interface of the retrieval models (``_similarity`` per model)."""

    text: TextTransformer

    def _attach_text(self, text: TextTransformer | None) -> None:
        """The CLIP text tower (trained), checked against the image tower's embedding width."""
        text = text if text is not None else TextTransformer(self.cfg.text)
        embed_dim = self.backbone.cfg.output_dim
        if self.backbone.proj is None:
            raise ValueError("retrieval needs a backbone with an output projection (output_dim)")
        if text.cfg.output_dim != embed_dim:
            raise ValueError(f"text tower embeds to {text.cfg.output_dim} but the image tower to {embed_dim}")
        self.text = text
        self.cfg = replace(self.cfg, text=text.cfg)

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature (log scale): logits are ``similarity * logit_scale.exp()``."""
        return self.text.logit_scale

    def lr_group(self, name: str) -> str:
        """CLIP's own trained parts (text tower, ``logit_scale``, ``ln_post`` / ``proj``) learn at ``lr_clip``."""
        return "clip" if name.startswith(("text.", "backbone.")) else "default"

    def similarity(
        self,
        video_emb: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Similarity ``(num_texts, num_videos)``, without the temperature; ``chunk_size`` texts at a time."""
        step = chunk_size or max(1, text_emb.shape[0])
        rows = [
            self._similarity(video_emb, text_emb[i:i + step], None if text_mask is None else text_mask[i:i + step])
            for i in range(0, text_emb.shape[0], step)
        ]
        return torch.cat(rows) if rows else text_emb.new_zeros(0, video_emb.shape[0])

    def forward(
        self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of a batch of (video, caption) pairs: ``(encode_video(video), encode_text(ids, mask))``."""
        return self.encode_video(video), self.encode_text(ids, mask)


class Side4VideoRetrieval(TextVideoModel, SideModel):
    """Side4Video retrieval model: ``up`` is ``U_p``; ``post_bn`` normalises the side output; the ViT's
    ``ln_post`` and ``proj`` are trained only with ``train_projection``."""

    def __init__(
        self,
        cfg: RetrievalConfig,
        backbone: VisionTransformer | None = None,
        text: TextTransformer | None = None,
    ) -> None:
        SideModel.__init__(self, cfg, backbone)
        vit = self.backbone
        if self.side.taps[-1] != vit.cfg.layers - 1:
            raise ValueError(f"the side network must read the ViT's last layer; taps are {self.side.taps}")
        self._attach_text(text)
        if cfg.train_projection:
            for p in (*vit.ln_post.parameters(), vit.proj, vit.proj_bias):
                if p is not None:
                    p.requires_grad_(True)
        self.post_bn = nn.BatchNorm3d(cfg.side_width) if cfg.post_bn else None
        self.up = nn.Linear(cfg.side_width, vit.cfg.width, bias=False)  # U_p
        nn.init.zeros_(self.up.weight)  # s_final starts as CLIP's image embedding of each frame
        self.matching = TokenWiseMatching(vit.cfg.output_dim, cfg.matching_hidden, cfg.matching_init, cfg.pad_tokens)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Frame embeddings ``(B, T, E)`` of a normalised clip ``(B, 3, T, H, W)``."""
        feats = self.backbone_features(video)
        side = self.side(video, feats)  # (B, T, N, d)
        if self.post_bn is not None:
            side = self.post_bn(side.permute(0, 3, 1, 2).unsqueeze(-1)).squeeze(-1).permute(0, 2, 3, 1)  # BN3d
        cls = unfold_frames(feats[-1][:, 0], video.shape[2]).to(side.dtype)  # (B, T, D): last-layer [CLS]
        x = self.up(side.mean(dim=2)) + cls  # (B, T, D)
        return self.backbone.project(self.backbone.ln_post(x))  # (B, T, E)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``(B, L, E)``; ``mask`` marks the real tokens for ``similarity``."""
        return self.text.forward_tokens(ids)

    def _similarity(self, video_emb: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor | None):
        if text_mask is None:
            raise ValueError("token-wise matching needs the text attention mask")
        return self.matching(text_emb, text_mask, video_emb)


class Clip4Clip(TextVideoModel):
    """CLIP4Clip meanP: mean of normalised per-frame CLIP embeddings, cosine similarity."""

    def __init__(
        self,
        cfg: Clip4ClipConfig,
        backbone: VisionTransformer | None = None,
        text: TextTransformer | None = None,
    ) -> None:
        frozen = not cfg.train_backbone
        super().__init__(cfg, backbone, frozen=frozen, no_grad_backbone=frozen)
        self._attach_text(text)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Video embedding ``(B, E)``: mean over frames of the L2-normalised CLIP image embeddings."""
        emb = self.run_backbone(self.backbone.encode_image, fold_frames(video))  # (B*T, E)
        return F.normalize(unfold_frames(emb.float(), video.shape[2]), dim=-1).mean(dim=1)  # (B, E)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP's EOT text embedding ``(B, E)`` (the mask is not needed: the tower is causal)."""
        return self.text.encode_text(ids)

    def _similarity(self, video_emb: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor | None):
        return F.normalize(text_emb, dim=-1) @ F.normalize(video_emb, dim=-1).t()  # (Nt, Nv)
