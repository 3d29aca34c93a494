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
from .models import build_model, make_config

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_KEYS = ("model_name", "model_config", "model")


def _image_size(state: dict[str, torch.Tensor], backbone: str, source: str | Path) -> int:
    """Input resolution implied by the backbone's positional embedding ``(1 + g*g, D)``."""
    key = "backbone.positional_embedding"
    if key not in state:
        raise KeyError(f"{source}: state_dict has no {key!r}; not a model built on a ViT backbone")
    grid = math.isqrt(state[key].shape[0] - 1)
    return grid * BACKBONES[backbone].patch_size


def _materialise(name: str, cfg: Any, state: dict[str, torch.Tensor], image_size: int) -> nn.Module:
    """Build preset ``name`` without initialising weights and load ``state`` into it (strictly)."""
    with torch.device("meta"):
        model = build_model(name, cfg, image_size=image_size)
    model.load_state_dict(state, strict=True, assign=True)
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
    num_clips: int = 2,
    seed: int = 0,
) -> Path:
    """Merge the adapters of a checkpoint's model, verify, and write ``out_dir``; returns ``out_dir``.

    Raises ``ValueError`` (and writes nothing) when merged and unmerged outputs differ by more
    than ``atol`` on ``num_clips`` random clips.
    """
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise KeyError(f"{checkpoint_path}: checkpoint lacks {missing} (has {sorted(ckpt)})")
    name = ckpt["model_name"]
    cfg = make_config(name, **ckpt["model_config"])
    image_size = _image_size(ckpt["model"], cfg.backbone, checkpoint_path)
    model = _materialise(name, cfg, ckpt["model"], image_size).float()
    if not hasattr(model, "reparameterize"):
        raise TypeError(f"{checkpoint_path}: {name} ({type(model).__name__}) has no reparameterize() to merge")
    merged = model.reparameterize().eval()

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
