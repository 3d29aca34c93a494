"""The training loop, top to bottom: data, model, optimiser, resume, epochs, evaluation, checkpoints.

Run it with ``side4video train CONFIG.yaml`` (one process) or ``torchrun --nproc_per_node=N -m side4video
train ...`` (DDP: gloo on CPU, NCCL on CUDA). Everything a run does is decided by one ``TrainConfig``.

Reproducibility: at the start of every epoch all generators are re-seeded from (seed, epoch, rank), the
sampler shuffles with (seed, epoch) and the dataset draws its augmentations from (seed, epoch, index), and
checkpoints are written at epoch boundaries with the generator states. So a run resumed from ``last.pt``
ends with exactly the metrics of an uninterrupted run (on CPU; CUDA kernels may be non-deterministic).

Files in ``output_dir`` (rank 0): ``config.yaml`` (resolved config), ``last.pt`` / ``best.pt``
(see ``checkpoint.py`` for the layout), ``metrics.json`` (latest evaluation), ``log.jsonl`` (one JSON
record per log step and per epoch), ``tb/`` (TensorBoard), ``bad_samples.txt`` (unreadable videos),
``confusion.png`` (if ``confusion_matrix``).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..models import get_preset
from . import run_folder
from .checkpoint import (
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    resolve_resume,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, from_dict, save_yaml, to_dict
from .distributed import DistInfo, all_gather_objects, all_reduce, broadcast_object, cleanup, init_distributed
from .evaluate import NonFiniteError, autocast_context, confusion_matrix, save_confusion_matrix
from .optim import build_scheduler
from .tasks import get_task


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (third-party code may draw from it)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct seed for every (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 9_973 + rank) % 2**63


def make_loader(dataset: Dataset, cfg: TrainConfig, info: DistInfo, train: bool) -> DataLoader | Any:
    """The loader of ``cfg.model``'s task over ``dataset``, sharded over ranks (see ``tasks.py``)."""
    return get_task(get_preset(cfg.model).task).make_loader(dataset, cfg, info, train)


class RunLog:
    """Rank 0's outputs: console, ``log.jsonl``, TensorBoard and the de-duplicated ``bad_samples.txt``."""

    def __init__(self, out: Path, info: DistInfo, tensorboard: bool) -> None:
        self.active = info.is_main
        self.out = out
        self.writer = None
        self.seen_bad: set[tuple[str, str]] = set()
        if not self.active:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
        bad_file = out / "bad_samples.txt"
        if bad_file.is_file():  # a resumed run keeps the earlier reports
            self.seen_bad = {tuple(line.rstrip("\n").split("\t", 1)) for line in bad_file.open() if "\t" in line}

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"type": kind, "step": step, "time": time.time(), **values}) + "\n")
        if self.writer is not None:
            for key, value in _flatten(values).items():
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def bad_samples(self, samples: list) -> None:
        if not self.active:
            return
        new = [(s.path, s.reason) for s in samples if (s.path, s.reason) not in self.seen_bad]
        new = list(dict.fromkeys(new))
        if not new:
            return
        self.seen_bad.update(new)
        with open(self.out / "bad_samples.txt", "a") as f:
            f.writelines(f"{path}\t{reason}\n" for path, reason in new)
        for path, reason in new:
            tqdm.write(f"skipped bad sample {path}: {reason}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def all_ranks_have_clips(batch: dict[str, Any], info: DistInfo) -> bool:
    """False when this batch is empty (every sample bad) on any rank: then every rank skips it."""
    count = torch.tensor([batch["index"].numel()], device=info.device)
    return all_reduce(count, info, dist.ReduceOp.MIN).item() > 0


def _kept(out: Path) -> str:
    last = out / run_folder.LAST
    return f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint was written"


def check_finite(loss: torch.Tensor, info: DistInfo, epoch: int, step: int, batch_idx: int, out: Path) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=info.device)
    if all_reduce(bad, info).item() > 0:
        raise NonFiniteLossError(
            f"non-finite loss ({loss.item()}) at epoch {epoch}, optimiser step {step}, batch {batch_idx}; "
            f"stopping; {_kept(out)}"
        )


