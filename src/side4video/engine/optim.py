"""AdamW with weight-decay parameter groups and a per-step linear warm-up + cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.Embedding)
NO_DECAY_NAMES = ("embed", "token", "class_embedding")  # substrings of a parameter's own name


def wants_decay(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Weight decay for matrices and kernels only: not norms, biases, embeddings or any 1-D parameter."""
    leaf = name.rsplit(".", 1)[-1]
    if param.ndim <= 1 or leaf.endswith("bias") or isinstance(module, NORM_TYPES):
        return False
    return not any(s in leaf for s in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float, lr: float, group_lrs: dict[str, float] | None = None
                 ) -> list[dict]:
    """AdamW groups of the trainable parameters, by (learning-rate group, decay or not).

    Decay follows :func:`wants_decay` plus the model's ``no_weight_decay()`` names (timm's hook).
    The learning-rate group of a parameter is the model's ``lr_group(name)`` (default ``"default"``,
    which learns at ``lr``); ``group_lrs`` gives the others' rates, e.g. ``{"clip": 1e-7}``.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    lr_group = getattr(model, "lr_group", lambda name: "default")
    rates = {"default": lr, **(group_lrs or {})}
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
            decay = wants_decay(name, param, module) and name not in skip
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
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, lr, group_lrs)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


@dataclass
class WarmupCosine:
    """LR multiplier at optimiser step ``s`` (0-based): ``(s+1)/W`` for ``s < W``, then a cosine to ``min_ratio``."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimiser step (not per epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
