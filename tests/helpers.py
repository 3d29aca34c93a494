"""Shared test helpers (imported by the test modules; pytest puts this folder on sys.path)."""

import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from side4video.official import random_state


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


# The authors' checkpoint layouts recorded by tools/compare_official.py --fixture (tests/data).
ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_CASES = json.loads((Path(__file__).parent / "data" / "official_cases.json").read_text())
_spec = importlib.util.spec_from_file_location("compare_official", ROOT / "tools" / "compare_official.py")
official_harness = importlib.util.module_from_spec(_spec)
sys.modules["compare_official"] = official_harness  # dataclasses look their module up
_spec.loader.exec_module(official_harness)


def official_case(name: str, tmp_path: Path) -> tuple[Path, dict, dict]:
    """The case's checkpoint in the authors' layout: path, load_official kwargs, fixture entry."""
    case = OFFICIAL_CASES[name]
    template = {k: torch.zeros(shape, dtype=getattr(torch, dtype), device="meta" if "float" in dtype else "cpu")
                for k, shape, dtype, _ in case["keys"]}  # random_state reads the float ones' shapes only
    state = random_state(template, case["seed"])
    trainable = {k for k, *_, is_trainable in case["keys"] if is_trainable}
    path = tmp_path / "checkpoint.pth"
    kwargs = official_harness.write_checkpoint(path, case["writer"], state, trainable, case["args"])
    return path, kwargs, case
