"""Shared test helpers (imported by the test modules; pytest puts this folder on sys.path)."""

import torch
import torch.nn.functional as F
from torch import nn


def fit_forward_vs_reversed(model: nn.Module, clip: torch.Tensor, steps: int = 30, lr: float = 1e-2) -> float:
    """Train ``model`` to tell ``clip`` (1, 3, T, H, W) from the same frames reversed; returns the last loss.

    The two videos have the same set of frames, so only temporal modelling can separate them."""
    video, labels = torch.cat([clip, clip.flip(2)]), torch.tensor([0, 1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(video), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(video).argmax(1) == labels).all()
    return loss.item()
