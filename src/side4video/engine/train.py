"""The training loop, top to bottom: data, model, optimiser, resume, epochs, evaluation, checkpoints.

Run it with ``side4video train CONFIG.yaml`` (one process) or ``torchrun --nproc_per_node=N -m side4video
train ...`` (DDP: gloo on CPU, NCCL on CUDA). Everything a run does is decided by one ``TrainConfig``.

Reproducibility: at the start of every epoch all generators are re-seeded from (seed, epoch, rank), the
sampler shuffles with (seed, epoch) and the dataset draws each sample's augmentation from (seed, epoch,
index, attempt), and checkpoints are written at epoch boundaries with the generator states. So a run
resumed from ``last.pt`` ends with exactly the metrics of an uninterrupted run (on CPU; CUDA kernels
may be non-deterministic).

Files in ``output_dir`` (rank 0): ``config.yaml`` (resolved config), ``last.pt`` / ``best.pt``
(see ``checkpoint.py`` for the layout), ``metrics.json`` (latest evaluation), ``log.jsonl`` (one JSON
record per log step and per epoch), ``tb/`` (TensorBoard), ``bad_samples.txt`` (unreadable videos),
and whatever the task writes after an evaluation (``confusion.png`` if ``eval.confusion_matrix``).
``run_folder.py`` owns the folder: it refuses to train into another run, commits each epoch in order
(``best.pt``, ``metrics.json``, then ``last.pt``) and reconciles what a kill left when resuming.

Divergence never reaches a checkpoint: the weights are checked after every optimiser step and the model's
outputs in evaluation; a non-finite loss, weight or output stops the run, keeping the last good epoch.

Reading order: ``train`` -> ``build_run`` (data, model, optimiser, resume) -> per epoch ``train_one_epoch``
then ``end_of_epoch`` (evaluate, log, checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..methods.common import autocast_context
from ..models import create_model, get_preset, make_config
from . import run_folder
from .checkpoint import (
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    resolve_resume,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, from_dict, save_yaml, to_dict
from .distributed import DistInfo, all_gather_objects, all_reduce, distributed_context
from .optim import build_optimizer, build_scheduler
from .tasks import NonFiniteError, Task


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (third-party code may draw from it)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct seed for every (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 9_973 + rank) % 2**63


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
    """Whether every tensor's L2 norm is finite: no NaN or inf, and no weights so large that their squares
    overflow (they have diverged as surely). One fused ``_foreach_norm`` and one sync."""
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all())


def resume_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any], step: int) -> None:
    """Load the optimiser's moments from ``state`` but keep this run's hyper-parameters (lr, weight decay,
    betas, ...), and put the freshly built schedule at ``step``: a resumed run follows the schedule of its
    own, possibly changed, settings (identical to the saved one when nothing changed)."""
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


@dataclasses.dataclass
class Run:
    """Everything a training run holds between epochs."""

    cfg: TrainConfig
    info: DistInfo
    task: Task
    out: Path
    train_set: Dataset
    train_loader: DataLoader
    val_loader: Any  # the task's evaluation data, or None
    model: nn.Module
    ddp_model: nn.Module  # ``model`` or its DDP wrapper (the one that runs the forward pass)
    params: list[nn.Parameter]  # trainable parameters
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    start_epoch: int = 1
    step: int = 0  # optimiser steps done
    best: float | None = None  # best value of the task's metric
    metrics: dict = dataclasses.field(default_factory=dict)  # what metrics.json holds


def train(cfg: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None) -> dict[str, Any]:
    """Train ``cfg.model.name`` and return the final metrics (also written to ``output_dir/metrics.json``).

    ``train_set`` / ``val_set`` replace the datasets built from ``train_list`` / ``val_list``; they must
    yield the items of the task's dataset (``VideoClipDataset``, or ``CaptionDataset`` for retrieval).
    """
    with distributed_context(cfg.run.device) as info:
        run = build_run(cfg, info, train_set, val_set)
        log = RunLog(run.out, info, cfg.run.tensorboard)
        try:
            for epoch in range(run.start_epoch, cfg.optim.epochs + 1):
                train_loss, elapsed, bad = train_one_epoch(run, epoch, log)
                end_of_epoch(run, epoch, train_loss, elapsed, bad, log)
        finally:
            log.close()
        return run.metrics


def make_model(cfg: TrainConfig, pretrained: bool = True) -> nn.Module:
    """The run's model: its preset at the run's frames, image size and overrides, around the pretrained
    backbone file (``pretrained=False``: a random one, e.g. on the meta device)."""
    task = get_preset(cfg.model.name).task
    return create_model(cfg.model.name, num_frames=cfg.model.frames, image_size=cfg.model.image_size,
                        pretrained=cfg.model.pretrained if pretrained else None, **task.model_kwargs(cfg),
                        **cfg.model.overrides)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups: ``lr``; ``lr * backbone_lr_mult`` for the trained parts inside
    the backbone; ``lr_clip`` for CLIP's own parts of retrieval models; weight decay except on the
    ``no_decay`` categories (see ``optim.param_groups``)."""
    o = cfg.optim
    rates = {"clip": o.lr_clip, "backbone": o.lr * o.backbone_lr_mult}
    return build_optimizer(model, o.lr, o.weight_decay, o.betas, o.eps, group_lrs=rates, no_decay=o.no_decay)


