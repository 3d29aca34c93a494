"""ST-Adapter: the adapter's convolution, identity at init, gradients through the frozen ViT, sizes."""

import copy

import pytest
import torch

from helpers import fit_forward_vs_reversed
from side4video import create_model
from side4video.methods.st_adapter import STAdapter, STAdapterConfig, STAdapterModel

SIZE = 32  # tiny ViT, patch 16: a 2 x 2 grid


def clip(batch: int = 2, frames: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, frames, SIZE, SIZE)


def adapters(model: STAdapterModel) -> list[STAdapter]:
    return [m for m in model.modules() if isinstance(m, STAdapter)]


def randomise(adapter: STAdapter) -> STAdapter:
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    return adapter


def reference_adapter(adapter: STAdapter, x: torch.Tensor, frames: int, grid: int) -> torch.Tensor:
    """The adapter written with explicit loops over the (t, i, j) neighbourhood of each token."""
    kt, kh, kw = adapter.conv.kernel_size
    z = adapter.down(x[:, 1:])  # (B*T, N, C), token n = i * grid + j
    z = z.view(-1, frames, grid, grid, z.shape[-1])  # (B, T, h, w, C)
    out = torch.zeros_like(z) + adapter.conv.bias
    w = adapter.conv.weight[:, 0]  # (C, kt, kh, kw)
    for t in range(frames):
        for i in range(grid):
            for j in range(grid):
                for a in range(kt):
                    for b in range(kh):
                        for c in range(kw):
                            tt, ii, jj = t + a - kt // 2, i + b - kh // 2, j + c - kw // 2
                            if 0 <= tt < frames and 0 <= ii < grid and 0 <= jj < grid:
                                out[:, t, i, j] += w[:, a, b, c] * z[:, tt, ii, jj]
    delta = adapter.up(adapter.act(out)).flatten(0, 1).flatten(1, 2)  # (B*T, N, D)
    return torch.cat([x[:, :1], x[:, 1:] + delta], dim=1)


@pytest.mark.parametrize(("kernel", "activation"), [((3, 1, 1), "gelu"), ((3, 3, 3), "none")])
def test_adapter_matches_a_loop_reference_and_leaves_cls_alone(kernel, activation):
    torch.manual_seed(0)
    frames, grid, width = 4, 3, 8
    adapter = randomise(STAdapter(width, 4, kernel, activation))
    x = torch.randn(2 * frames, 1 + grid * grid, width)
    out = adapter(x, frames)
    torch.testing.assert_close(out, reference_adapter(adapter, x, frames, grid), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, 0], x[:, 0])


def test_adapter_is_temporal_with_a_receptive_field_of_three_frames():
    torch.manual_seed(0)
    frames, width = 5, 8
    adapter = randomise(STAdapter(width, 4, (3, 1, 1)))
    x = torch.randn(frames, 5, width)  # one clip, 2 x 2 grid
    y = x.clone()
    y[2, 1:] += 1.0  # perturb the patches of frame 2
    changed = (adapter(y, frames) - adapter(x, frames) - (y - x)).abs().flatten(1).amax(dim=1)
    assert changed[[1, 2, 3]].min() > 1e-4
    assert changed[[0, 4]].max() == 0


def test_adapter_is_identity_at_init_and_has_the_paper_size():
    adapter = STAdapter(768, 384)
    assert sum(p.numel() for p in adapter.parameters()) == 592_512
    x = torch.randn(2 * 3, 1 + 4, 768)
    assert torch.equal(adapter(x, 3), x)


def test_model_equals_frozen_baseline_at_init():
    torch.manual_seed(0)
    baseline = create_model("frozen-meanp-tiny", num_classes=4, num_frames=3, image_size=SIZE).eval()
    cfg = STAdapterConfig("tiny", num_classes=4, num_frames=3, bottleneck=16, placement="attn+mlp",
                          pool="norm_then_mean")
    model = STAdapterModel(cfg, copy.deepcopy(baseline.backbone)).eval()
    assert len(adapters(model)) == 2 * len(model.backbone.blocks)
    video = clip()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(video), baseline.forward_features(video), rtol=0, atol=0)
    randomise(adapters(model)[0])
    with torch.no_grad():
        assert not torch.allclose(model.forward_features(video), baseline.forward_features(video))


def test_gradients_reach_every_adapter_through_the_frozen_vit_and_no_frozen_weight():
    torch.manual_seed(0)
    model = create_model("st-adapter-tiny", num_classes=4, num_frames=3, image_size=SIZE)
    model(clip()).sum().backward()
    trainable = {id(p) for a in adapters(model) for p in a.parameters()} | {id(p) for p in model.head.parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in trainable), name
        if not p.requires_grad:
            assert p.grad is None, name
    # block 0's adapter is reached only through every frozen block above it. The last block's adapter
    # (before the MLP, the released placement) changes patch tokens only after its block's attention:
    # the [CLS] output never sees it, in the released model as here.
    *reached, last = model.backbone.blocks
    for block in reached:
        a = block.stream_pre_mlp
        assert a.conv.weight.grad.abs().sum() > 0
        assert a.up.bias.grad.abs().sum() > 0
    assert last.stream_pre_mlp.up.bias.grad.abs().sum() == 0


def test_adapters_learn_temporal_order():
    """Two clips with the same frames in opposite order: only temporal modelling can separate them."""
    torch.manual_seed(0)
    model = create_model("st-adapter-tiny", num_classes=2, num_frames=3, image_size=SIZE, dropout=0.0)
    assert fit_forward_vs_reversed(model, clip(batch=1)) < 0.3


@pytest.mark.parametrize(("name", "count"), [("st-adapter-b16", 12), ("st-adapter-b16-x2", 24), ("st-adapter-l14", 24)])
def test_adapter_parameter_counts_on_meta(name, count):
    with torch.device("meta"):
        model = create_model(name)
        logits = model(torch.randn(1, 3, 8, 224, 224))
    assert logits.shape == (1, 400)
    found = adapters(model)
    assert len(found) == count
    params = sum(p.numel() for a in found for p in a.parameters())
    if name == "st-adapter-b16":
        assert abs(params - 7.11e6) <= 0.01 * 7.11e6
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert abs(trainable - 7.42e6) <= 0.01 * 7.42e6  # with a 400-class head
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if "stream_pre" not in n)


def test_config_accepts_a_json_kernel_list():
    assert STAdapterConfig(kernel=[3, 1, 1]).kernel == (3, 1, 1)
    with pytest.raises(ValueError, match="placement"):
        STAdapterConfig(placement="ffn")


def test_released_head_normalises_the_frame_mean():
    """Released head: ln_post(mean_t [CLS]); the option norm_then_mean: mean_t ln_post([CLS])."""
    torch.manual_seed(0)
    model = create_model("st-adapter-tiny", num_classes=4, num_frames=3, image_size=SIZE).eval()
    with torch.no_grad():
        model.backbone.ln_post.weight.normal_(1, 0.5)
        video = clip()
        tokens = model.backbone.forward_features(video.transpose(1, 2).flatten(0, 1), num_frames=3)
        cls = tokens[:, 0].view(2, 3, -1)
        torch.testing.assert_close(model.forward_features(video), model.backbone.ln_post(cls.mean(1)))
        per_frame = create_model("st-adapter-tiny", num_classes=4, num_frames=3, image_size=SIZE,
                                 pool="norm_then_mean")
        per_frame.load_state_dict(model.state_dict())
        torch.testing.assert_close(per_frame.eval().forward_features(video), model.backbone.ln_post(cls).mean(1))
