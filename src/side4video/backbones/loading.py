"""Load pretrained CLIP / EVA-CLIP image towers into :class:`VisionTransformer`.

The architecture is read off the weights (width, depth, MLP width, patch and image size,
output width, which optional biases and norms exist), so one call loads any of:

* OpenAI CLIP: a TorchScript archive (``torch.jit.save``; its tensors are read as data, its code is
  never run) or a plain state dict with
  ``visual.conv1.weight`` ...; open_clip checkpoints use the same names, possibly wrapped in
  ``{"state_dict": ...}`` and prefixed ``module.``. A bare ``VisionTransformer.state_dict()``
  (no ``visual.`` prefix) loads too;
* Hugging Face ``transformers`` CLIP: a directory with ``config.json`` and
  ``model.safetensors`` / ``pytorch_model.bin`` (or a sharded index);
* EVA-CLIP: ``visual.patch_embed.proj``, ``visual.blocks.{i}.attn.qkv`` with separate
  ``q_bias`` / ``v_bias``, ``visual.head`` ...

in a pickle (``.pt``, ``.pth``, ``.bin``) or a ``.safetensors`` file. Steps usable on their
own: :func:`read_state_dict` -> :func:`convert_state_dict` -> :func:`vision_config_from_state_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from ..safe_load import is_torchscript, read_torchscript_state_dict
from .text import TextConfig, TextTransformer, infer_text_config, text_state_dict
from .vit import VisionConfig, VisionTransformer, resize_pos_embed

__all__ = [
    "CheckpointError",
    "convert_state_dict",
    "detect_layout",
    "load_backbone",
    "read_hf_vision_config",
    "read_state_dict",
    "vision_config_from_state_dict",
]

Layout = Literal["openai", "native", "hf", "eva"]
StateDict = dict[str, torch.Tensor]

# transformers 5's CLIPVisionModel saves its tower without the ``vision_model.`` prefix.
_HF_BARE_MARKER = "embeddings.patch_embedding.weight"
# A key that only the layout's image tower has, checked in this order: OpenAI's full CLIP also has
# text keys without prefix (``positional_embedding``), so ``visual.`` must win over the bare names.
_LAYOUT_MARKERS: dict[str, Layout] = {
    "visual.conv1.weight": "openai",
    "vision_model.embeddings.patch_embedding.weight": "hf",
    "visual.patch_embed.proj.weight": "eva",
    "conv1.weight": "native",
    _HF_BARE_MARKER: "hf",
}
_EXPECTED = (
    "an OpenAI/open_clip/EVA-CLIP checkpoint (.pt/.pth/.bin), a TorchScript archive, "
    "a .safetensors file or a Hugging Face CLIP directory"
)
_WRAPPER_KEYS = ("state_dict", "module")  # open_clip training checkpoints, DeepSpeed (EVA-CLIP)
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# transformers' CLIPVisionConfig defaults, used for keys a config.json leaves out.
_HF_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "num_attention_heads": 12}
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
_OPENAI_HEAD_WIDTH = 64  # OpenAI CLIP and open_clip: heads = width // 64
_EVA_BIGE_WIDTH, _EVA_BIGE_HEAD_WIDTH = 1792, 112  # EVA-CLIP bigE: 16 heads of 112, post-norm
_EVA_LN_EPS = 1e-6

_BLOCK = "transformer.resblocks.{}."
_BLOCK_INDEX = re.compile(r"transformer\.resblocks\.(\d+)\.")

# (full-match pattern on the checkpoint key, VisionTransformer key or None to drop).
_HF_RULES: list[tuple[str, str | None]] = [
    (r"vision_model\.embeddings\.class_embedding", "class_embedding"),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"conv1.\1"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"vision_model\.embeddings\.position_ids", None),  # a buffer older transformers saved
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)",
     r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.(\w+)", r"transformer.resblocks.\1.ln_1.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.(\w+)", r"transformer.resblocks.\1.ln_2.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(\w+)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(\w+)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
]
_EVA_RULES: list[tuple[str, str | None]] = [
    (r"visual\.patch_embed\.proj\.(weight|bias)", r"conv1.\1"),
    (r"visual\.norm\.(weight|bias)", r"ln_post.\1"),
    (r"visual\.blocks\.(\d+)\.norm1\.(\w+)", r"transformer.resblocks.\1.ln_1.\2"),
    (r"visual\.blocks\.(\d+)\.norm2\.(\w+)", r"transformer.resblocks.\1.ln_2.\2"),
    (r"visual\.blocks\.(\d+)\.attn\.qkv\.weight", r"transformer.resblocks.\1.attn.in_proj_weight"),
    (r"visual\.blocks\.(\d+)\.attn\.proj\.(\w+)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"visual\.blocks\.(\d+)\.mlp\.fc1\.(\w+)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"visual\.blocks\.(\d+)\.mlp\.fc2\.(\w+)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit a :class:`VisionTransformer`."""


