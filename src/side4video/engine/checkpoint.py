"""Every checkpoint this project reads or writes: training checkpoints (full or trainable-only) and
export directories, and ``load_model`` to get the model of any of them for inference.

Training checkpoint: one explicit dict, written atomically, loadable with ``weights_only=True``.
Layout (every key is always present)::

    {
      "model_name":   preset name, e.g. "side4video-b16",
      "model_config": dataclasses.asdict(model.cfg),
      "model":        state_dict: every parameter and buffer, or (train_config.save_frozen = False)
                      the trainable parameters and all buffers, the frozen backbone then being
                      rebuilt from train_config.pretrained,
      "optimizer", "scheduler": their state_dicts,
      "scaler":       GradScaler state_dict (float16 autocast) or None,
      "epoch":        last completed epoch (1-based), "step": optimiser steps done,
      "best_metric":  best value so far of the task's validation metric (top-1 or t2v R@1), or None,
      "rng":          {"python", "numpy", "torch", "cuda"} generator states at the epoch boundary,
      "train_config": the resolved TrainConfig as a plain (grouped) dict,
      "metrics":      the run's metrics.json at this epoch (absent from older checkpoints),
    }

Checkpoints are written only from finite weights, atomically (``side4video.atomic``), in the run folder's
commit order (``run_folder.py``), and read as weights only: a truncated, foreign or code-carrying file is
a ``ValueError`` naming it.

Export directory (``write_export``; ``export.py`` writes merged ZeroI2V models)::

    DIR/model.safetensors   the model's complete state_dict
    DIR/config.json         {"model_name", "model_config", "image_size", "train_config", ...}
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..backbones.vit import BACKBONES
from ..models import build_model
from .config import TrainConfig, from_dict, to_dict

CHECKPOINT_KEYS = (
    "model_name", "model_config", "model", "optimizer", "scheduler", "scaler",
    "epoch", "step", "best_metric", "rng", "train_config",
)
MODEL_KEYS = ("model_name", "model_config", "model")  # what a model (not a run) needs
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and tuples (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global generator)
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(model: nn.Module, include_frozen: bool = True) -> dict[str, torch.Tensor]:
    """``model.state_dict()``, optionally without the frozen (``requires_grad=False``) parameters."""
    state = model.state_dict()
    if include_frozen:
        return state
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state``; keys may be missing only for frozen parameters (a trainable-only checkpoint)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise RuntimeError(f"{source}: state_dict does not match the model: missing {missing[:10]}, "
                           f"unexpected {unexpected[:10]}")


def make_checkpoint(
    model: nn.Module,
    model_name: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    step: int,
    best_metric: float | None,
    cfg: TrainConfig,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_config": dataclasses.asdict(model.cfg),
        "model": model_state(model, include_frozen=cfg.run.save_frozen),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "step": step,
        "best_metric": best_metric,
        "rng": rng_state(),
        "train_config": to_dict(cfg),
        "metrics": metrics,
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict[str, Any]:
    """A checkpoint written by ``make_checkpoint``, read as weights only; checks that every key of ``keys`` is
    present. Raises ``ValueError`` naming ``path`` for a truncated, foreign or code-carrying file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; name the file instead
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {reason[:200]})") from None
    missing = [k for k in keys if k not in ckpt] if isinstance(ckpt, dict) else list(keys)
    if missing:
        raise ValueError(f"{path}: not a side4video checkpoint (missing keys {missing})")
    return ckpt


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``"auto"``: ``output_dir/last.pt`` if it exists (else start fresh); a path: that file (must exist)."""
    if resume is None:
        return None
    if resume == "auto":
        last = Path(output_dir) / "last.pt"
        return last if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume checkpoint {resume} does not exist")
    return Path(resume)


def run_setting(ckpt: dict[str, Any], group: str, key: str) -> Any:
    """A value of the run's saved ``train_config``, grouped (``{"model": {"image_size": ...}}``) or from an
    older, flat layout (``{"image_size": ...}``); None when absent."""
    train_config = ckpt.get("train_config") or {}
    section = train_config.get(group)
    if isinstance(section, dict) and key in section:
        return section[key]
    return train_config.get(key)


def image_size_of(ckpt: dict[str, Any], backbone: str) -> int | None:
    """The run's input resolution: its ``train_config``, else the saved positional embedding ``(1 + g*g, D)``."""
    size = run_setting(ckpt, "model", "image_size")
    if size is not None:
        return int(size)
    pos = ckpt["model"].get("backbone.positional_embedding")
    return None if pos is None else math.isqrt(pos.shape[0] - 1) * BACKBONES[backbone].patch_size


