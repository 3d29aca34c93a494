"""Settings a run leaves unset, taken from its preset and sized to its data, and the line that says so.

Only keys the config leaves unset (``None``) are chosen; a value from the YAML file, a flag or ``--set`` is
kept as given (and checked against the data where it can be):

* ``model.image_size``: the preset backbone's (224; 112 for the ``tiny`` test ViT);
* ``model.frames``: the preset's (8 for recognition, 12 for retrieval, 4 for the tiny retrieval presets);
* ``model.num_classes`` (recognition): the number of names in ``data.label_names``, else the largest
  label of ``data.train_list`` + 1;
* ``optim.batch_size``: 32, but small enough for ``MIN_STEPS`` optimiser steps per epoch;
* ``optim.warmup_epochs``: 4, but at most ``WARMUP_FRACTION`` of the run;
* ``data.num_workers``: 4, but at most the CPU cores each process has.
"""

from __future__ import annotations

import dataclasses
import math
import os

from ..backbones.vit import BACKBONES
from ..data import read_annotation_list, read_label_names
from ..models import get_preset, make_config
from ..typed_config import ConfigError
from .config import TrainConfig

BATCH_SIZE, WARMUP_EPOCHS, NUM_WORKERS = 32, 4.0, 4
MIN_STEPS = 4  # optimiser steps per epoch the chosen batch size leaves at least (when the data allows)
WARMUP_FRACTION = 0.2  # of all epochs


def _replace(cfg: TrainConfig, group: str, **values) -> TrainConfig:
    return dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **values)})


def _labels(cfg: TrainConfig) -> tuple[int, str, int]:
    """(largest label, list file, its line) of the training list."""
    records = read_annotation_list(cfg.data.train_list)
    if not records:
        raise ConfigError(f"{cfg.data.train_list}: no entries")
    top = max(records, key=lambda r: r.label)
    return top.label, cfg.data.train_list, top.line


