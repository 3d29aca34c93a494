"""The authors' released checkpoints as our models: Side4Video, ST-Adapter and ZeroI2V.

:func:`load_official` detects the layout from the file and returns our model (eval mode, input
``(B, 3, T, H, W)``) computing the authors' function on the same weights:

* **Side4Video** (``train_vision.py``): ``{'epoch', 'model_state_dict': visual.* + fc.*}``, keys
  possibly prefixed ``module.``. The OpenAI-CLIP code keeps its side network under
  ``visual.transformer.side_*``, the EVA-CLIP code (post-norm, E/14) under ``visual.side_*``.
  Backbone, side width and depth and classes come from the tensors; frames are not stored
  (``num_frames``, default 8; the side network works at any frame count).
* **ST-Adapter** (``utils.save_model``): ``{'model': trainable tensors, 'next_epoch', ...}``: the
  adapters (``adapter_pre_attn`` / ``adapter_pre_mlp``) and ``fc``; the frozen ViT comes from
  ``pretrained``, the OpenAI CLIP file it was trained from.
* **ZeroI2V** (mmengine): ``{'meta': {'cfg': config text}, 'state_dict': backbone.* +
  cls_head.fc_cls.*}``. STDHA pattern, frames, adapter scale and adapter count come from the
  config text, or from ``config``, an mmaction2 config file. Config text is parsed as data
  (:func:`read_config`, Python's ``ast``); it is never executed. The rest of such a file
  (``message_hub``, ``optimizer``, ``param_schedulers``, numpy values) names classes that
  ``torch.load(weights_only=True)`` refuses; it is then read with
  :func:`~side4video.safe_load.load_checkpoint_data`, those classes as inert records, and unused.

Anything missing or inconsistent raises :class:`OfficialCheckpointError`, one line naming the
file and the key.
"""

from __future__ import annotations

import ast
import dataclasses
import pickle
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones.loading import convert_state_dict, load_backbone, vision_config_from_state_dict
from .backbones.vit import BACKBONES, VisionConfig, build_vit
from .engine.checkpoint import write_export
from .engine.config import ModelConfig, TrainConfig, to_dict
from .methods.zeroi2v import ADAPTER_POINTS, released_shift_groups
from .models import build_model, make_config
from .safe_load import UnsafePickleError, load_checkpoint_data

StateDict = dict[str, torch.Tensor]


class OfficialCheckpointError(ValueError):
    """A released checkpoint (or its config) that cannot be converted; the message names file and key."""


@dataclass
class Converted:
    """An official checkpoint in our terms: preset name, its full config and the complete state."""

    model_name: str
    config: Any
    state: StateDict
    image_size: int
    method: str  # "side4video" | "st-adapter" | "zeroi2v"
    source: str

    def build(self) -> nn.Module:
        with torch.device("meta"):
            model = build_model(self.model_name, self.config, image_size=self.image_size)
        model.load_state_dict(self.state, strict=True, assign=True)
        return model.eval()


def load_official(
    path: str | Path,
    *,
    num_frames: int | None = None,
    pretrained: str | Path | None = None,
    config: str | Path | None = None,
) -> nn.Module:
    """Our model, in eval mode, from an official Side4Video, ST-Adapter or ZeroI2V checkpoint."""
    return convert_official(path, num_frames=num_frames, pretrained=pretrained, config=config).build()


def import_official(
    path: str | Path,
    out_dir: str | Path,
    *,
    num_frames: int | None = None,
    pretrained: str | Path | None = None,
    config: str | Path | None = None,
) -> Path:
    """Convert an official checkpoint and write it as an export directory (``load_model`` reads it)."""
    converted = convert_official(path, num_frames=num_frames, pretrained=pretrained, config=config)
    model = converted.build()
    run = TrainConfig(model=ModelConfig(
        name=converted.model_name, num_classes=model.cfg.num_classes, frames=model.cfg.num_frames,
        image_size=converted.image_size, pretrained=None if pretrained is None else str(pretrained),
    ))
    return write_export(model, converted.model_name, out_dir, source_checkpoint=str(path),
                        official_layout=converted.method, train_config=to_dict(run))


