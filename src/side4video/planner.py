"""Pick the per-GPU batch, gradient accumulation and side-network checkpointing for a GPU's memory.

The memory of a training step is the profiler's prediction (``predict_memory``: one AdamW step simulated on
the meta device at the training precision). A GPU of ``gpu_memory`` bytes offers
``usable = gpu_memory - CONTEXT_BYTES - ALLOCATOR_FRACTION * gpu_memory`` to it: the CUDA context and the
cuBLAS / cuDNN handles live outside PyTorch's allocator (``CONTEXT_BYTES``), and the caching allocator's
blocks never pack perfectly (``ALLOCATOR_FRACTION``).

The memory of a step is affine in the batch size, so two predictions give a first guess, and the answer is
then verified: the chosen batch fits and one more sample does not.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .models import get_preset
from .profiler import predict_memory
from .units import GB

CONTEXT_BYTES = 1 << 30  # CUDA context, cuBLAS / cuDNN workspaces
ALLOCATOR_FRACTION = 0.10  # caching-allocator fragmentation
# One unit everywhere (side4video.units): GB = 10**9 bytes; GiB = 2**30 bytes is accepted as written.
_UNITS = {"": 1, "B": 1, "KB": 10**3, "KIB": 1 << 10, "MB": 10**6, "MIB": 1 << 20,
          "GB": 10**9, "GIB": 1 << 30, "TB": 10**12, "TIB": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"24GB"`` (24 * 10**9), ``"24 GiB"`` (24 * 2**30: how GPU memory is usually sold), ``"40960MiB"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 24GiB, 80GiB or 25.7GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def usable_bytes(gpu_memory: int) -> int:
    """What a training step may use on a GPU of ``gpu_memory`` bytes (see the module docstring)."""
    return int(gpu_memory - CONTEXT_BYTES - ALLOCATOR_FRACTION * gpu_memory)


@dataclass
class Fit:
    """The largest per-GPU batch that fits, for one checkpointing choice."""

    checkpointing: bool
    batch_size: int  # 0: not even one clip fits
    train_memory_bytes: int  # predicted peak at batch_size (at batch 1 when nothing fits)


@dataclass
class Plan:
    model: str
    frames: int
    precision: str
    gpu_memory_bytes: int
    usable_bytes: int
    num_gpus: int
    global_batch: int | None
    batch_size: int
    grad_accum: int
    checkpointing: bool
    train_memory_bytes: int
    options: list[Fit]

    def to_dict(self) -> dict:
        return asdict(self)


def largest_batch(
    name: str, budget: int, frames: int, precision: str, checkpointing: bool, num_classes: int = 400,
    limit: int = 4096,
) -> Fit:
    """The largest batch whose predicted step memory is at most ``budget`` bytes (up to ``limit``)."""
    overrides = {"checkpoint_parts": True} if checkpointing else {}

    def memory(batch: int) -> int:
        # gradients counted as alive during the forward (every micro-batch of an accumulation group but the
        # first), so that the plan holds with accumulation too
        return predict_memory(name, batch, frames, precision, num_classes=num_classes, hold_grads=True,
                              **overrides).peak

    one = memory(1)
    if one > budget:
        return Fit(checkpointing, 0, one)
    per_clip = max(1, memory(2) - one)
    batch = min(limit, max(1, 1 + (budget - one) // per_clip))
    fits = memory(batch)
    while fits > budget and batch > 1:
        batch -= 1
        fits = memory(batch)
    while batch < limit and (more := memory(batch + 1)) <= budget:
        batch, fits = batch + 1, more
    return Fit(checkpointing, batch, fits)


def plan(
    name: str,
    gpu_memory: int,
    frames: int | None = None,
    global_batch: int | None = None,
    num_gpus: int = 1,
    precision: str = "bf16-mixed",
    num_classes: int = 400,
) -> Plan:
    """Batch size, gradient accumulation and checkpointing for training ``name`` on ``num_gpus`` GPUs.

    Without ``global_batch``: the largest batch, without checkpointing when that fits a clip. With it: the
    fewest accumulation steps reaching ``global_batch`` (``batch_size * grad_accum * num_gpus >=
    global_batch``, the smallest batch for that count); checkpointing only where it saves steps, since it
    recomputes the side network's forward.
    """
    preset = get_preset(name)
    frames = frames or preset.config.num_frames
    budget = usable_bytes(gpu_memory)
    if budget <= 0:
        raise ValueError(f"a {gpu_memory / GB:.2f} GB GPU leaves nothing once {CONTEXT_BYTES / GB:.2f} GB "
                         f"(CUDA context) and {100 * ALLOCATOR_FRACTION:.0f} % (allocator) are kept free")
    choices = [False, True] if hasattr(preset.config, "checkpoint_parts") else [False]
    if getattr(preset.config, "checkpoint_parts", False):
        choices = [True]  # the preset always checkpoints (E/14)
    options = [largest_batch(name, budget, frames, precision, c, num_classes) for c in choices]
    fitting = [o for o in options if o.batch_size > 0]
    if not fitting:
        smallest = min(o.train_memory_bytes for o in options)
        raise ValueError(
            f"{name} at {frames} frames needs {smallest / GB:.1f} GB for one clip ({precision}), more than "
            f"the {budget / GB:.1f} GB usable on a {gpu_memory / GB:.1f} GB GPU"
        )
    per_gpu = None if global_batch is None else math.ceil(global_batch / num_gpus)

    def steps(o: Fit) -> int:
        return 1 if per_gpu is None else math.ceil(per_gpu / o.batch_size)

    best = min(fitting, key=lambda o: (steps(o), o.checkpointing))
    accum = steps(best)
    batch = best.batch_size if per_gpu is None else math.ceil(per_gpu / accum)
    memory = best.train_memory_bytes
    if batch != best.batch_size:
        overrides = {"checkpoint_parts": True} if best.checkpointing else {}
        memory = predict_memory(name, batch, frames, precision, num_classes=num_classes, hold_grads=True,
                                **overrides).peak
    return Plan(
        model=name, frames=frames, precision=precision, gpu_memory_bytes=gpu_memory, usable_bytes=budget,
        num_gpus=num_gpus, global_batch=global_batch, batch_size=batch, grad_accum=accum,
        checkpointing=best.checkpointing, train_memory_bytes=memory, options=options,
    )