def preset_defaults(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """Image size, frames and (recognition) number of classes: what the data needs before it is read."""
    preset = get_preset(cfg.model.name)
    notes = []
    if cfg.model.image_size is None:
        size = BACKBONES[preset.config.backbone].image_size
        cfg = _replace(cfg, "model", image_size=size)
        notes.append(f"image size {size} ({cfg.model.name}'s backbone)")
    if cfg.model.frames is None:
        cfg = _replace(cfg, "model", frames=preset.config.num_frames)
        notes.append(f"{preset.config.num_frames} frames ({cfg.model.name})")
    if "num_classes" not in preset.task.model_kwargs(cfg):  # the task's model has no class head
        return cfg, notes
    if cfg.data.label_names:
        count, source = len(read_label_names(cfg.data.label_names)), f"{cfg.data.label_names}'s names"
    elif cfg.data.train_list:
        top, file, line = _labels(cfg)
        count, source = top + 1, f"largest label {top} in {file}, line {line}"
    else:
        count, source = None, None
    if cfg.model.num_classes is None:
        if count is None:
            raise ConfigError("model.num_classes is not set and there is no data.train_list or data.label_names "
                              "to count the classes from")
        cfg = _replace(cfg, "model", num_classes=count)
        notes.append(f"{count} classes ({source})")
    elif cfg.data.train_list:
        top, file, line = _labels(cfg)
        if top >= cfg.model.num_classes:
            raise ConfigError(f"{file}:{line}: label {top} but model.num_classes is {cfg.model.num_classes}")
    return cfg, notes


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def data_defaults(cfg: TrainConfig, num_train: int, world_size: int = 1) -> tuple[TrainConfig, list[str]]:
    """Batch size, warm-up and loader workers for ``num_train`` training samples over ``world_size``
    processes on this machine's cores."""
    notes = []
    if cfg.optim.batch_size is None:
        per_rank = max(num_train // world_size, 1)
        batch = max(1, min(BATCH_SIZE, per_rank // (MIN_STEPS * cfg.optim.grad_accum)))
        cfg = _replace(cfg, "optim", batch_size=batch)
        why = "" if batch == BATCH_SIZE else f" ({num_train} training samples: at least {MIN_STEPS} steps per epoch)"
        notes.append(f"batch {batch}{why}")
    if cfg.optim.warmup_epochs is None:
        warmup = min(WARMUP_EPOCHS, round(WARMUP_FRACTION * cfg.optim.epochs, 2))
        cfg = _replace(cfg, "optim", warmup_epochs=warmup)
        why = "" if warmup == WARMUP_EPOCHS else f" ({WARMUP_FRACTION:.0%} of {cfg.optim.epochs} epochs)"
        notes.append(f"warm-up {warmup:g} epochs{why}")
    if cfg.data.num_workers is None:
        cores = max(cpu_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)  # torchrun: processes here
        workers = min(NUM_WORKERS, cores)
        cfg = _replace(cfg, "data", num_workers=workers)
        notes.append(f"{workers} loader workers" + ("" if workers == NUM_WORKERS else f" ({cores} CPU cores)"))
    return cfg, notes


def inference_defaults(cfg: TrainConfig) -> TrainConfig:
    """What evaluation needs of a config that no training resolved (an imported checkpoint's): the preset's
    image size and frames, a batch of ``BATCH_SIZE`` and ``NUM_WORKERS`` loader workers (at most the cores)."""
    preset = get_preset(cfg.model.name)
    if cfg.model.image_size is None:
        cfg = _replace(cfg, "model", image_size=BACKBONES[preset.config.backbone].image_size)
    if cfg.model.frames is None:
        cfg = _replace(cfg, "model", frames=preset.config.num_frames)
    if cfg.optim.batch_size is None:
        cfg = _replace(cfg, "optim", batch_size=BATCH_SIZE)
    if cfg.data.num_workers is None:
        cfg = _replace(cfg, "data", num_workers=min(NUM_WORKERS, cpu_cores()))
    return cfg


def size_warnings(cfg: TrainConfig, num_train: int, world_size: int = 1) -> list[str]:
    """What the run's sizes (given or chosen) do badly on this data."""
    out = []
    per_rank = math.ceil(num_train / world_size)
    if cfg.optim.batch_size * cfg.optim.grad_accum >= per_rank:
        out.append(f"optim.batch_size {cfg.optim.batch_size} x grad_accum {cfg.optim.grad_accum} covers all "
                   f"{per_rank} training samples per process: one optimiser step per epoch")
    if cfg.optim.warmup_epochs >= cfg.optim.epochs:
        out.append(f"optim.warmup_epochs {cfg.optim.warmup_epochs:g} >= optim.epochs {cfg.optim.epochs}: the "
                   "learning rate never finishes warming up")
    return out


def report_defaults(cfg: TrainConfig, notes: list[str], num_train: int, world_size: int = 1) -> None:
    """Print what was chosen and why (one line), what the sizes do badly, and a random backbone."""
    if notes:
        print("defaults: " + ", ".join(notes) + " (set a key to choose another)")
    for warning in size_warnings(cfg, num_train, world_size):
        print(f"warning: {warning}")
    if cfg.model.pretrained is None:
        print(f"warning: no model.pretrained weights given: {cfg.model.name}'s "
              f"{get_preset(cfg.model.name).config.backbone} backbone starts from random weights "
              "(README: Getting weights)")


def resolve_defaults(cfg: TrainConfig, world_size: int = 1) -> tuple[TrainConfig, list[str]]:
    """Every default of ``cfg`` chosen, as training would, for ``--print-config``; when the training data
    cannot be read here, the unset keys stay unset and the note says why."""
    try:
        resolved, notes = preset_defaults(cfg)
        if resolved.data.train_list is None:
            return resolved, notes
        task = get_preset(cfg.model.name).task
        model_cfg = make_config(cfg.model.name, num_frames=resolved.model.frames, **task.model_kwargs(resolved),
                                **cfg.model.overrides)
        train_set = task.build_dataset(resolved, model_cfg, train=True)
    except FileNotFoundError as e:
        return cfg, [f"none chosen yet, the data is not readable here ({e})"]
    resolved, sized = data_defaults(resolved, len(train_set), world_size)
    return resolved, notes + sized

