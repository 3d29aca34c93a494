"""Evaluate a checkpoint (or an export directory) on its run's validation data, with its task's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models import get_preset
from .checkpoint import load_model
from .config import TrainConfig, replace
from .distributed import distributed_context


def evaluate_checkpoint(
    path: str | Path, device: str = "auto", progress: bool = False, **changes: Any
) -> tuple[dict, Any, TrainConfig]:
    """Metrics, per-sample results and config of checkpoint ``path`` on its run's validation data.

    ``changes`` replace keys of the run's ``TrainConfig`` (flat or dotted: ``val_list``, ``test_crops``,
    ...; None keeps the run's value). Under torchrun every rank gets the metrics.
    """
    with distributed_context(device) as info:
        model, cfg = load_model(path, info.device, with_config=True)
        cfg = replace(cfg, f"{path}: changes", **changes)
        task = get_preset(cfg.model.name).task
        model_cfg = model.cfg
        loader = task.make_loader(task.build_dataset(cfg, model_cfg, train=False), cfg, info, train=False)
        metrics, results = task.evaluate(model, loader, cfg, info, progress=progress)
        return metrics, results, cfg
