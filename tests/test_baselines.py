"""Frozen linear probe and full fine-tuning: frame-mean features, what trains, presets."""

import pytest
import torch
import torch.nn.functional as F

from side4video import create_model
from side4video.methods.baselines import FrozenMeanP, FullFinetune

BASELINE_PRESETS = [f"{kind}-{size}" for kind in ("frozen-meanp", "full-finetune") for size in ("b16", "l14", "tiny")]
SIZE = 32  # tiny ViT, patch 16: a 2 x 2 grid


def clip(batch: int = 2, frames: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, frames, SIZE, SIZE)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return create_model(name, num_classes=5, num_frames=3, image_size=SIZE, **overrides)


@pytest.mark.parametrize("name", BASELINE_PRESETS)
def test_presets_build_and_run_on_meta(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=7, num_frames=2)
        size = model.backbone.cfg.image_size
        logits = model(torch.randn(2, 3, 2, size, size))
    assert logits.shape == (2, 7)
    assert model.head.fc.in_features == model.backbone.width  # reads ln_post(CLS), not proj


def test_features_are_frame_mean_of_ln_post_cls():
    model = tiny("frozen-meanp-tiny").eval()
    video = clip()
    vit = model.backbone
    per_frame = [vit.ln_post(vit.forward_features(video[:, :, t])[:, 0]) for t in range(video.shape[2])]
    expected = torch.stack(per_frame, dim=1).mean(dim=1)  # (B, D)
    torch.testing.assert_close(model.forward_features(video), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(video), model.head.fc(expected), rtol=0, atol=1e-6)


def test_frozen_meanp_trains_only_the_head_and_keeps_the_vit_in_eval():
    model = tiny("frozen-meanp-tiny")
    assert isinstance(model, FrozenMeanP)
    model.train()
    assert model.head.training
    assert not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert not model.forward_features(clip()).requires_grad  # no autograd graph through the ViT
    model(clip()).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.fc.weight.grad.abs().sum() > 0


def test_full_finetune_trains_every_used_weight():
    model = tiny("full-finetune-tiny")
    assert isinstance(model, FullFinetune)
    model(clip()).sum().backward()
    vit = model.backbone
    assert not vit.proj.requires_grad
    assert vit.proj.grad is None
    for name, p in model.named_parameters():
        if name != "backbone.proj":
            assert p.requires_grad, name
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name


def test_full_finetune_grad_checkpointing_gives_the_same_gradients():
    video = clip()
    grads = []
    for flag in (False, True):
        model = tiny("full-finetune-tiny", grad_checkpointing=flag, dropout=0.0)
        assert model.backbone.grad_checkpointing is flag
        model(video).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["frozen-meanp-tiny", "full-finetune-tiny"])
def test_baselines_fit_a_small_batch(name):
    model = tiny(name, dropout=0.0).train()
    video, labels = clip(batch=4), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(15):
        loss = F.cross_entropy(model(video), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
