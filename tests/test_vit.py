"""The CLIP / EVA-CLIP ViT: shapes and sizes of every preset, equivalence with a reference, intermediates."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from side4video.backbones.vit import (
    BACKBONES,
    VisionConfig,
    VisionTransformer,
    build_vit,
    freeze,
    resize_pos_embed,
)
from side4video.profiler import MetaNorms

# Published image-tower sizes (OpenAI CLIP, EVA-CLIP paper): checked within 2 %.
PUBLISHED_PARAMS = {"ViT-B-32": 87.8e6, "ViT-B-16": 86e6, "ViT-L-14": 304e6, "EVA02-E-14": 4.4e9}
SMALL = VisionConfig(width=64, layers=3, heads=4, mlp_dim=128, patch_size=8, image_size=32, output_dim=16)
SMALL_POST = VisionConfig(
    width=64, layers=3, heads=2, mlp_dim=96, patch_size=8, image_size=32, output_dim=24,
    post_norm=True, act="gelu", ln_eps=1e-6, patch_bias=True, ln_pre=False, proj_bias=True,
)


def counted_params(c: VisionConfig) -> int:
    """Parameter count of the CLIP image tower described by ``c``, from the architecture's definition."""
    d, m = c.width, c.mlp_dim
    embed = 3 * c.patch_size**2 * d + d * c.patch_bias + d + (c.num_patches + 1) * d + 2 * d * c.ln_pre
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    head = 2 * d + ((d + c.proj_bias) * c.output_dim if c.output_dim else 0)
    return embed + c.layers * block + head