def build_run(cfg: TrainConfig, info: DistInfo, train_set: Dataset | None, val_set: Dataset | None) -> Run:
    """Data, model, optimiser and schedule; then the state of ``last.pt`` when resuming."""
    device, out = info.device, Path(cfg.run.output_dir)
    task = get_preset(cfg.model.name).task
    model_cfg = make_config(cfg.model.name, num_frames=cfg.model.frames, **task.model_kwargs(cfg),
                            **cfg.model.overrides)

    # ---- data (first: a mistyped path leaves no empty run folder behind) ---------------------------
    if train_set is None:
        train_set = task.build_dataset(cfg, model_cfg, train=True)
    if val_set is None and cfg.data.val_list:
        val_set = task.build_dataset(cfg, model_cfg, train=False)
    train_loader = task.make_loader(train_set, cfg, info, train=True)
    val_loader = task.make_loader(val_set, cfg, info, train=False) if val_set is not None else None
    resume_from = resolve_resume(cfg.run.resume, out)
    ckpt = load_checkpoint(resume_from, map_location=device) if resume_from is not None else None
    if ckpt is not None:
        saved = to_dict(from_dict(ckpt["train_config"], f"{resume_from}: train_config"))
        refused = run_folder.refused_changes(saved, to_dict(cfg))
        if refused:
            raise ConfigError(f"{resume_from}: cannot resume with changed settings: {', '.join(refused)}; "
                              "train into a new --output-dir (or --overwrite) to change them")
    if info.is_main:  # a run already in the folder is continued, replaced on request, or refused
        run_folder.prepare(out, resuming=ckpt is not None, overwrite=cfg.run.overwrite,
                           resume_auto=cfg.run.resume == "auto")
        save_yaml(cfg, out / "config.yaml")

    # ---- model, optimiser, schedule ------------------------------------------------------------------
    seed_everything(cfg.run.seed)  # identical initial weights on every rank
    model = make_model(cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    ddp_model = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if info.enabled else model
    )
    o = cfg.optim
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / o.grad_accum)
    total_steps = steps_per_epoch * o.epochs
    warmup_steps = min(round(o.warmup_epochs * steps_per_epoch), total_steps)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, o.min_lr_ratio, o.warmup_start, o.cosine)
    amp_dtype = getattr(torch, o.amp_dtype)
    use_amp = o.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    run = Run(cfg, info, task, out, train_set, train_loader, val_loader, model, ddp_model, params, optimizer,
              scheduler, scaler, use_amp, amp_dtype)
    if info.is_main:
        n_train = sum(p.numel() for p in params)
        print(f"{cfg.model.name}: {n_train / 1e6:.2f} M trainable parameters; {len(train_set)} training samples, "
              f"{steps_per_epoch} steps/epoch x {o.epochs} epochs on {info.world_size} x {device}")

    # ---- resume -----------------------------------------------------------------------------------
    if ckpt is not None:
        load_model_state(model, ckpt["model"], str(resume_from))
        resume_schedule(optimizer, scheduler, ckpt["optimizer"], ckpt["step"])  # this run's schedule
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        run.start_epoch, run.step, run.best = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_metric"]
        if info.is_main:
            run.metrics, run.best = run_folder.reconcile(out, ckpt)  # whatever a kill left after last.pt
            print(f"resumed from {resume_from} at epoch {ckpt['epoch']}, step {run.step}")
        run.metrics, run.best = all_gather_objects((run.metrics, run.best), info)[0]  # rank 0's
    return run


