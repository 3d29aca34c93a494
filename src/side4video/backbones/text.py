"""CLIP text tower (causal Transformer) with OpenAI parameter names, and its checkpoint loader.

The blocks are the image tower's ``ResidualAttentionBlock`` with a causal ``Attention``, so the
keys are OpenAI's: ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.{i}.{ln_1,attn.in_proj_weight,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}``,
``ln_final`` and ``text_projection`` (``W x E``, applied as ``x @ text_projection``). CLIP's
temperature ``logit_scale`` travels with the text tower so that a loaded tower brings it along.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .vit import Attention, ResidualAttentionBlock, Transformer


@dataclass(frozen=True)
class TextConfig:
    """Architecture of a CLIP text tower."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    heads: int = 8
    layers: int = 12
    output_dim: int = 512  # width of ``text_projection``
    mlp_dim: int = 2048
    act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    ln_eps: float = 1e-5
    eot_token_id: int | None = None  # None: pool at argmax(ids), EOT being the largest id in OpenAI's vocab

    @property
    def post_norm(self) -> bool:  # read by ResidualAttentionBlock: text towers are pre-norm
        return False


TEXT_B = TextConfig(width=512, heads=8, layers=12, output_dim=512, mlp_dim=2048)
TEXT_L = TextConfig(width=768, heads=12, layers=12, output_dim=768, mlp_dim=3072)
TEXT_EVA_E = TextConfig(width=1280, heads=20, layers=32, output_dim=1024, mlp_dim=5120, act="gelu")
# For tests and the demo: random weights and a word-level tokenizer (``synthetic_captions``), so 1,024 token
# rows, not CLIP's 49,408 (6.3 M of the 6.7 M parameters it would have); CLIP's BPE needs a real tower.
TEXT_TINY = TextConfig(vocab_size=1024, width=128, heads=2, layers=2, output_dim=128, mlp_dim=512)

# The text tower that each image backbone (keys of ``vit.BACKBONES``) was trained with.
TEXT_TOWERS: dict[str, TextConfig] = {
    "ViT-B-32": TEXT_B,
    "ViT-B-16": TEXT_B,
    "ViT-L-14": TEXT_L,
    "EVA02-E-14": TEXT_EVA_E,
    "tiny": TEXT_TINY,
    "tiny-eva": TEXT_TINY,
}


class CausalAttention(Attention):
    """``Attention`` in which a token attends only to itself and the tokens before it."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, n, hd = q.shape
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * hd))


class TextTransformer(nn.Module):
    """CLIP text encoder. Input: token ids ``(B, L)`` with ``L <= context_length``."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, w) * 0.01)
        self.transformer = Transformer(cfg, ResidualAttentionBlock, attn_layer=CausalAttention)
        self.ln_final = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.randn(w, cfg.output_dim) * w**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Every position after ``ln_final``: ``(B, L) -> (B, L, W)``."""
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.cfg.context_length}")
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # (B, L, W)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_final(x)

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of each sequence's end-of-text token: ``(B, L) -> (B,)``."""
        if self.cfg.eot_token_id is None:
            return ids.argmax(dim=-1)
        return (ids == self.cfg.eot_token_id).int().argmax(dim=-1)  # the first EOT

    def forward_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Every position projected to the joint space (for token-wise matching): ``(B, L, E)``."""
        return self.forward_hidden(ids) @ self.text_projection

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """CLIP's text embedding (EOT token): ``(B, E)``."""
        x = self.forward_hidden(ids)  # (B, L, W)
        return x[torch.arange(x.shape[0], device=x.device), self.eot_index(ids)] @ self.text_projection

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode_text(ids)


# ------------------------------------------------------------------------------------------------
# Loading: OpenAI / open_clip / EVA-CLIP / HF transformers layouts -> this module's names

_HF_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),  # HF Linear (E, W) -> (W, E)
    }
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _HF_LAYER.match(key)
        if m is None:
            continue
        i, name, kind = int(m.group(1)), m.group(2), m.group(3)
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((i, kind), {})[name.removeprefix("self_attn.")[0]] = value
        elif name in _HF_BLOCK:
            out[f"transformer.resblocks.{i}.{_HF_BLOCK[name]}.{kind}"] = value
        else:
            raise KeyError(f"unexpected HF text key {key!r}")
    for (i, kind), parts in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    return out


def text_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The text tower's weights of a full CLIP state dict, renamed to this module's keys.

    Returns the renamed dict and the detected layout: ``"openai"`` (OpenAI / open_clip:
    ``token_embedding.weight`` at the root), ``"text."`` (EVA-CLIP / open_clip custom text
    towers) or ``"hf"`` (``transformers``' CLIPModel / CLIPTextModelWithProjection).
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "text_model.embeddings.token_embedding.weight" in sd:
        return _from_hf(sd), "hf"
    if "text.token_embedding.weight" in sd:
        out = {k.removeprefix("text."): v for k, v in sd.items() if k.startswith("text.")}
        layout = "text."
    elif "token_embedding.weight" in sd:
        out = {k: v for k, v in sd.items() if not k.startswith("visual.")}
        layout = "openai"
    else:
        raise KeyError(f"no CLIP text tower found: no known token embedding key among {list(sd)[:8]}")
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    if "text_projection.weight" in out:  # an open_clip tower whose projection is a Linear
        out["text_projection"] = out.pop("text_projection.weight").t()
    keep = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
            "logit_scale")
    return {k: v for k, v in out.items() if k.startswith(keep)}, layout


def infer_text_config(sd: Mapping[str, torch.Tensor], **overrides) -> TextConfig:
    """Read the architecture off the (renamed) weights. The head count cannot be read from shapes:
    CLIP's ``width // 64`` is assumed unless ``heads`` is given."""
    vocab, width = sd["token_embedding.weight"].shape
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    inferred = {
        "vocab_size": vocab,
        "context_length": sd["positional_embedding"].shape[0],
        "width": width,
        "heads": max(width // 64, 1),
        "layers": layers,
        "output_dim": sd["text_projection"].shape[1],
        "mlp_dim": sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    }
    return TextConfig(**{**inferred, **overrides})