def convert_official(
    path: str | Path,
    *,
    num_frames: int | None = None,
    pretrained: str | Path | None = None,
    config: str | Path | None = None,
) -> Converted:
    """Read ``path`` (layout detected from its keys) and convert it; see :func:`load_official`."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a class weights_only refuses (mmengine's MessageHub, numpy, ...)
        try:
            ckpt = load_checkpoint_data(path)
        except UnsafePickleError as err:
            raise OfficialCheckpointError(str(err)) from None
    except Exception as err:  # any unreadable file is reported the same way
        raise OfficialCheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict):
        raise OfficialCheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if "model_state_dict" in ckpt:
        return _side4video(path, _tensors(path, ckpt, "model_state_dict"), num_frames)
    if "model" in ckpt and "next_epoch" in ckpt:
        return _st_adapter(path, _tensors(path, ckpt, "model"), num_frames, pretrained)
    if "state_dict" in ckpt and any(str(k).startswith("backbone.") for k in ckpt["state_dict"]):
        return _zeroi2v(path, ckpt, num_frames, config)
    raise OfficialCheckpointError(
        f"{path}: not a released Side4Video ('model_state_dict'), ST-Adapter ('model' + 'next_epoch') or "
        f"ZeroI2V ('meta' + 'state_dict' with backbone.*) checkpoint; top-level keys {sorted(map(str, ckpt))[:8]}"
    )


# ----------------------------------------------------------------------------- shared helpers


def random_state(state: Mapping[str, torch.Tensor], seed: int) -> StateDict:
    """Deterministic random values for every floating tensor of ``state``, by key name and ``seed``.

    1-D ``weight`` tensors (norm scales) are ``1 + 0.1 N(0, 1)``, BatchNorm ``running_var`` is
    uniform in [0.5, 1.5], everything else ``0.05 N(0, 1)``; integer buffers are kept. Used to
    compare a conversion against the authors' code on weights where nothing is left at its init.
    """
    out: StateDict = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            noise = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("weight") and value.dim() == 1:
            noise = 1 + 0.1 * noise
        else:
            noise = 0.05 * noise
        out[key] = noise.to(value.dtype)
    return out


def _tensors(path: Path, ckpt: dict, key: str) -> StateDict:
    sd = ckpt[key]
    if not isinstance(sd, Mapping):
        raise OfficialCheckpointError(f"{path}: '{key}' is not a dict of tensors")
    for name, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise OfficialCheckpointError(f"{path}: '{key}.{name}' is not a tensor ({value!r:.60})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _need(path: Path, sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise OfficialCheckpointError(f"{path}: missing key {key!r}")
    return sd[key]


def backbone_name(cfg: VisionConfig, source: str) -> str:
    """The named backbone (``BACKBONES``) with architecture ``cfg``, any image size and projection."""
    for name, known in BACKBONES.items():
        if dataclasses.replace(known, image_size=cfg.image_size, output_dim=cfg.output_dim) == cfg:
            return name
    raise OfficialCheckpointError(f"{source}: the image tower {cfg} is none of the known backbones {sorted(BACKBONES)}")


def _complete_backbone(sd: StateDict, name: str, image_size: int) -> StateDict:
    """Add the tower parts a classifier checkpoint leaves out (``ln_post``: identity, ``proj``: zeros)."""
    with torch.device("meta"):
        template = build_vit(name, image_size=image_size).state_dict()
    for key, value in template.items():
        if key not in sd:
            if key.startswith("ln_post."):
                sd[key] = torch.ones(value.shape) if key.endswith("weight") else torch.zeros(value.shape)
            elif key in ("proj", "proj_bias"):
                sd[key] = torch.zeros(value.shape)
    return sd


def _finish(
    path: Path, method: str, model_name: str, cfg: Any, state: StateDict, image_size: int
) -> Converted:
    """Check ``state`` against the model's keys and shapes (one line naming the first bad key)."""
    with torch.device("meta"):
        expected = build_model(model_name, cfg, image_size=image_size).state_dict()
    for key, value in expected.items():
        if key not in state:
            raise OfficialCheckpointError(f"{path}: no weights for {key!r} of our {model_name} model")
        if tuple(state[key].shape) != tuple(value.shape):
            raise OfficialCheckpointError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise OfficialCheckpointError(f"{path}: unexpected key {extra[0]!r} ({len(extra)} with no place in our model)")
    state = {k: v.float().contiguous() if v.is_floating_point() else v for k, v in state.items()}
    return Converted(model_name, cfg, state, image_size, method, str(path))


