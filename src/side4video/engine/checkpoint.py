"""Training checkpoints: one explicit dict, written atomically, loadable with ``weights_only=True``.

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
      "best_top1":    best validation top-1 so far (%), or None,
      "rng":          {"python", "numpy", "torch", "cuda"} generator states at the epoch boundary,
      "train_config": the resolved TrainConfig as a plain dict,
      "metrics":      the run's metrics.json at this epoch (absent from older checkpoints),
    }

Checkpoints are written only from finite weights, and in the run folder's commit order (``run_folder.py``).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import build_model
from .config import TrainConfig, from_dict, to_dict

CHECKPOINT_KEYS = (
    "model_name", "model_config", "model", "optimizer", "scheduler", "scaler",
    "epoch", "step", "best_top1", "rng", "train_config",
)


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
    best_top1: float | None,
    cfg: TrainConfig,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_config": dataclasses.asdict(model.cfg),
        "model": model_state(model, include_frozen=cfg.save_frozen),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "step": step,
        "best_top1": best_top1,
        "rng": rng_state(),
        "train_config": to_dict(cfg),
        "metrics": metrics,
    }


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", keys: tuple[str, ...] = CHECKPOINT_KEYS
) -> dict[str, Any]:
    """A checkpoint written by ``make_checkpoint``, read as weights only; checks that every key is present.

    Raises ``ValueError`` naming ``path`` for a truncated, foreign or code-carrying file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; name the file instead
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {reason[:200]})") from None
    missing = [k for k in keys if k not in ckpt] if isinstance(ckpt, dict) else list(keys)
    if missing:
        raise ValueError(f"{path}: not a side4video training checkpoint (missing keys {missing})")
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


def load_model_for_inference(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """The model of a training checkpoint (or of a merged export directory) in eval mode, and the run's
    ``TrainConfig``."""
    if Path(path).is_dir():
        from ..export import CONFIG_FILE, load_exported

        config = json.loads((Path(path) / CONFIG_FILE).read_text()) if (Path(path) / CONFIG_FILE).is_file() else {}
        if not config.get("train_config"):
            raise ValueError(f"{path}: not a merged export with its training config ({CONFIG_FILE})")
        return load_exported(path, device), from_dict(config["train_config"], f"{path}/{CONFIG_FILE}")
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["train_config"], f"{path}: train_config")
    # With the frozen weights inside the checkpoint there is nothing to load from cfg.pretrained.
    pretrained = None if cfg.save_frozen else cfg.pretrained
    if not cfg.save_frozen and pretrained is None:
        raise ValueError(f"{path} holds no frozen backbone weights (save_frozen=false) and its run had no "
                         "pretrained backbone file to rebuild them from")
    model = build_model(ckpt["model_name"], ckpt["model_config"], pretrained=pretrained, image_size=cfg.image_size)
    load_model_state(model, ckpt["model"], str(path))
    return model.to(device).eval(), cfg
