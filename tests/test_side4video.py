"""Side4Video architecture: taps, [CLS] shift, frozen backbone, gradients, variants."""

import pytest
import torch

from side4video import create_model, list_models
from side4video.backbones.vit import VIT_B_16
from side4video.engine.recognition import RECOGNITION
from side4video.methods.side4video import Side4Video, SideBlock, SideNetwork, shift_cls, tap_indices
from side4video.models import get_preset
from side4video.profiler import MetaNorms, saved_activation_bytes

SIDE4VIDEO_PRESETS = [n for n in list_models() if isinstance(get_preset(n).build, type)
                      and issubclass(get_preset(n).build, Side4Video) and get_preset(n).task is RECOGNITION]


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
    with MetaNorms():  # LayerNorm's meta outputs without PyTorch's Python decomposition (test_profiler.py)
        logits = model(torch.empty(1, 3, 2, size, size, device="meta"))
    assert logits.shape == (1, 10)
    vit = model.backbone.cfg
    assert len(model.side.blocks) == model.cfg.side_layers
    assert model.side.taps[-1] == vit.layers - 1  # the last ViT layer always feeds the side network
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
    avg_model = tiny_model()
    assert avg_model.cfg.fusion == "avg"  # the released code; the paper's eq. (2) sums
    sum_model = tiny_model(fusion="sum")
    sum_model.load_state_dict(avg_model.state_dict())
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


def reference_cls_attention(block: SideBlock, x, cls, pos, released: bool) -> torch.Tensor:
    """Written out: released LN([cls; x + pos]) (paper: [cls; LN(x) + pos]); q = patches, k/v = all."""
    ln = block.norm_attn
    cls = cls[:, :, None]
    tokens = ln(torch.cat([cls, x + pos], 2)) if released else torch.cat([cls, ln(x) + pos], 2)
    d, heads = x.shape[-1], block.attn.heads
    wq, wk, wv = block.attn.in_proj_weight.split(d)
    bq, bk, bv = block.attn.in_proj_bias.split(d)
    q = (tokens[:, :, 1:] @ wq.T + bq).unflatten(-1, (heads, -1)).transpose(-2, -3)  # (B, T, H, N, hd)
    k = (tokens @ wk.T + bk).unflatten(-1, (heads, -1)).transpose(-2, -3)  # (B, T, H, 1+N, hd)
    v = (tokens @ wv.T + bv).unflatten(-1, (heads, -1)).transpose(-2, -3)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return block.attn.out_proj((attn @ v).transpose(-2, -3).flatten(-2))


@pytest.mark.parametrize("variant", ["released", "paper"])
def test_cls_shift_attention_normalises_as_the_released_code_or_the_paper(variant):
    torch.manual_seed(0)
    block = SideBlock(128, 2, 4.0, post_norm=False, checkpoint_parts=False, cls_attn_norm=variant)
    with torch.no_grad():
        block.norm_attn.weight.normal_(1, 0.3)
        block.norm_attn.bias.normal_(0, 0.3)
    x, cls, pos = torch.randn(2, 3, 4, 128), torch.randn(2, 3, 128) * 3, torch.randn(4, 128)
    with torch.no_grad():
        got = block._attention(x, cls, pos)
        torch.testing.assert_close(got, reference_cls_attention(block, x, cls, pos, variant == "released"))
        other = reference_cls_attention(block, x, cls, pos, variant != "released")
    assert not torch.allclose(got, other, atol=1e-3)


def test_released_initialisation_and_e14_preset():
    torch.manual_seed(0)
    side, d = SideNetwork(get_preset("side4video-b16").config, VIT_B_16), 320
    block = side.blocks[0]
    assert abs(block.attn.in_proj_weight.std().item() - d**-0.5) < 0.002
    assert abs(block.attn.out_proj.weight.std().item() - d**-0.5 * 24**-0.5) < 0.001
    assert abs(block.mlp.fc1.weight.std().item() - (2 * d) ** -0.5) < 0.002
    assert abs(side.down[0].proj.weight.std().item() - (2 * d) ** -0.5) < 0.002
    assert abs(side.pos_embed.std().item() - 0.01) < 0.001
    assert block.attn.in_proj_bias.abs().sum() == 0
    e14 = get_preset("side4video-e14-light").config  # the released EVA code's layout
    assert (e14.post_norm, e14.down_norm, e14.head_norm, e14.fusion) == (True, "post", False, "avg")
    with torch.device("meta"):
        assert isinstance(create_model("side4video-e14-light").head.norm, torch.nn.Identity)