def _rename(path: Path, sd: Mapping[str, torch.Tensor], rules: list[tuple[str, str]], prefix: str = "") -> StateDict:
    """Rename every key by the first matching rule; a key no rule matches is an error (named with ``prefix``)."""
    compiled = [(re.compile(p), t) for p, t in rules]
    out: StateDict = {}
    for key, value in sd.items():
        for pattern, target in compiled:
            if m := pattern.fullmatch(key):
                out[m.expand(target)] = value
                break
        else:
            raise OfficialCheckpointError(f"{path}: unexpected key {prefix + key!r}")
    return out


# ----------------------------------------------------------------------------- Side4Video


_S4V_CLIP_SIDE = "visual.transformer."
_S4V_BLOCK_RULES = [  # released side block -> our SideBlock (prefix-free)
    (r"bn_1\.(\w+)", r"norm_temporal.\1"),
    (r"conv\.0\.(weight|bias)", r"temporal.pw1.\1"),
    (r"conv\.1\.(weight|bias)", r"temporal.dw.\1"),
    (r"conv\.2\.(weight|bias)", r"temporal.pw2.\1"),
    (r"ln_1\.(weight|bias)", r"norm_attn.\1"),
    (r"attn\.(in_proj_weight|in_proj_bias)", r"attn.\1"),
    (r"attn\.out_proj\.(weight|bias)", r"attn.out_proj.\1"),
    (r"attn\.proj\.(weight|bias)", r"attn.out_proj.\1"),  # EVA code
    (r"bn_2\.(\w+)", r"norm_mlp.\1"),
    (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2"),
    (r"mlp\.0\.(weight|bias)", r"mlp.fc1.\1"),  # EVA code: nn.Sequential
    (r"mlp\.2\.(weight|bias)", r"mlp.fc2.\1"),
]


def _side4video(path: Path, sd: StateDict, num_frames: int | None) -> Converted:
    eva = "visual.patch_embed.proj.weight" in sd
    side_prefix = "visual." if eva else _S4V_CLIP_SIDE
    blocks_name = "side_blocks" if eva else "side_transformer"
    stem = _need(path, sd, "visual.side_conv1.weight")  # (d, 3, 3, p, p)
    fc = _need(path, sd, "fc.weight")  # (classes, d)
    width = stem.shape[0]
    linear = re.compile(re.escape(side_prefix) + r"side_linears\.(\d+)\.weight")
    layers = len([k for k in sd if linear.fullmatch(k)])
    if layers == 0:
        raise OfficialCheckpointError(f"{path}: missing key {side_prefix + 'side_linears.0.weight'!r}")
    if fc.shape[1] != width:
        raise OfficialCheckpointError(f"{path}: 'fc.weight' has {fc.shape[1]} inputs; the side network is {width} wide")

    side_keys = {k for k in sd if k.startswith(("visual.side_", f"{side_prefix}side_")) or k.startswith("fc.")}
    known = re.compile(
        r"visual\.side_conv1\.(weight|bias)|visual\.side_pre_bn3d\.\w+|fc\.(weight|bias)"
        + ("" if eva else r"|visual\.side_post_bn\.\w+")
        + "|" + re.escape(side_prefix) + r"(side_spatial_position_embeddings|side_(linears|lns)\.\d+\.(weight|bias)"
        + rf"|{blocks_name}\.\d+\..+)"
    )
    for key in sorted(side_keys):
        if not known.fullmatch(key):
            raise OfficialCheckpointError(f"{path}: unexpected key {key!r}")
    tower = {k: v for k, v in sd.items() if k not in side_keys}
    try:
        vit_cfg = vision_config_from_state_dict(tower, post_norm=True if eva else None)
        vit_sd = convert_state_dict(tower)
    except ValueError as err:
        raise OfficialCheckpointError(f"{path}: {err}") from None
    name = backbone_name(vit_cfg, str(path))
    vit_sd = _complete_backbone(vit_sd, name, vit_cfg.image_size)

    state: StateDict = {f"backbone.{k}": v for k, v in vit_sd.items()}
    state["side.stem.weight"] = stem
    state["side.stem.bias"] = _need(path, sd, "visual.side_conv1.bias")
    for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        state[f"side.stem_norm.{part}"] = _need(path, sd, f"visual.side_pre_bn3d.{part}")
        if not eva:
            state[f"head.norm.{part}"] = _need(path, sd, f"visual.side_post_bn.{part}")
    state["side.pos_embed"] = _need(path, sd, f"{side_prefix}side_spatial_position_embeddings")
    state["head.fc.weight"], state["head.fc.bias"] = fc, _need(path, sd, "fc.bias")
    for k in range(layers):
        for part in ("weight", "bias"):
            state[f"side.down.{k}.proj.{part}"] = _need(path, sd, f"{side_prefix}side_linears.{k}.{part}")
            state[f"side.down.{k}.norm.{part}"] = _need(path, sd, f"{side_prefix}side_lns.{k}.{part}")
        prefix = f"{side_prefix}{blocks_name}.{k}."
        block = {key[len(prefix):]: v for key, v in sd.items() if key.startswith(prefix)}
        if eva:  # separate q/k/v projections -> one packed projection
            for part in ("weight", "bias"):
                qkv = [_need(path, sd, f"{prefix}attn.{p}_proj.{part}") for p in "qkv"]
                block[f"attn.in_proj_{part}"] = torch.cat(qkv)
                for p in "qkv":
                    del block[f"attn.{p}_proj.{part}"]
        for key, value in _rename(path, block, _S4V_BLOCK_RULES, prefix).items():
            if key.startswith("temporal.pw") and key.endswith("weight"):
                value = value.reshape(value.shape[0], value.shape[1])  # 1x1x1 conv -> Linear
            elif key == "temporal.dw.weight":
                value = value.reshape(value.shape[0], 1, -1)  # (d, 1, 3, 1, 1) -> Conv1d (d, 1, 3)
            state[f"side.blocks.{k}.{key}"] = value

    model_name = "side4video-e14-light" if eva else "side4video-b16"
    cfg = make_config(
        model_name, backbone=name, side_layers=layers, side_width=width, num_classes=fc.shape[0],
        num_frames=num_frames or 8, post_norm=eva, checkpoint_parts=eva, down_norm="post" if eva else "pre",
        head_norm=not eva, fusion="avg", cls_attn_norm="released", taps="interval",
    )
    return _finish(path, "side4video", model_name, cfg, state, vit_cfg.image_size)


# ----------------------------------------------------------------------------- ST-Adapter


_ST_ADAPTER = re.compile(r"transformer\.resblocks\.(\d+)\.adapter_pre_(attn|mlp)\.(fc1|conv|fc2)\.(weight|bias)")
_ST_PARTS = {"fc1": "down", "conv": "conv", "fc2": "up"}


def _st_adapter(path: Path, sd: StateDict, num_frames: int | None, pretrained: str | Path | None) -> Converted:
    if pretrained is None:
        raise OfficialCheckpointError(
            f"{path}: an ST-Adapter checkpoint holds only the adapters and 'fc'; pass pretrained= "
            "(--pretrained), the OpenAI CLIP file it was trained from"
        )
    fc = _need(path, sd, "fc.weight")
    state: StateDict = {"head.fc.weight": fc, "head.fc.bias": _need(path, sd, "fc.bias")}
    found = []
    for key, value in sd.items():
        if m := _ST_ADAPTER.fullmatch(key):
            block, kind, part, tensor = m.groups()
            state[f"backbone.transformer.resblocks.{block}.stream_pre_{kind}.{_ST_PARTS[part]}.{tensor}"] = value
            if part == "fc1" and tensor == "weight":
                found.append((int(block), kind))
        elif not key.startswith("fc."):
            raise OfficialCheckpointError(f"{path}: unexpected key {key!r}")
    if not found:
        raise OfficialCheckpointError(f"{path}: missing key 'transformer.resblocks.0.adapter_pre_mlp.fc1.weight'")
    kinds = sorted({kind for _, kind in found})
    placement = "attn+mlp" if kinds == ["attn", "mlp"] else kinds[0]
    first = f"transformer.resblocks.{found[0][0]}.adapter_pre_{found[0][1]}."
    bottleneck = sd[first + "fc1.weight"].shape[0]
    kernel = tuple(_need(path, sd, first + "conv.weight").shape[2:])
    try:
        vit = load_backbone(pretrained)
    except ValueError as err:
        raise OfficialCheckpointError(str(err)) from None
    name = backbone_name(vit.cfg, str(pretrained))
    for kind in kinds:
        blocks = sorted(i for i, k in found if k == kind)
        if blocks != list(range(vit.cfg.layers)):
            missing = sorted(set(range(vit.cfg.layers)) - set(blocks))
            raise OfficialCheckpointError(
                f"{path}: missing key 'transformer.resblocks.{missing[0] if missing else blocks[-1]}."
                f"adapter_pre_{kind}.fc1.weight' (adapters must sit in every one of the {vit.cfg.layers} blocks)"
            )
    tower = _complete_backbone(vit.state_dict(), name, vit.cfg.image_size)
    state.update({f"backbone.{k}": v for k, v in tower.items()})
    model_name = "st-adapter-b16-x2" if placement == "attn+mlp" else "st-adapter-b16"
    cfg = make_config(
        model_name, backbone=name, num_classes=fc.shape[0], num_frames=num_frames or 8, bottleneck=bottleneck,
        kernel=kernel, placement=placement, activation="none", pool="mean_then_norm",
    )
    return _finish(path, "st-adapter", model_name, cfg, state, vit.cfg.image_size)


# ----------------------------------------------------------------------------- ZeroI2V


class _NotData(Exception):
    def __init__(self, node: ast.AST) -> None:
        super().__init__(getattr(node, "lineno", 0))
        self.line = getattr(node, "lineno", 0)


def _data(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """The value of a plain-data expression: literals, ``dict(k=v, ...)``, names assigned before."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_data(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotData(node)
        return {_data(k, names): _data(v, names) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(k.arg is None for k in node.keywords):
            raise _NotData(node)
        return {k.arg: _data(k.value, names) for k in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _data(node.operand, names)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    raise _NotData(node)


def read_config(text: str, source: str) -> dict[str, Any]:
    """Top-level ``name = value`` assignments of an mmaction2 / mmengine config, parsed as data.

    Nothing is executed: values that are not plain data (literals, ``dict(...)``, earlier names)
    are left out, and a ``model`` that is not plain data is an error naming the line.
    """
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as err:
        raise OfficialCheckpointError(f"{source}: config text is not valid Python (line {err.lineno})") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                values[name] = _data(node.value, values)
            except _NotData as err:
                if name == "model":
                    raise OfficialCheckpointError(
                        f"{source}: 'model' (line {err.line}) is not plain data (literals and dict(...) only)"
                    ) from None
    return values


_ZERO_ADAPTERS = {  # released adapter name -> our adapter point
    "T_Adapter_in": "attn_in", "T_Adapter_in_q": "attn_in.q", "T_Adapter_in_k": "attn_in.k",
    "T_Adapter_in_v": "attn_in.v", "S_Adapter": "attn_out", "MLP_Adapter": "mlp_in", "MLP_Adapter_out": "mlp_out",
}
_ZERO_TYPES = ("ViT_Zero_CLIP", "ViT_Zero_CLIP_long", "ViT_Zero_CLIP_ablation")


def _get(source: str, cfg: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in cfg:
        if default is ...:
            raise OfficialCheckpointError(f"{source}: missing config key {key!r}")
        return default
    value = cfg[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise OfficialCheckpointError(f"{source}: config key {key!r} = {value!r} is not {kind}")
    return value


def zeroi2v_shift_groups(kind: str, stdha: Mapping[str, Any], width: int, source: str) -> tuple[tuple[int, int], ...]:
    """The channel groups of a released ``stdha_cfg`` for backbone type ``kind``."""
    key = "model.backbone.stdha_cfg"

    def get(name: str, default: Any, typ: type | tuple[type, ...] = int) -> Any:
        return _get(source, stdha, name, typ, default)

    if get("divide_head", False, bool):
        raise OfficialCheckpointError(f"{source}: {key}.divide_head=True is not supported (the released code raises)")
    if get("shift_pattern", "kv", str) != "kv":
        raise OfficialCheckpointError(f"{source}: {key}.shift_pattern must be 'kv' (the released code's only one)")
    if kind == "ViT_Zero_CLIP_long":
        shifts = ((2, get("shift2_div", -1), True),
                  (3, get("shift3_div", -1), get("shift3_right", False, bool)),
                  (4, get("shift4_div", -1), get("shift4_right", False, bool)))
        return released_shift_groups(width, get("shift1_div", 12), shifts=shifts)
    if kind == "ViT_Zero_CLIP_ablation" and get("ops_type", None, (str, type(None))) != "stdha":
        raise OfficialCheckpointError(
            f"{source}: {key}.ops_type={stdha.get('ops_type')!r}: only 'stdha' is a head-relocating STDHA"
        )
    return released_shift_groups(
        width, get("shift_div", 12), get("long_shift_div", -1),
        get("long_shift_right", False, bool) if kind == "ViT_Zero_CLIP_ablation" else False,
        stride=get("shift_stride", 1),
    )


def _zeroi2v(path: Path, ckpt: dict, num_frames: int | None, config: str | Path | None) -> Converted:
    if config is not None:
        source = str(config)
        try:
            text = Path(config).read_text()
        except OSError as err:
            raise OfficialCheckpointError(f"{config}: cannot read the config ({err.strerror})") from None
    else:
        source = f"{path}: meta.cfg"
        text = (ckpt.get("meta") or {}).get("cfg") if isinstance(ckpt.get("meta"), dict) else None
        if not isinstance(text, str):
            raise OfficialCheckpointError(f"{path}: missing key 'meta.cfg' (the config text); pass config=")
    model_cfg = read_config(text, source).get("model")
    if not isinstance(model_cfg, dict):
        raise OfficialCheckpointError(f"{source}: missing config key 'model'")
    backbone = _get(source, model_cfg, "backbone", dict)
    head = _get(source, model_cfg, "cls_head", dict)
    kind = _get(source, backbone, "type", str)
    if kind not in _ZERO_TYPES:
        raise OfficialCheckpointError(f"{source}: model.backbone.type {kind!r} is not one of {_ZERO_TYPES}")
    frames = _get(source, backbone, "num_frames", int)
    if num_frames is not None and num_frames != frames:
        raise OfficialCheckpointError(f"{source}: model.backbone.num_frames is {frames}, not {num_frames} as asked")
    heads = _get(source, backbone, "heads", int)
    width = _get(source, backbone, "width", int)
    scale = float(_get(source, backbone, "adapter_scale", (int, float), 0.5))
    ratio = float(_get(source, backbone, "mlp_ratio", (int, float), 0.25))
    adapters = _get(source, backbone, "num_tadapter", int, 1)
    adapter_type = _get(source, backbone, "adapter_type", str, "rep" if kind == "ViT_Zero_CLIP_long" else "linear")
    attn_adapters = _get(source, backbone, "attn_adapter_type", str, "share")
    if adapter_type not in ("linear", "rep"):
        raise OfficialCheckpointError(f"{source}: model.backbone.adapter_type {adapter_type!r} is not a linear adapter")
    if adapters not in (1, 2) and not (adapters == -1 and kind != "ViT_Zero_CLIP"):
        raise OfficialCheckpointError(f"{source}: model.backbone.num_tadapter {adapters} is not supported")
    if attn_adapters not in ("share", "qkv") or (attn_adapters == "qkv" and kind != "ViT_Zero_CLIP_ablation"):
        raise OfficialCheckpointError(f"{source}: model.backbone.attn_adapter_type {attn_adapters!r} is not supported")
    points = tuple(p for p in ADAPTER_POINTS if not (p == "mlp_out" and adapters != 2)
                   and not (p == "attn_out" and adapters == -1))
    groups = zeroi2v_shift_groups(kind, _get(source, backbone, "stdha_cfg", dict, {}), width, source)

    sd = _tensors(path, ckpt, "state_dict")
    sd = {k: v for k, v in sd.items() if not k.startswith("data_preprocessor.")}
    fc = _need(path, sd, "cls_head.fc_cls.weight")
    classes = _get(source, head, "num_classes", int)
    if fc.shape[0] != classes:
        raise OfficialCheckpointError(
            f"{path}: 'cls_head.fc_cls.weight' has {fc.shape[0]} classes but {source} says num_classes={classes}"
        )
    temporal = _need(path, sd, "backbone.temporal_embedding")  # (1, T, D)
    if temporal.shape[1] != frames:
        raise OfficialCheckpointError(
            f"{path}: 'backbone.temporal_embedding' is for {temporal.shape[1]} frames but {source} says "
            f"num_frames={frames}"
        )
    adapter = re.compile(r"backbone\.transformer\.resblocks\.(\d+)\.(\w+?)\.D_fc([12])\.(weight|bias)")
    tower, state = {}, {}
    for key, value in sd.items():
        if m := adapter.fullmatch(key):
            block, name, fc_index, part = m.groups()
            if name not in _ZERO_ADAPTERS:
                raise OfficialCheckpointError(f"{path}: unexpected key {key!r}")
            state[f"backbone.transformer.resblocks.{block}.{_ZERO_ADAPTERS[name]}."
                  f"{'down' if fc_index == '1' else 'up'}.{part}"] = value
        elif key.startswith("backbone.") and key != "backbone.temporal_embedding":
            tower[key[len("backbone."):]] = value
        elif key.startswith("cls_head.fc_cls."):
            state["head.fc." + key[len("cls_head.fc_cls."):]] = value
        elif key != "backbone.temporal_embedding":
            raise OfficialCheckpointError(f"{path}: unexpected key {key!r}")
    try:
        vit_cfg = vision_config_from_state_dict(tower, heads=heads)
    except ValueError as err:
        raise OfficialCheckpointError(f"{path}: {err}") from None
    for key, value in (("width", vit_cfg.width), ("layers", vit_cfg.layers), ("patch_size", vit_cfg.patch_size)):
        stated = _get(source, backbone, key, int)
        if stated != value:
            raise OfficialCheckpointError(
                f"{path}: the weights give {key}={value} but {source} says model.backbone.{key}={stated}"
            )
    name = backbone_name(vit_cfg, str(path))
    state.update({f"backbone.{k}": v for k, v in _complete_backbone(tower, name, vit_cfg.image_size).items()})
    state["backbone.embed_hook.embedding"] = temporal.reshape(frames, -1)
    model_name = "zeroi2v-l14" if name == "ViT-L-14" else "zeroi2v-b16"
    cfg = make_config(
        model_name, backbone=name, num_classes=classes, num_frames=frames, adapter_ratio=ratio, adapter_scale=scale,
        adapter_points=points, qkv_adapters=attn_adapters == "qkv", shift_groups=groups, head_offsets=None,
        dropout=float(_get(source, head, "dropout_ratio", (int, float), 0.5)),
    )
    return _finish(path, "zeroi2v", model_name, cfg, state, vit_cfg.image_size)


__all__ = [
    "Converted", "OfficialCheckpointError", "convert_official", "import_official", "load_official", "random_state",
    "read_config",
]

