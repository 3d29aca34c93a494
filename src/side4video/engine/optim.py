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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups of the trainable parameters: ``decay`` and ``no_decay`` (names kept for logging)."""
    groups = {
        "decay": {"params": [], "names": [], "weight_decay": weight_decay},
        "no_decay": {"params": [], "names": [], "weight_decay": 0.0},
    }
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{leaf}" if module_name else leaf
            group = groups["decay" if wants_decay(name, param, module) else "no_decay"]
            group["params"].append(param)
            group["names"].append(name)
    return [dict(g, name=k) for k, g in groups.items() if g["params"]]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float = 1e-8
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay)
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