def randomized(cfg: VisionConfig) -> VisionTransformer:
    """A model whose every parameter (norms and biases included) is random, so no term hides."""
    model = VisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def reference_tokens(model: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output computed with ``nn.MultiheadAttention`` and explicit activations."""
    c = model.cfg
    x = F.conv2d(images, model.conv1.weight, model.conv1.bias, stride=c.patch_size).flatten(2).transpose(1, 2)
    cls = model.class_embedding.expand(x.shape[0], 1, -1)
    x = model.ln_pre(torch.cat([cls, x], dim=1) + model.positional_embedding)  # (B, 1+N, D)

    def act(h: torch.Tensor) -> torch.Tensor:
        return h * torch.sigmoid(1.702 * h) if c.act == "quick_gelu" else F.gelu(h)

    outs = []
    for blk in model.blocks:
        mha = nn.MultiheadAttention(c.width, c.heads, batch_first=True)
        mha.load_state_dict(blk.attn.state_dict())

        def mlp(h: torch.Tensor, blk=blk) -> torch.Tensor:
            return blk.mlp.c_proj(act(blk.mlp.c_fc(h)))

        if c.post_norm:
            x = x + blk.ln_1(mha(x, x, x, need_weights=False)[0])
            x = x + blk.ln_2(mlp(x))
        else:
            h = blk.ln_1(x)
            x = x + mha(h, h, h, need_weights=False)[0]
            x = x + mlp(blk.ln_2(x))
        outs.append(x)
    return outs


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preset_shapes_and_parameter_count(name: str) -> None:
    cfg = BACKBONES[name]
    with torch.device("meta"):
        model = build_vit(name)
    images = torch.empty(2, 3, cfg.image_size, cfg.image_size, device="meta")
    with MetaNorms():  # LayerNorm's meta outputs without PyTorch's Python decomposition (test_profiler.py)
        tokens = model.forward_intermediates(images)
        emb = model.encode_image(images)
    assert len(tokens) == cfg.layers
    assert all(t.shape == (2, 1 + cfg.num_patches, cfg.width) for t in tokens)
    assert emb.shape == (2, cfg.output_dim)
    assert cfg.width % cfg.heads == 0
    n = sum(p.numel() for p in model.parameters())
    assert n == counted_params(cfg)
    if name in PUBLISHED_PARAMS:
        assert abs(n / PUBLISHED_PARAMS[name] - 1) < 0.02, f"{name}: {n / 1e6:.1f} M parameters"


def test_eva_bige_preset_is_post_norm_with_head_width_112() -> None:
    cfg = BACKBONES["EVA02-E-14"]
    assert (cfg.post_norm, cfg.head_dim, cfg.act, cfg.ln_pre) == (True, 112, "gelu", False)


@pytest.mark.parametrize("cfg", [SMALL, SMALL_POST], ids=["pre_norm", "post_norm"])
def test_blocks_match_multihead_attention_reference(cfg: VisionConfig) -> None:
    model = randomized(cfg)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_intermediates(images)
        ref = reference_tokens(model, images)
        expected = model.ln_post(ref[-1][:, 0]) @ model.proj
        if cfg.proj_bias:
            expected = expected + model.proj_bias
        emb = model.encode_image(images)
    assert len(ours) == cfg.layers
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb, model.pool(model.forward_features(images)))


def test_forward_intermediates_indices_and_stop_early() -> None:
    model = randomized(SMALL)
    calls = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.append(i))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_intermediates(images)
        assert calls == [0, 1, 2]
        calls.clear()
        picked = model.forward_intermediates(images, indices=[1, 0])
        assert calls == [0, 1]  # block 2 is never run
        calls.clear()
        picked_all = model.forward_intermediates(images, indices=[-3, 1], stop_early=False)
        assert calls == [0, 1, 2]
    assert all(t.shape == (2, 1 + SMALL.num_patches, SMALL.width) for t in full)
    torch.testing.assert_close(picked[0], full[1], atol=0, rtol=0)
    torch.testing.assert_close(picked[1], full[0], atol=0, rtol=0)
    torch.testing.assert_close(picked_all[0], full[0], atol=0, rtol=0)
    torch.testing.assert_close(model.forward_features(images), full[-1], atol=0, rtol=0)
    with pytest.raises(IndexError, match="out of range"):
        model.forward_intermediates(images, indices=[3])


class Recorder(nn.Module):
    """Identity hook that records the ``num_frames`` it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        self.seen.append(num_frames)
        return x


class ZeroHook(nn.Module):
    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return torch.zeros_like(x)


def test_injection_points_are_called_and_used() -> None:
    model = randomized(SMALL)
    images = torch.randn(6, 3, 32, 32)  # 2 clips x 3 frames
    with torch.no_grad():
        before = model.forward_intermediates(images, num_frames=3)
        points = ["stream_pre_attn", "attn_in", "attn_out", "stream_pre_mlp", "mlp_in", "mlp_out"]
        recorders = {}
        for i, blk in enumerate(model.blocks):
            for p in points:
                recorders[i, p] = Recorder()
                setattr(blk, p, recorders[i, p])
        model.embed_hook = Recorder()
        after = model.forward_intermediates(images, num_frames=3)
        torch.testing.assert_close(after[-1], before[-1], atol=0, rtol=0)
        assert all(r.seen == [3] for r in recorders.values())
        assert model.embed_hook.seen == [3]
        # A hook's output is what the block uses: silencing every attention branch changes the result.
        for blk in model.blocks:
            blk.attn_out = ZeroHook()
        silenced = model.forward_intermediates(images, num_frames=3)
    assert not torch.allclose(silenced[-1], before[-1])


def test_gradient_checkpointing_gives_same_outputs_and_gradients() -> None:
    model = randomized(SMALL).train()
    images = torch.randn(2, 3, 32, 32)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model.encode_image(images)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out_plain, grads_plain = run()
    model.grad_checkpointing = True
    out_ckpt, grads_ckpt = run()
    torch.testing.assert_close(out_ckpt, out_plain)
    for a, b in zip(grads_ckpt, grads_plain, strict=True):
        torch.testing.assert_close(a, b)


def test_freeze_stops_gradients() -> None:
    model = freeze(randomized(SMALL))
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.encode_image(torch.randn(1, 3, 32, 32)).requires_grad


def test_resize_pos_embed() -> None:
    pos = torch.randn(1 + 16, 8)
    assert resize_pos_embed(pos, 4) is pos
    resized = resize_pos_embed(pos, 6)
    assert resized.shape == (1 + 36, 8)
    torch.testing.assert_close(resized[0], pos[0], atol=0, rtol=0)
    # Bicubic resampling keeps a constant field constant.
    const = torch.cat([torch.zeros(1, 8), torch.ones(16, 8) * 0.3])
    torch.testing.assert_close(resize_pos_embed(const, 7)[1:], torch.full((49, 8), 0.3))
    with pytest.raises(ValueError, match="not a square grid"):
        resize_pos_embed(torch.randn(1 + 15, 8), 4)


def test_wrong_input_size_and_unknown_backbone_are_clear_errors() -> None:
    model = VisionTransformer(SMALL)
    with pytest.raises(ValueError, match="image_size=48"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(KeyError, match="unknown backbone"):
        build_vit("ViT-X-99")
    assert build_vit("tiny", image_size=64).positional_embedding.shape == (1 + 16, 256)