def materialise(name: str, cfg: Any, state: dict[str, torch.Tensor], image_size: int | None) -> nn.Module:
    """Build preset ``name`` without initialising weights and load the complete ``state`` into it."""
    with torch.device("meta"):
        model = build_model(name, cfg, image_size=image_size)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def model_from_checkpoint(
    ckpt: dict[str, Any], source: str | Path, pretrained: str | Path | None = None
) -> nn.Module:
    """The model of a training checkpoint, in eval mode. A trainable-only checkpoint (``save_frozen=False``)
    takes its frozen weights from ``pretrained`` (default: the run's ``pretrained`` file)."""
    name, state = ckpt["model_name"], ckpt["model"]
    cfg = ckpt["model_config"]
    image_size = image_size_of(ckpt, cfg["backbone"])
    with torch.device("meta"):
        absent = build_model(name, cfg, image_size=image_size).state_dict().keys() - state.keys()
    if not absent:
        return materialise(name, cfg, state, image_size)
    pretrained = pretrained or run_setting(ckpt, "model", "pretrained")
    if pretrained is None:
        raise ValueError(f"{source}: the checkpoint lacks {len(absent)} weights (e.g. {sorted(absent)[:3]}) "
                         "and no pretrained backbone file was given to supply the frozen ones")
    model = build_model(name, cfg, pretrained=pretrained, image_size=image_size)
    load_model_state(model, state, str(source))
    return model.eval()


def write_export(model: nn.Module, model_name: str, out_dir: str | Path, **info: Any) -> Path:
    """``out_dir/model.safetensors`` (the complete state_dict) and ``out_dir/config.json`` (``model_name``,
    ``model_config``, ``num_classes``, ``num_frames``, ``image_size`` and ``info``, e.g. the run's ``train_config``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE),
              metadata={"model_name": model_name})
    config = {"model_name": model_name, "model_config": dataclasses.asdict(model.cfg),
              "num_classes": getattr(model.cfg, "num_classes", None), "num_frames": model.cfg.num_frames,
              "image_size": model.backbone.cfg.image_size, **info}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def read_export(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of an export directory (eval mode, on ``device``) and its ``config.json``."""
    directory = Path(directory)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory / file} not found; is {directory} an export directory?")
    config = json.loads((directory / CONFIG_FILE).read_text())
    state = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    return materialise(config["model_name"], config["model_config"], state, config["image_size"]), config


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    pretrained: str | Path | None = None,
    with_config: bool = False,
) -> nn.Module | tuple[nn.Module, TrainConfig]:
    """The model of a training checkpoint (``best.pt``, ``last.pt``) or an export directory, in eval mode.

    ``pretrained``: the backbone file for a checkpoint saved without its frozen weights (default: the
    run's). With ``with_config`` also the run's ``TrainConfig`` (test views, image size, data, ...).
    """
    if Path(path).is_dir():
        model, config = read_export(path, device)
        if not with_config:
            return model
        if not config.get("train_config"):
            raise ValueError(f"{path}: the export holds no training config ({CONFIG_FILE}: train_config)")
        return model, from_dict(config["train_config"], f"{path}/{CONFIG_FILE}")
    ckpt = load_checkpoint(path, keys=MODEL_KEYS)
    model = model_from_checkpoint(ckpt, path, pretrained).to(device)
    if not with_config:
        return model
    return model, from_dict(ckpt.get("train_config") or {"model": ckpt["model_name"]}, f"{path}: train_config")
