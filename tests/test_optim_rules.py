"""The authors' optimiser rules as options: weight-decay categories, a backbone learning-rate multiplier and
the warm-up / cosine variants, against hand-made parameter lists and mmengine's chained schedulers."""

import math

import pytest
import torch
from torch import nn

from side4video import create_model
from side4video.engine.config import resolve_config
from side4video.engine.optim import WarmupCosine, param_groups
from side4video.engine.train import make_optimizer


class Parts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.bn = nn.BatchNorm1d(3)
        self.table = nn.Embedding(5, 3)
        self.pos_embed = nn.Parameter(torch.zeros(7, 3))
        self.logit_scale = nn.Parameter(torch.tensor(1.0))


def decayed(model: nn.Module, no_decay) -> set[str]:
    groups = param_groups(model, 0.1, 1e-3, {"clip": 1e-7}, no_decay=no_decay)
    return {n for g in groups if g["weight_decay"] for n in g["names"]}


def test_weight_decay_categories():
    model = Parts()
    everything = {n for n, _ in model.named_parameters()}
    assert decayed(model, ("bias", "norm", "embedding", "1d")) == {"fc.weight"}  # the default: matrices only
    assert decayed(model, ()) == everything  # Side4Video
    assert decayed(model, ("bias",)) == everything - {"fc.bias", "norm.bias", "bn.bias"}  # ST-Adapter, CLIP4Clip
    assert decayed(model, ("norm", "embedding")) == {"fc.weight", "fc.bias", "logit_scale"}  # ZeroI2V
    assert decayed(model, ("1d",)) == {"fc.weight", "table.weight", "pos_embed"}


def test_released_rules_on_the_models():
    zeroi2v = create_model("zeroi2v-tiny", num_classes=2, image_size=32)
    names = decayed(zeroi2v, ("norm", "embedding"))
    assert {"head.fc.bias", "backbone.transformer.resblocks.0.attn_in.down.bias",
            "backbone.transformer.resblocks.0.mlp_out.up.weight"} <= names
    assert not names & {"backbone.embed_hook.embedding", "backbone.ln_post.weight", "backbone.ln_post.bias"}
    retrieval = create_model("side4video-retrieval-tiny")
    names = decayed(retrieval, ("bias",))
    assert {"text.ln_final.weight", "text.logit_scale", "text.token_embedding.weight", "side.pos_embed"} <= names
    assert not any(n.endswith("bias") for n in names)


def test_backbone_lr_mult_scales_the_trained_parts_inside_the_backbone(tmp_path):
    path = tmp_path / "z.yaml"
    path.write_text("model: zeroi2v-tiny\nnum_classes: 2\nimage_size: 32\nlr: 3.0e-4\nbackbone_lr_mult: 0.1\n")
    cfg = resolve_config(path)
    model = create_model("zeroi2v-tiny", num_classes=2, image_size=32)
    rates = {n: g["lr"] for g in make_optimizer(model, cfg).param_groups for n in g["names"]}
    assert set(rates) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, rate in rates.items():  # adapters, temporal embedding, ln_post at 0.1x; the head at lr
        assert rate == pytest.approx(3e-4 if name.startswith("head.") else 3e-5), name


def mmengine_chained(steps: int, warmup: int, total: int, start: float) -> list[float]:
    """LR multipliers of a LinearLR (``start`` -> 1 over ``warmup`` steps) and a CosineAnnealingLR (``total``
    steps, to 0) stepped together, each updating the current lr in its chainable, multiplicative form."""
    lr, out = 1.0, []
    for step in range(steps):
        if step == 0:
            lr *= start
        else:
            if step <= warmup:
                lr *= 1 + (1 - start) / (warmup * start + (step - 1) * (1 - start))
            lr *= (1 + math.cos(math.pi * step / total)) / (1 + math.cos(math.pi * (step - 1) / total))
        out.append(lr)
    return out


def test_whole_run_cosine_times_warmup_equals_chained_schedulers():
    schedule = WarmupCosine(warmup_steps=25, total_steps=400, warmup_start=0.1, cosine="whole_run")
    want = mmengine_chained(399, warmup=25, total=400, start=0.1)
    assert [schedule(s) for s in range(399)] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert schedule(0) == pytest.approx(0.1)


def test_warmup_start_then_cosine_after_warmup():
    schedule = WarmupCosine(warmup_steps=4, total_steps=14, warmup_start=0.1)
    assert [schedule(s) for s in range(4)] == pytest.approx([0.1 + 0.9 * (s + 1) / 4 for s in range(4)])
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.5)
    assert WarmupCosine(4, 14)(0) == pytest.approx(0.25)  # the default starts from 0