def train_one_epoch(run: Run, epoch: int, log: RunLog) -> tuple[float, float, list]:
    """One pass over the training data; returns (mean loss over clips, seconds, bad samples seen)."""
    cfg, info, device = run.cfg, run.info, run.info.device
    seed_everything(epoch_seed(cfg.run.seed, epoch, info.rank))
    run.train_loader.sampler.set_epoch(epoch)
    if hasattr(run.train_set, "set_epoch"):
        run.train_set.set_epoch(epoch)
    run.model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # sum over clips of the loss
    clip_count, bad, pending, synced = 0, [], 0, False
    accum, n_batches = cfg.optim.grad_accum, len(run.train_loader)
    tic, window_clips, window_start = time.perf_counter(), 0, time.perf_counter()
    bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{cfg.optim.epochs}", unit="batch", disable=not info.is_main,
               dynamic_ncols=True)
    for i, batch in enumerate(run.train_loader):
        bad.extend(batch["bad"])
        group_end = (i + 1) % accum == 0 or i + 1 == n_batches
        group_size = min(accum, n_batches - (i // accum) * accum)
        if all_ranks_have_clips(batch, info):
            # DDP all-reduces gradients only on the last micro-batch of an accumulation group.
            sync = contextlib.nullcontext() if group_end or not info.enabled else run.ddp_model.no_sync()
            with sync:
                with autocast_context(device, run.use_amp, run.amp_dtype):
                    loss, clips = run.task.loss(run.ddp_model, batch, device, cfg)  # mean over the clips
                check_finite(loss, info, epoch, run.step, i, run.out)
                run.scaler.scale(loss / group_size).backward()
            loss_sum += loss.detach().double() * clips
            clip_count += clips
            window_clips += clips * info.world_size
            pending, synced = pending + 1, group_end
        if group_end and pending:
            if info.enabled and not synced:
                average_gradients(run.params, info)
            run.scaler.unscale_(run.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.optim.clip_grad or math.inf)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            if not weights_finite(run.params):  # identical on every rank: no reduction needed
                raise NonFiniteError(f"the weights diverged (non-finite values or norm) at epoch {epoch}, "
                                     f"optimiser step {run.step + 1}; stopping; {_kept(run.out)}")
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            run.step, pending = run.step + 1, 0
            if run.step % cfg.run.log_every == 0:
                now = time.perf_counter()
                values = {"loss": loss.item(), "lr": max(g["lr"] for g in run.optimizer.param_groups),
                          "grad_norm": grad_norm.item(), "clips_per_s": window_clips / (now - window_start),
                          "epoch": epoch}
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                clips_s=f"{values['clips_per_s']:.1f}")
                log.record("train", run.step, values)
                window_clips, window_start = 0, now
        bar.update(1)
    bar.close()
    totals = all_reduce(torch.stack([loss_sum, torch.tensor(float(clip_count), device=device).double()]), info)
    return (totals[0] / totals[1].clamp(min=1)).item(), time.perf_counter() - tic, bad


def end_of_epoch(run: Run, epoch: int, train_loss: float, elapsed: float, bad: list, log: RunLog) -> None:
    """Evaluate (every ``eval_every`` epochs and at the last), log, and commit the epoch: ``best.pt``,
    ``metrics.json``, then ``last.pt``. A failed evaluation still commits the epoch, then raises; a
    non-finite model output (diverged weights) stops the run without writing anything."""
    cfg, info, task = run.cfg, run.info, run.task
    log.bad_samples([s for rank_bad in all_gather_objects(bad, info) for s in rank_bad])
    evaluated = run.val_loader is not None and (epoch % cfg.eval.eval_every == 0 or epoch == cfg.optim.epochs)
    is_best, val, eval_error = False, None, None
    run.metrics = {**run.metrics, "epoch": epoch, "train_loss": train_loss}  # keeps the last evaluation's
    if evaluated:
        try:
            val, results = task.evaluate(run.model, run.val_loader, cfg, info)
        except NonFiniteError as e:
            raise NonFiniteError(f"epoch {epoch}: {e}; stopping; {_kept(run.out)}") from None
        except (ValueError, OSError) as e:  # the epoch is still committed below, then the error reported
            eval_error = e
            log.bad_samples(getattr(e, "bad", []))
        if val is not None:
            log.bad_samples(results.bad)
            is_best = run.best is None or val[task.metric] > run.best
            run.best = val[task.metric] if is_best else run.best
            run.metrics = {"epoch": epoch, "train_loss": train_loss, "val": val, f"best_{task.metric}": run.best}
            if info.is_main:
                task.save_results(results, cfg, run.out)
    log.record("epoch", run.step, {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": elapsed,
                                   **({"val": val} if val is not None else {})})
    if info.is_main:
        val_text = f", val {task.describe(val)}" if val is not None else ""
        print(f"epoch {epoch}: train loss {train_loss:.4f}{val_text} ({elapsed:.0f} s)")
        ckpt = make_checkpoint(run.model, cfg.model.name, run.optimizer, run.scheduler, run.scaler, epoch,
                               run.step, run.best, cfg, run.metrics)
        run_folder.commit_epoch(run.out, ckpt, run.metrics, is_best)
    if eval_error is not None:
        raise ValueError(f"epoch {epoch} is saved in {run.out / run_folder.LAST}, but its evaluation failed: "
                         f"{eval_error} (unreadable videos are listed in {run.out / 'bad_samples.txt'})")
