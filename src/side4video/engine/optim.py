"""AdamW with weight-decay and learning-rate parameter groups and a per-step warm-up + cosine schedule.

Weight decay: every trainable parameter decays unless one of its categories is exempt (``no_decay``):
``bias``, ``norm`` (parameters of norm layers), ``embedding`` (embedding tables, tokens, position /
temporal embeddings and the model's ``no_weight_decay()`` names) and ``1d`` (every parameter of at most
one dimension, e.g. ``logit_scale``). The default exempts all four (matrices and kernels only); the
authors' released rules are: Side4Video none, ST-Adapter and CLIP4Clip-style retrieval ``bias``,
ZeroI2V ``norm`` and ``embedding``.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
NO_DECAY_NAMES = ("embed", "token", "class_embedding")  # substrings of a parameter's own name
NoDecay = Literal["bias", "norm", "embedding", "1d"]
EXEMPT_ALL: tuple[NoDecay, ...] = ("bias", "norm", "embedding", "1d")


def decay_categories(name: str, param: nn.Parameter, module: nn.Module, embeddings: Container[str] = ()) -> set[str]:
    """The categories of ``param`` that may keep it out of weight decay: ``bias``, ``norm`` (any parameter of
    a norm layer), ``embedding`` (embedding tables and tokens, position / temporal embeddings, and the
    model's own ``embeddings`` names) and ``1d`` (any parameter of at most one dimension). Empty for the
    matrices and kernels of other layers, which always decay."""
    leaf = name.rsplit(".", 1)[-1]
    found = set()
    if leaf.endswith("bias"):
        found.add("bias")
    if isinstance(module, NORM_TYPES):
        found.add("norm")
    if isinstance(module, nn.Embedding) or name in embeddings or any(s in leaf for s in NO_DECAY_NAMES):
        found.add("embedding")
    if param.ndim <= 1:
        found.add("1d")
    return found


def wants_decay(
    name: str, param: nn.Parameter, module: nn.Module, no_decay: Container[str] = EXEMPT_ALL,
    embeddings: Container[str] = (),
) -> bool:
    """Weight decay unless one of the parameter's categories (see :func:`decay_categories`) is in ``no_decay``."""
    return not any(c in no_decay for c in decay_categories(name, param, module, embeddings))


def param_groups(
    model: nn.Module, weight_decay: float, lr: float, group_lrs: dict[str, float] | None = None,
    no_decay: Container[str] = EXEMPT_ALL,
) -> list[dict]:
    """AdamW groups of the trainable parameters, by (learning-rate group, decay or not).

    Decay follows :func:`wants_decay` with the categories ``no_decay`` exempt; the model's
    ``no_weight_decay()`` names (timm's hook) count as embeddings.
    The learning-rate group of a parameter is the model's ``lr_group(name)`` (default ``"default"``;
    ``"default"`` and ``"backbone"`` learn at ``lr`` unless given); ``group_lrs`` gives the other rates,
    e.g. ``{"clip": 1e-7}``.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    lr_group = getattr(model, "lr_group", lambda name: "default")
    rates = {"default": lr, "backbone": lr, **(group_lrs or {})}
    groups: dict[tuple[str, bool], dict] = {}
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{leaf}" if module_name else leaf
            part = lr_group(name)
            if part not in rates:
                raise KeyError(f"{type(model).__name__}: parameter {name} is in learning-rate group {part!r}, "
                               f"which has no rate (known: {sorted(rates)})")
            decay = wants_decay(name, param, module, no_decay, skip)
            group = groups.setdefault((part, decay), {
                "name": f"{part}_{'decay' if decay else 'no_decay'}", "params": [], "names": [],
                "lr": rates[part], "weight_decay": weight_decay if decay else 0.0,
            })
            group["params"].append(param)
            group["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]  # decay group first


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    group_lrs: dict[str, float] | None = None,
    no_decay: Container[str] = EXEMPT_ALL,
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, lr, group_lrs, no_decay)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


@dataclass
class WarmupCosine:
    """LR multiplier at optimiser step ``s`` (0-based), a linear warm-up from ``warmup_start`` over ``W`` steps
    and a cosine to ``min_ratio``.

    ``cosine="after_warmup"``: ``start + (1 - start) (s+1)/W`` for ``s < W``, then the cosine over the
    remaining steps (Side4Video, ST-Adapter). ``cosine="whole_run"``: the warm-up factor
    ``start + (1 - start) s/W`` times a cosine over all steps from step 0 (mmengine's ``LinearLR`` chained
    with ``CosineAnnealingLR``, as ZeroI2V's configs run them).
    """

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0
    warmup_start: float = 0.0
    cosine: Literal["after_warmup", "whole_run"] = "after_warmup"

    def _cosine(self, progress: float) -> float:
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def __call__(self, step: int) -> float:
        start = self.warmup_start
        if self.cosine == "whole_run":
            warm = start + (1.0 - start) * step / self.warmup_steps if step < self.warmup_steps else 1.0
            return warm * self._cosine(step / max(1, self.total_steps))
        if step < self.warmup_steps:
            return start + (1.0 - start) * (step + 1) / self.warmup_steps
        return self._cosine((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
    warmup_start: float = 0.0, cosine: Literal["after_warmup", "whole_run"] = "after_warmup",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimiser step (not per epoch)."""
    schedule = WarmupCosine(warmup_steps, total_steps, min_ratio, warmup_start, cosine)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