def _key_list(keys: Iterable[str], limit: int = 10) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} key{'' if len(keys) == 1 else 's'} [{shown}{more}]"


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _read_file(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if is_torchscript(path):  # OpenAI's released CLIP archives: their tensors, never their code
            return read_torchscript_state_dict(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch / safetensors raise many types for a bad file; name the file instead
        reason = _first_line(err)
        raise CheckpointError(f"{path}: cannot read checkpoint ({reason}); expected {_EXPECTED}") from None


def _read_hf_dir(path: Path) -> Any:
    for name in _HF_WEIGHTS:
        if (path / name).is_file():
            return _read_file(path / name)
    for name in _HF_INDEXES:
        if (path / name).is_file():
            try:
                shards = sorted(set(json.loads((path / name).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as err:
                reason = _first_line(err)
                raise CheckpointError(f"{path / name}: not a sharded-weights index ({reason})") from None
            merged: dict[str, Any] = {}
            for shard in shards:
                merged.update(_read_file(path / shard))
            return merged
    raise CheckpointError(
        f"{path}: directory holds none of {', '.join(_HF_WEIGHTS + _HF_INDEXES)}; "
        f"expected a Hugging Face CLIP directory (config.json + weights)"
    )


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """All tensors of a checkpoint file or Hugging Face directory, unwrapped, ``module.`` stripped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    obj = _read_hf_dir(path) if path.is_dir() else _read_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: no tensors found (top-level keys {_key_list(map(str, obj))})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_hf_vision_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The vision part of a Hugging Face ``config.json`` beside ``path`` (or in it), else None.

    ``CLIPModel`` keeps it under ``vision_config``; ``CLIPVisionModel[WithProjection]`` at the top.
    """
    path = Path(path)
    file = (path if path.is_dir() else path.parent) / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: invalid JSON ({err})") from None
    return dict(config.get("vision_config") or config)


# ---------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------


def detect_layout(sd: Mapping[str, torch.Tensor]) -> Layout:
    """Which checkpoint family ``sd`` comes from: ``openai`` (and open_clip), ``hf``, ``eva``, ``native``."""
    for marker, layout in _LAYOUT_MARKERS.items():
        if marker in sd:
            return layout
    raise CheckpointError(
        f"unknown key layout: none of {list(_LAYOUT_MARKERS)} present; found {_key_list(sd)}"
    )


def _rename(sd: Mapping[str, torch.Tensor], rules: list[tuple[str, str | None]]) -> StateDict:
    """Apply the first matching rule to each key; keys no rule matches keep their name."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    out: StateDict = {}
    for key, value in sd.items():
        match = next(((m, t) for p, t in compiled if (m := p.fullmatch(key))), None)
        if match is None:
            out[key] = value
        elif match[1] is not None:
            out[match[0].expand(match[1])] = value
    return out


def _convert_hf(sd: Mapping[str, torch.Tensor]) -> StateDict:
    if _HF_BARE_MARKER in sd:
        sd = {f"vision_model.{k}": v for k, v in sd.items()}
    visual = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    attn = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.")
    for i in sorted({m.group(1) for k in visual if (m := attn.match(k))}):
        prefix = f"vision_model.encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{p}_proj.{kind}" for p in "qkv"]
            if all(p in visual for p in parts):  # else left in place and reported as unexpected
                visual[f"{_BLOCK.format(i)}attn.in_proj_{kind}"] = torch.cat([visual.pop(p) for p in parts])
    if "visual_projection.weight" in visual:
        visual["proj"] = visual.pop("visual_projection.weight").t()  # (E, D) -> (D, E)
    return _rename(visual, _HF_RULES)


def _convert_eva(sd: Mapping[str, torch.Tensor]) -> StateDict:
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    qb = re.compile(r"visual\.blocks\.(\d+)\.attn\.q_bias")
    for i in sorted({m.group(1) for k in visual if (m := qb.fullmatch(k))}):
        q, v = f"visual.blocks.{i}.attn.q_bias", f"visual.blocks.{i}.attn.v_bias"
        if v in visual:  # no key bias: zeros are exact, a key bias cancels in the softmax
            q, v = visual.pop(q), visual.pop(v)
            visual[f"{_BLOCK.format(i)}attn.in_proj_bias"] = torch.cat([q, torch.zeros_like(q), v])
    if "visual.cls_token" in visual:
        visual["class_embedding"] = visual.pop("visual.cls_token").reshape(-1)  # (1, 1, D) -> (D,)
    if "visual.pos_embed" in visual:
        pos = visual.pop("visual.pos_embed")
        visual["positional_embedding"] = pos.reshape(pos.shape[-2], pos.shape[-1])  # (1, 1+N, D) -> (1+N, D)
    if "visual.head.weight" in visual:
        visual["proj"] = visual.pop("visual.head.weight").t()  # (E, D) -> (D, E)
    if "visual.head.bias" in visual:
        visual["proj_bias"] = visual.pop("visual.head.bias")
    return _rename(visual, _EVA_RULES)


def convert_state_dict(sd: Mapping[str, torch.Tensor], layout: Layout | None = None) -> StateDict:
    """The image tower's weights under :class:`VisionTransformer` names; text keys are dropped.

    Image-tower keys that have no place in the ViT (EVA02 ``rope``, layer scale ...) keep their
    original names, so that loading reports them.
    """
    layout = layout or detect_layout(sd)
    if layout == "openai":
        return {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    if layout == "hf":
        return _convert_hf(sd)
    if layout == "eva":
        return _convert_eva(sd)
    return dict(sd)


# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"missing {key!r}, needed to infer the architecture; found {_key_list(sd)}")
    return sd[key]


def _infer_heads(width: int, layout: Layout, hf: Mapping[str, Any] | None) -> int:
    if hf is not None:
        return int(hf.get("num_attention_heads", _HF_DEFAULTS["num_attention_heads"]))
    if layout == "eva" and width == _EVA_BIGE_WIDTH:
        return width // _EVA_BIGE_HEAD_WIDTH
    return width // _OPENAI_HEAD_WIDTH


def _act_and_eps(layout: Layout, hf: Mapping[str, Any] | None) -> tuple[str, float]:
    if hf is not None:
        name = hf.get("hidden_act", _HF_DEFAULTS["hidden_act"])
        if name not in _HF_ACTS:
            raise CheckpointError(f"hidden_act {name!r} is not supported; expected one of {sorted(_HF_ACTS)}")
        return _HF_ACTS[name], float(hf.get("layer_norm_eps", _HF_DEFAULTS["layer_norm_eps"]))
    if layout == "eva":
        return "gelu", _EVA_LN_EPS
    return "quick_gelu", 1e-5


def _infer_config(
    sd: Mapping[str, torch.Tensor],
    layout: Layout,
    heads: int | None,
    post_norm: bool | None,
    hf: Mapping[str, Any] | None,
) -> VisionConfig:
    conv = _need(sd, "conv1.weight")  # (D, 3, p, p)
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(f"conv1.weight has shape {tuple(conv.shape)}, expected (width, 3, p, p)")
    width, patch = conv.shape[0], conv.shape[-1]
    pos = _need(sd, "positional_embedding")  # (1+N, D)
    grid = math.isqrt(pos.shape[0] - 1)
    if pos.ndim != 2 or grid * grid != pos.shape[0] - 1:
        raise CheckpointError(f"positional_embedding has shape {tuple(pos.shape)}, expected (1 + g*g, width)")
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK_INDEX.match(k))}
    if not blocks:
        raise CheckpointError(f"no transformer blocks found in {_key_list(sd)}")
    proj = sd.get("proj")  # (D, E)
    heads = _infer_heads(width, layout, hf) if heads is None else heads
    if heads <= 0 or width % heads:
        raise CheckpointError(f"width {width} is not divisible into {heads} heads; pass heads= explicitly")
    act, ln_eps = _act_and_eps(layout, hf)
    cfg = VisionConfig(
        width=width,
        layers=max(blocks) + 1,
        heads=heads,
        mlp_dim=_need(sd, _BLOCK.format(0) + "mlp.c_fc.weight").shape[0],
        patch_size=patch,
        image_size=grid * patch,
        output_dim=None if proj is None else proj.shape[1],
        post_norm=(layout == "eva" and width == _EVA_BIGE_WIDTH) if post_norm is None else post_norm,
        act=act,
        ln_eps=ln_eps,
        patch_bias="conv1.bias" in sd,
        ln_pre="ln_pre.weight" in sd,
        proj_bias="proj_bias" in sd,
    )
    if hf is not None:
        _check_hf_config(cfg, hf)
    return cfg


def _check_hf_config(cfg: VisionConfig, hf: Mapping[str, Any]) -> None:
    stated = {
        "hidden_size": cfg.width,
        "num_hidden_layers": cfg.layers,
        "intermediate_size": cfg.mlp_dim,
        "patch_size": cfg.patch_size,
        "image_size": cfg.image_size,
    }
    wrong = {k: (hf[k], v) for k, v in stated.items() if k in hf and hf[k] != v}
    if wrong:
        detail = ", ".join(f"{k}={a} but the weights give {b}" for k, (a, b) in wrong.items())
        raise CheckpointError(f"config.json disagrees with the weights: {detail}")


def vision_config_from_state_dict(
    sd: Mapping[str, torch.Tensor],
    heads: int | None = None,
    post_norm: bool | None = None,
    hf_config: Mapping[str, Any] | None = None,
) -> VisionConfig:
    """The :class:`VisionConfig` of the image tower in ``sd`` (any supported layout).

    Shapes are all it reads, so meta tensors do. ``heads`` and ``post_norm`` override the
    inferred values (OpenAI: width // 64 heads; EVA-CLIP bigE, width 1792: 16 heads, post-norm);
    ``hf_config`` is the vision part of a Hugging Face ``config.json`` (heads, act, eps).
    """
    layout = detect_layout(sd)
    return _infer_config(convert_state_dict(sd, layout), layout, heads, post_norm, hf_config)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _build(cfg: VisionConfig, sd: StateDict) -> VisionTransformer:
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        parts = [f"missing {_key_list(missing)}"] if missing else []
        parts += [f"unexpected (no place in the ViT) {_key_list(unexpected)}"] if unexpected else []
        raise CheckpointError(f"weights do not fit the inferred {cfg}: " + "; ".join(parts))
    sd = {k: v.float().contiguous() for k, v in sd.items()}
    try:
        model.load_state_dict(sd, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"weights do not fit the inferred {cfg}: {err}") from None
    return model


def load_backbone(
    path: str | os.PathLike,
    image_size: int | None = None,
    heads: int | None = None,
    post_norm: bool | None = None,
    state_dict: StateDict | None = None,
) -> VisionTransformer:
    """A :class:`VisionTransformer` (float32, CPU) with the pretrained image tower at ``path``.

    With ``image_size`` other than the checkpoint's, the positional embedding is resampled
    bicubically to the new patch grid. ``heads`` / ``post_norm`` override the inferred values.
    ``state_dict``: the file's tensors when already read (see :func:`load_clip`).
    """
    path = Path(path)
    sd = dict(state_dict) if state_dict is not None else read_state_dict(path)
    try:
        layout = detect_layout(sd)
        hf = read_hf_vision_config(path) if layout == "hf" else None
        sd = convert_state_dict(sd, layout)
        cfg = _infer_config(sd, layout, heads, post_norm, hf)
        if image_size is not None and image_size != cfg.image_size:
            grid, rest = divmod(image_size, cfg.patch_size)
            if rest:
                msg = f"image_size {image_size} is not a multiple of patch size {cfg.patch_size}"
                raise CheckpointError(msg)
            sd["positional_embedding"] = resize_pos_embed(sd["positional_embedding"], grid)
            cfg = cfg.with_image_size(image_size)
        return _build(cfg, sd)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _hf_overrides(directory: Path) -> dict:
    config_file = directory / "config.json"
    if not config_file.is_file():
        return {}
    cfg = json.loads(config_file.read_text())
    cfg = cfg.get("text_config", cfg)  # CLIPModel nests it; CLIPTextModel(WithProjection) does not
    eos = cfg.get("eos_token_id")
    return {
        "heads": cfg["num_attention_heads"],
        "act": cfg.get("hidden_act", "quick_gelu"),
        "ln_eps": cfg.get("layer_norm_eps", 1e-5),
        "eot_token_id": None if eos in (None, 2) else eos,  # HF's legacy configs (eos 2) pool at argmax
    }


def load_text_tower(
    path: str | os.PathLike, cfg: TextConfig | None = None, state_dict: StateDict | None = None, **overrides
) -> TextTransformer:
    """Build a ``TextTransformer`` from a CLIP checkpoint of any supported layout.

    ``path``: OpenAI's TorchScript or state-dict file, an open_clip / EVA-CLIP checkpoint
    (``.pt``/``.bin``/``.safetensors``, possibly wrapped in ``{"state_dict": ...}`` with a
    ``module.`` prefix) or an HF ``transformers`` directory (its ``config.json`` gives the heads,
    activation and EOT id). The architecture is read from the weights unless ``cfg`` is given;
    ``overrides`` replace single fields (e.g. ``act="gelu"`` for open_clip's non-OpenAI towers).
    The checkpoint's ``logit_scale`` is loaded when present. ``state_dict``: the file's tensors when
    already read (see :func:`load_clip`).
    """
    path = Path(path)
    sd, layout = text_state_dict(state_dict if state_dict is not None else read_state_dict(path))
    if cfg is None:
        defaults = _hf_overrides(path) if path.is_dir() else {}
        if layout == "text.":
            defaults.setdefault("act", "gelu")  # EVA-CLIP's text towers use GELU
        cfg = infer_text_config(sd, **{**defaults, **overrides})
    else:
        cfg = dataclasses.replace(cfg, **overrides)
    model = TextTransformer(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "logit_scale"]
    if missing or unexpected:
        raise KeyError(f"{path}: text tower keys missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model


def load_clip(
    path: str | os.PathLike, image_size: int | None = None, text: bool = True
) -> tuple[VisionTransformer, TextTransformer | None]:
    """Both towers of a CLIP checkpoint, reading the file once: ``(image tower, text tower or None)``."""
    sd = read_state_dict(path)
    vision = load_backbone(path, image_size=image_size, state_dict=sd)
    return vision, (load_text_tower(path, state_dict=sd) if text else None)