def weights_finite(params: list[torch.Tensor]) -> bool:
    """Whether every value is finite and the L2 norm of each tensor too (weights so large that their squares
    overflow have diverged as surely as NaN ones): one fused ``_foreach_norm`` and one sync."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all())


def resume_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any], step: int) -> None:
    """Load the optimiser's moments from ``state`` but keep this run's hyper-parameters (lr, weight decay,
    betas...), and put the freshly built schedule at ``step``: a resumed run follows the schedule of its
    own (possibly changed) settings."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, hyper, strict=True):
        group.update(own)
    scheduler.last_epoch = step
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Manual DDP all-reduce, for an accumulation group whose last micro-batch was skipped."""
    for p in params:
        if p.grad is not None:
            all_reduce(p.grad, info).div_(info.world_size)


def train(cfg: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` and return the final metrics (also written to ``output_dir/metrics.json``).

    ``train_set`` / ``val_set`` replace the datasets built from ``train_list`` / ``val_list``; they must
    yield the items of the task's dataset (``VideoClipDataset``, or ``CaptionDataset`` for retrieval).
    """
    owns_group = not dist.is_initialized()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, train_set, val_set)
    finally:
        if owns_group:
            cleanup()


def _train(cfg: TrainConfig, info: DistInfo, train_set: Dataset | None, val_set: Dataset | None) -> dict:
    device, out = info.device, Path(cfg.output_dir)
    task = get_task(get_preset(cfg.model).task)

    # ---- data -------------------------------------------------------------------------------------
    if train_set is None:
        train_set = task.build_dataset(cfg, train=True)
    if val_set is None and cfg.val_list:
        val_set = task.build_dataset(cfg, train=False)
    train_loader = task.make_loader(train_set, cfg, info, train=True)
    val_loader = task.make_loader(val_set, cfg, info, train=False) if val_set is not None else None
    resume_from = resolve_resume(cfg.resume, out)
    ckpt = load_checkpoint(resume_from, map_location=device) if resume_from is not None else None
    if ckpt is not None:
        refused = run_folder.refused_changes(to_dict(from_dict(ckpt["train_config"], f"{resume_from}")), to_dict(cfg))
        if refused:
            raise ConfigError(f"{resume_from}: cannot resume with changed settings: {', '.join(refused)}; "
                              "train into a new --output-dir (or --overwrite) to change them")
    if info.is_main:  # only once the data could be read: a mistyped path leaves no empty run behind
        run_folder.prepare(out, resuming=ckpt is not None, replace=cfg.overwrite or cfg.resume == "auto")
        save_yaml(cfg, out / "config.yaml")

    # ---- model, optimiser, schedule ------------------------------------------------------------------
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = task.build_model(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    ddp_model = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if info.enabled else model
    )
    optimizer = task.build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, cfg.min_lr_ratio)
    amp_dtype = getattr(torch, cfg.amp_dtype)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    if info.is_main:
        n_train = sum(p.numel() for p in params)
        print(f"{cfg.model}: {n_train / 1e6:.2f} M trainable parameters; {len(train_set)} training videos, "
              f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs on {info.world_size} x {device}")

    # ---- resume -----------------------------------------------------------------------------------
    start_epoch, step, best, metrics = 1, 0, None, {}  # best: the task's metric (checkpoint key best_top1)
    if ckpt is not None:
        load_model_state(model, ckpt["model"], str(resume_from))
        resume_schedule(optimizer, scheduler, ckpt["optimizer"], ckpt["step"])  # this run's schedule
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_top1"]
        metrics = ckpt.get("metrics", {})
        if info.is_main:
            best = run_folder.reconcile(out, ckpt, metrics)  # whatever a kill left after last.pt
            print(f"resumed from {resume_from} at epoch {ckpt['epoch']}, step {step}")
        best = broadcast_object(best, info)
        del ckpt
    log = RunLog(out, info, cfg.tensorboard)

    for epoch in range(start_epoch, cfg.epochs + 1):
        # ---- one epoch of training ---------------------------------------------------------------
        seed_everything(epoch_seed(cfg.seed, epoch, info.rank))
        train_loader.sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum over clips of the loss
        clip_count, bad, pending, synced = 0, [], 0, False
        n_batches = len(train_loader)
        tic, window_clips, window_start = time.perf_counter(), 0, time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not info.is_main,
                   dynamic_ncols=True)
        for i, batch in enumerate(train_loader):
            bad.extend(batch["bad"])
            group_end = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches
            group_size = min(cfg.grad_accum, n_batches - (i // cfg.grad_accum) * cfg.grad_accum)
            if all_ranks_have_clips(batch, info):
                # DDP all-reduces gradients only on the last micro-batch of an accumulation group.
                sync = contextlib.nullcontext() if group_end or not info.enabled else ddp_model.no_sync()
                with sync:
                    with autocast_context(device, use_amp, amp_dtype):
                        loss, clips = task.loss(ddp_model, batch, cfg, device)  # mean over (B*R) clips
                    check_finite(loss, info, epoch, step, i, out)
                    scaler.scale(loss / group_size).backward()
                loss_sum += loss.detach().double() * clips
                clip_count += clips
                window_clips += clips * info.world_size
                pending, synced = pending + 1, group_end
            if group_end and pending:
                if info.enabled and not synced:
                    average_gradients(params, info)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf)
                scaler.step(optimizer)
                scaler.update()
                if not weights_finite(params):  # identical on every rank: no reduction needed
                    raise NonFiniteError(f"the weights diverged (non-finite values or norm) at epoch {epoch}, "
                                         f"optimiser step {step + 1}; stopping; {_kept(out)}")
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step, pending = step + 1, 0
                if step % cfg.log_every == 0:
                    now = time.perf_counter()
                    values = {"loss": loss.item(), "lr": max(g["lr"] for g in optimizer.param_groups),
                              "grad_norm": grad_norm.item(), "clips_per_s": window_clips / (now - window_start),
                              "epoch": epoch}
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                    clips_s=f"{values['clips_per_s']:.1f}")
                    log.record("train", step, values)
                    window_clips, window_start = 0, now
            bar.update(1)
        bar.close()
        totals = all_reduce(torch.stack([loss_sum, torch.tensor(float(clip_count), device=device).double()]), info)
        train_loss = (totals[0] / totals[1].clamp(min=1)).item()
        log.bad_samples([s for rank_bad in all_gather_objects(bad, info) for s in rank_bad])

        # ---- evaluation ----------------------------------------------------------------------------
        evaluated = val_loader is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
        is_best, val, eval_error = False, None, None
        metrics = {**metrics, "epoch": epoch, "train_loss": train_loss}  # keeps the last evaluation's numbers
        if evaluated:
            try:
                val, preds = task.evaluate(model, val_loader, cfg, info)
            except NonFiniteError as e:
                raise NonFiniteError(f"epoch {epoch}: {e}; stopping; {_kept(out)}") from None
            except (ValueError, OSError) as e:  # the epoch is still saved below, then the error reported
                val, preds, eval_error = None, None, e
                log.bad_samples(getattr(e, "bad", []))
            if preds is not None:
                log.bad_samples(preds.bad)
            if val is not None:
                is_best = best is None or val[task.metric] > best
                best = val[task.metric] if is_best else best
                metrics = {"epoch": epoch, "train_loss": train_loss, "val": val, f"best_{task.metric}": best}
                if cfg.confusion_matrix and info.is_main:
                    save_confusion_matrix(confusion_matrix(preds.probs, preds.labels), out / "confusion.png",
                                          _label_names(cfg.label_names))
        elapsed = time.perf_counter() - tic
        log.record("epoch", step, {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": elapsed,
                                   **({"val": val} if val is not None else {})})
        if info.is_main:
            val_text = f", val {task.describe(val)}" if val is not None else ""
            print(f"epoch {epoch}: train loss {train_loss:.4f}{val_text} ({elapsed:.0f} s)")

        # ---- checkpoint and metrics at the epoch boundary: best.pt, metrics.json, then last.pt ---------------
        if info.is_main:
            ckpt = make_checkpoint(model, cfg.model, optimizer, scheduler, scaler, epoch, step, best, cfg, metrics)
            run_folder.commit_epoch(out, ckpt, metrics, is_best)
        if eval_error is not None:
            raise ValueError(f"epoch {epoch} is saved in {out / run_folder.LAST}, but its evaluation failed: "
                             f"{eval_error} (unreadable videos are listed in {out / 'bad_samples.txt'})")
    log.close()
    return metrics


def _label_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    from ..data import read_label_names

    return read_label_names(path)
