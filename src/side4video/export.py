"""Export a trained model with its adapters merged, after checking the merge numerically.

``export_merged`` reads a training checkpoint (keys ``model_name``, ``model_config``, ``model``),
rebuilds the model, calls its ``reparameterize()`` and compares merged and unmerged outputs on
random clips in float32 / eval mode. Only if they agree within ``atol`` does it write::

    out_dir/model.safetensors   the merged model's state_dict
    out_dir/config.json         {"model_name", "model_config", "num_classes", "num_frames", "image_size", ...}

``load_exported(out_dir)`` rebuilds the merged model from those two files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .backbones.vit import BACKBONES
from .engine.checkpoint import load_checkpoint
from .models import build_model, get_preset, make_config

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_KEYS = ("model_name", "model_config", "model")


def _image_size(ckpt: dict[str, Any], backbone: str) -> int | None:
    """The run's input resolution: its ``train_config``, else the saved positional embedding ``(1 + g*g, D)``."""
    train_config = ckpt.get("train_config") or {}
    if train_config.get("image_size") is not None:
        return int(train_config["image_size"])
    pos = ckpt["model"].get("backbone.positional_embedding")
    return None if pos is None else math.isqrt(pos.shape[0] - 1) * BACKBONES[backbone].patch_size


def _materialise(name: str, cfg: Any, state: dict[str, torch.Tensor], image_size: int | None) -> nn.Module:
    """Build preset ``name`` without initialising weights and load the complete ``state`` into it."""
    with torch.device("meta"):
        model = build_model(name, cfg, image_size=image_size)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _load_trained(
    name: str, cfg: Any, ckpt: dict[str, Any], image_size: int | None, pretrained: str | Path | None, source: Path
) -> nn.Module:
    """The checkpoint's model; a trainable-only checkpoint takes its frozen weights from ``pretrained``."""
    state = ckpt["model"]
    with torch.device("meta"):
        absent = build_model(name, cfg, image_size=image_size).state_dict().keys() - state.keys()
    if not absent:
        return _materialise(name, cfg, state, image_size)
    pretrained = pretrained if pretrained is not None else (ckpt.get("train_config") or {}).get("pretrained")
    if pretrained is None:
        raise KeyError(f"{source}: the checkpoint lacks {len(absent)} weights (e.g. {sorted(absent)[:3]}) "
                       "and no pretrained backbone was given to supply the frozen ones")
    model = build_model(name, cfg, pretrained=pretrained, image_size=image_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable_missing = [k for k in missing if model.get_parameter(k).requires_grad]
    if trainable_missing or unexpected:
        raise RuntimeError(f"{source}: state_dict does not match {name}: missing trainable "
                           f"{trainable_missing[:10]}, unexpected {unexpected[:10]}")
    return model.eval()


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, clips: torch.Tensor) -> float:
    """Largest absolute difference between two frame-mean classifiers' features and logits."""
    fa, fb = a.forward_features(clips), b.forward_features(clips)
    return max((fa - fb).abs().max().item(), (a.head(fa) - b.head(fb)).abs().max().item())


def export_merged(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    atol: float = 1e-5,
    pretrained: str | Path | None = None,
    num_clips: int = 2,
    seed: int = 0,
) -> Path:
    """Merge the adapters of a checkpoint's model, verify, and write ``out_dir``; returns ``out_dir``.

    ``pretrained`` (default: the run's ``train_config["pretrained"]``) is needed only for a
    checkpoint saved without its frozen weights. Raises ``ValueError`` (and writes nothing) when
    merged and unmerged outputs differ by more than ``atol`` on ``num_clips`` random clips.
    """
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    ckpt = load_checkpoint(checkpoint_path, keys=CHECKPOINT_KEYS)
    name = ckpt["model_name"]
    if not hasattr(get_preset(name).build, "reparameterize"):
        raise ValueError(f"{checkpoint_path}: {name} has no adapters to merge (export is for ZeroI2V checkpoints)")
    cfg = make_config(name, **ckpt["model_config"])
    model = _load_trained(name, cfg, ckpt, _image_size(ckpt, cfg.backbone), pretrained, checkpoint_path).float()
    merged = model.reparameterize().eval()

    image_size = model.backbone.cfg.image_size
    clips = torch.randn(num_clips, 3, cfg.num_frames, image_size, image_size,
                        generator=torch.Generator().manual_seed(seed))
    diff = max_output_difference(model, merged, clips)
    if not diff <= atol:  # also refuses NaN
        raise ValueError(
            f"{checkpoint_path}: merged {name} differs from the unmerged model by {diff:.3e} "
            f"(> atol {atol:.1e}); nothing written to {out_dir}"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, str(out_dir / WEIGHTS_FILE),
              metadata={"model_name": name})
    config = {
        "model_name": name,
        "model_config": dataclasses.asdict(merged.cfg),
        "num_classes": merged.cfg.num_classes,
        "num_frames": merged.cfg.num_frames,
        "image_size": image_size,
        "merge_max_abs_diff": diff,
        "merge_atol": atol,
        "source_checkpoint": str(checkpoint_path),
        "source_epoch": ckpt.get("epoch"),
        "train_config": ckpt.get("train_config"),  # test views, image size, ... for eval / predict
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model written by :func:`export_merged`, in eval mode on ``device``."""
    directory = Path(directory)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory / file} not found; is {directory} an export_merged() output?")
    config = json.loads((directory / CONFIG_FILE).read_text())
    state = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    return _materialise(config["model_name"], config["model_config"], state, config["image_size"])
