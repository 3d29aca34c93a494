"""The run folder: which files a run owns, the order it commits them in, and what a resume reconciles.

Per epoch rank 0 writes, each file atomically (``side4video.atomic``): ``best.pt`` (when the epoch is the
best so far), then ``metrics.json``, then ``last.pt``: the commit point. A kill before ``last.pt`` is
replaced leaves the previous epoch committed, and the resumed run repeats the epoch; so at any moment
``last.pt`` is a complete checkpoint, and whatever a kill left is put right by :func:`reconcile`:

* ``metrics.json`` is rewritten from the metrics stored in ``last.pt``;
* ``best.pt`` newer than ``last.pt`` (a kill between the two) is kept, and its value becomes the best to
  beat, so the repeated epoch rewrites it only if it does better;
* ``log.jsonl`` loses the records of the uncommitted steps, so the repeated epoch does not log twice;
* temporary files of killed writes are removed.

A folder that already holds a run is never trained into from scratch by accident: :func:`prepare` refuses
unless the run is resumed or ``overwrite`` is set (which first deletes the old run's files).

A resumed run may change the settings in :data:`RESUMABLE`: the optimisation schedule (recomputed from the
checkpoint's step with the new values), evaluation, logging, the runtime and where files are (a moved
dataset is taken to hold the same data). Any other difference from the checkpoint's run (the model, the
clips it sees, the batch and step structure, the seed, the precision) is refused, listing the keys:
:func:`refused_changes`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_copy, atomic_save, atomic_write_text, remove_stale_temps
from .config import ConfigError

LAST, BEST, METRICS, LOG = "last.pt", "best.pt", "metrics.json", "log.jsonl"
# everything a run writes into its folder (removed by ``overwrite``)
RUN_FILES = (LAST, BEST, METRICS, LOG, "config.yaml", "bad_samples.txt", "confusion.png", "tb")


RESUMABLE = frozenset({
    # schedule and optimiser: recomputed at the checkpoint's step
    "optim.epochs", "optim.warmup_epochs", "optim.lr", "optim.lr_clip", "optim.min_lr_ratio",
    "optim.weight_decay", "optim.betas", "optim.eps", "optim.clip_grad", "optim.label_smoothing",
    "optim.mixup_alpha",
    # evaluation and logging
    "eval.eval_every", "eval.test_crops", "eval.test_clips", "eval.test_resize", "eval.test_segment_position",
    "eval.eval_batch_size",
    "eval.eval_chunk", "eval.confusion_matrix", "eval.sim_chunk", "eval.dsl", "data.val_split",
    "run.log_every", "run.tensorboard",
    # runtime, and where files are
    "run.device", "data.num_workers", "data.bad_sample_policy", "run.output_dir", "run.resume", "run.overwrite",
    "data.train_list", "data.val_list", "data.data_root", "data.label_names", "model.pretrained",
    "data.tokenizer",
})


def _leaves(config: dict[str, Any]) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (dict-valued settings such as overrides stay whole)."""
    return {f"{group}.{key}": value for group, keys in config.items() for key, value in keys.items()}


def refused_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key (old -> new)"`` for every setting outside :data:`RESUMABLE` that differs between the
    checkpoint's run (``saved``) and the resumed one (``new``), both grouped ``to_dict`` configs."""
    saved, new = _leaves(saved), _leaves(new)
    keys = sorted((saved.keys() | new.keys()) - RESUMABLE)
    return [f"{k} ({saved.get(k)!r} -> {new.get(k)!r})" for k in keys if saved.get(k) != new.get(k)]


def holds_run(out: str | Path) -> bool:
    """Whether ``out`` already holds (part of) a training run."""
    return any((Path(out) / name).exists() for name in (LAST, BEST, METRICS, LOG))


def prepare(out: str | Path, resuming: bool, overwrite: bool, resume_auto: bool) -> None:
    """Create ``out`` for a run. A run already there is continued (``resuming``), or deleted: on
    ``overwrite``, or with ``resume_auto`` when it is a first epoch killed before its ``last.pt`` (no
    ``best.pt`` of a later epoch); else refused."""
    out = Path(out)
    if holds_run(out) and not resuming:
        killed_first_epoch = resume_auto and not (out / LAST).exists() and (_stored(out / BEST, "epoch") or 1) <= 1
        if not (overwrite or killed_first_epoch):
            raise ConfigError(f"{out} already holds a training run ({LAST}, {METRICS}, ...); pass --resume auto "
                              "to continue it or --overwrite to replace it")
        for name in RUN_FILES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)


def commit_epoch(out: str | Path, ckpt: dict[str, Any], metrics: dict[str, Any], is_best: bool) -> None:
    """Write one epoch's files in commit order: ``best.pt``, ``metrics.json``, then ``last.pt`` (a copy of
    that ``best.pt`` when the epoch is the best: the checkpoint is serialised once)."""
    out = Path(out)
    if is_best:
        atomic_save(ckpt, out / BEST)
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", out / METRICS)
    if is_best:
        atomic_copy(out / BEST, out / LAST)
    else:
        atomic_save(ckpt, out / LAST)


def _stored(path: Path, key: str) -> Any:
    """One entry of a checkpoint file, without reading its tensors into memory; None if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(key)
    except Exception:  # a partial best.pt cannot exist (atomic writes); anything else is not ours
        return None


def reconcile(out: str | Path, ckpt: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """Bring ``out`` back to the state committed by ``ckpt`` (the ``last.pt`` resumed from); returns the
    run's metrics at that epoch and the best value the resumed run has to beat."""
    out = Path(out)
    remove_stale_temps(out)
    metrics = ckpt.get("metrics")
    if metrics is None:  # a checkpoint from before metrics were stored in it: metrics.json, if it matches
        stored = json.loads((out / METRICS).read_text()) if (out / METRICS).is_file() else {}
        metrics = stored if stored.get("epoch") == ckpt["epoch"] else {}
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", out / METRICS)
    log = out / LOG
    if log.is_file():
        kept = []
        for line in log.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record.get("step", 0) <= ckpt["step"] and record.get("epoch", 0) <= ckpt["epoch"]:
                kept.append(line)
        atomic_write_text("".join(kept), log)
    best = ckpt["best_metric"]
    if (out / BEST).is_file() and (_stored(out / BEST, "epoch") or 0) > ckpt["epoch"]:
        newer = _stored(out / BEST, "best_metric")
        if newer is not None and (best is None or newer > best):
            best = newer
    return metrics, best


__all__ = ["RESUMABLE", "RUN_FILES", "commit_epoch", "holds_run", "prepare", "reconcile", "refused_changes"]
