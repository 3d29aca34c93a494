"""Side4Video architecture: taps, [CLS] shift, frozen backbone, gradients, variants."""

import pytest
import torch

from side4video import create_model, list_models
from side4video.methods.side4video import Side4Video, shift_cls, tap_indices
from side4video.models import get_preset
from side4video.profiler import saved_activation_bytes

SIDE4VIDEO_PRESETS = [n for n in list_models() if isinstance(get_preset(n).build, type)
                      and issubclass(get_preset(n).build, Side4Video) and get_preset(n).task == "recognition"]


def tiny_model(**overrides) -> Side4Video:
    torch.manual_seed(0)
    return create_model("side4video-tiny", num_classes=3, num_frames=4, image_size=64, **overrides)


def clip(batch: int = 2, frames: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


def test_interval_taps_pick_every_second_layer():
    assert [i + 1 for i in tap_indices(6, 12, "interval")] == [2, 4, 6, 8, 10, 12]
    assert [i + 1 for i in tap_indices(32, 64, "interval")] == list(range(2, 65, 2))
    assert [i + 1 for i in tap_indices(6, 12, "top")] == [7, 8, 9, 10, 11, 12]
    assert tap_indices(12, 12, "interval") == tap_indices(12, 12, "top") == list(range(12))
    with pytest.raises(ValueError, match="deeper"):
        tap_indices(13, 12)


def test_cls_shift_directions_and_zero_ends():
    b, t, d = 2, 5, 6
    cls = torch.arange(1, b * t * d + 1, dtype=torch.float32).view(b, t, d)
    out = shift_cls(cls)
    half = d // 2
    for ti in range(t):
        expected_first = cls[:, ti + 1, :half] if ti + 1 < t else torch.zeros(b, half)
        expected_second = cls[:, ti - 1, half:] if ti > 0 else torch.zeros(b, d - half)
        torch.testing.assert_close(out[:, ti, :half], expected_first)
        torch.testing.assert_close(out[:, ti, half:], expected_second)
    # every channel moved: no position keeps its own frame's value
    assert not torch.isclose(out, cls).any()


@pytest.mark.parametrize("name", SIDE4VIDEO_PRESETS)
def test_every_preset_builds_and_runs_on_meta(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=10, num_frames=2)
        size = model.backbone.cfg.image_size
        logits = model(torch.randn(1, 3, 2, size, size))
    assert logits.shape == (1, 10)
    vit = model.backbone.cfg
    assert len(model.blocks) == model.cfg.side_layers
    assert model.taps[-1] == vit.layers - 1  # the last ViT layer always feeds the side network
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_frozen_backbone_gets_no_gradient_and_side_network_does():
    model = tiny_model()
    model.train()
    loss = torch.nn.functional.cross_entropy(model(clip()), torch.tensor([0, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad, name
            assert p.grad is None, name
        else:
            assert p.requires_grad, name
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name


def test_frozen_vit_saves_no_activations():
    model = tiny_model()
    model.train()
    video = clip()
    assert saved_activation_bytes(model, lambda: model.backbone_features(video)) == 0
    feats = model.backbone_features(video)
    side_only = saved_activation_bytes(model, lambda: model.head(model.side(video, feats)))
    whole = saved_activation_bytes(model, lambda: model(video))
    assert side_only > 0
    assert whole == side_only
    # the ViT's own activations would be much larger: full backprop through it saves more
    model.backbone.requires_grad_(True)
    with_vit = saved_activation_bytes(model, lambda: model.backbone(video[:, :, 0]))
    assert with_vit > 0


def test_backbone_in_eval_mode_while_training():
    model = tiny_model()
    model.train()
    assert model.training
    assert not model.backbone.training


def test_fusion_average_differs_from_sum_and_runs():
    sum_model = tiny_model()
    avg_model = tiny_model(fusion="avg")
    avg_model.load_state_dict(sum_model.state_dict())
    sum_model.eval()
    avg_model.eval()
    video = clip()
    assert not torch.allclose(sum_model(video), avg_model(video))


def test_cls_shift_changes_output_only_through_neighbours():
    model = tiny_model()
    model.eval()
    no_shift = tiny_model(cls_shift=False)
    no_shift.load_state_dict(model.state_dict())
    no_shift.eval()
    video = clip()
    assert not torch.allclose(model(video), no_shift(video))


def test_post_norm_checkpointing_matches_plain_post_norm():
    ref = tiny_model(post_norm=True, down_norm="post")
    ckpt = tiny_model(post_norm=True, down_norm="post", checkpoint_parts=True)
    ckpt.load_state_dict(ref.state_dict())
    video = clip()
    for m in (ref, ckpt):
        m.train()
        m.head.dropout.p = 0.0
        m(video).square().sum().backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), ckpt.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    # checkpointing keeps fewer activations
    assert saved_activation_bytes(ckpt, lambda: ckpt(video)) < saved_activation_bytes(ref, lambda: ref(video))


def test_unknown_override_is_a_clear_error():
    with pytest.raises(KeyError, match="valid keys"):
        create_model("side4video-tiny", num_classes=3, side_depth=3)
