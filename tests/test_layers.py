"""Memory savings: the fused LayerNorm + Linear and the MLP that recomputes its GELU (autograd's gradients, less
kept for backward), and side-network checkpointing, leave Side4Video's gradients unchanged."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from side4video.methods.layers import layer_norm_linear, linear_gelu_linear
from side4video.models import create_model
from side4video.profiler import MixedPrecision, saved_activation_bytes


def _modules(width=12, out=5, dtype=torch.float32):
    torch.manual_seed(0)
    norm, proj = nn.LayerNorm(width).to(dtype), nn.Linear(width, out).to(dtype)
    with torch.no_grad():  # non-trivial affine parameters
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm, proj


def test_gradcheck_in_float64():
    norm, proj = _modules(width=6, out=3, dtype=torch.float64)
    z = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    args = (z, norm.weight, norm.bias, proj.weight, proj.bias)
    assert torch.autograd.gradcheck(lambda *a: layer_norm_linear(*a, norm.eps), args, fast_mode=True)


def test_output_and_gradients_match_autograd():
    norm, proj = _modules()
    z = torch.randn(4, 7, 12) * 3 + 1
    params = [norm.weight, norm.bias, proj.weight, proj.bias]
    dy = torch.randn(4, 7, 5)
    results = []
    for fused in (False, True):
        zz = z.clone().requires_grad_(True)
        y = layer_norm_linear(zz, *params, norm.eps) if fused else proj(norm(zz))
        grads = torch.autograd.grad(y, [zz, *params], dy)
        results.append((y, grads))
    assert torch.equal(results[0][0], results[1][0])
    for ref, got in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_keeps_only_its_input_under_mixed_precision():
    norm, proj = _modules(width=64, out=16)
    z = torch.randn(8, 50, 64).bfloat16()  # a frozen bf16 backbone's tokens: no gradient
    params = [norm.weight, norm.bias, proj.weight, proj.bias]

    def run(fused):
        with MixedPrecision(torch.bfloat16):
            y = layer_norm_linear(z, *params, norm.eps) if fused else proj(norm(z))
        return y

    ref, got = run(False), run(True)
    assert got.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref)
    dy = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, params, dy), torch.autograd.grad(got, params, dy), strict=True):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)  # bf16 matmuls in both
    both = nn.Sequential(norm, proj)
    with MixedPrecision(torch.bfloat16):
        unfused = saved_activation_bytes(both, lambda: proj(norm(z)))
        fused = saved_activation_bytes(both, lambda: layer_norm_linear(z, *params, norm.eps))
    tokens = z.numel()
    assert unfused >= 4 * tokens + 2 * tokens  # fp32 copy of z for the norm + its bf16 output for the matmul
    assert fused == 2 * tokens + 2 * 4 * (tokens // 64)  # z itself (bf16) + float32 mean and rstd per token


def test_tensor_shape_and_no_bias():
    norm, proj = _modules()
    z = torch.randn(3, 12, requires_grad=True)
    y = layer_norm_linear(z, norm.weight, norm.bias, proj.weight, None, norm.eps)
    torch.testing.assert_close(y, F.linear(norm(z), proj.weight))
    y.sum().backward()
    assert z.grad.shape == z.shape
    assert proj.bias.grad is None


def _mlp(width=12, hidden=20, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Linear(width, hidden).to(dtype), nn.Linear(hidden, width).to(dtype)


def test_mlp_gradcheck_in_float64():
    fc1, fc2 = _mlp(width=5, hidden=7, dtype=torch.float64)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    args = (x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    assert torch.autograd.gradcheck(linear_gelu_linear, args, fast_mode=True)


def test_mlp_output_and_gradients_match_autograd():
    fc1, fc2 = _mlp()
    x = torch.randn(4, 7, 12) * 2
    params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    dy = torch.randn(4, 7, 12)
    results = []
    for fused in (False, True):
        xx = x.clone().requires_grad_(True)
        y = linear_gelu_linear(xx, *params) if fused else fc2(F.gelu(fc1(xx)))
        results.append((y, torch.autograd.grad(y, [xx, *params], dy)))
    assert torch.equal(results[0][0], results[1][0])
    for ref, got in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_mlp_keeps_its_input_and_pre_activation_not_the_gelu_output():
    fc1, fc2 = _mlp(width=32, hidden=128)
    x = torch.randn(6, 40, 32, requires_grad=True)  # float32 residual tokens: the first matmul casts them
    params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias]
    mlp = nn.Sequential(fc1, nn.GELU(), fc2)
    with MixedPrecision(torch.bfloat16):
        ref, got = mlp(x), linear_gelu_linear(x, *params)
        unfused = saved_activation_bytes(mlp, lambda: mlp(x))
        fused = saved_activation_bytes(mlp, lambda: linear_gelu_linear(x, *params))
    assert got.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(got, ref)
    dy = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, [x, *params], dy), torch.autograd.grad(got, [x, *params], dy),
                    strict=True):
        assert b.dtype == a.dtype
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)  # bf16 matmuls in both
    tokens, hidden = x.numel() // 32, 128
    assert fused == 2 * tokens * (32 + hidden)  # x and the pre-activation, both bf16
    weights = fc1.weight.numel() + fc2.weight.numel()
    assert unfused == fused + 2 * tokens * hidden + 2 * weights  # + the GELU's output, autocast's weight copies


@pytest.mark.parametrize("saving", [{"fused_down_projection": True}, {"fused_mlp": True}, {"checkpoint_parts": True}])
def test_side4video_gradients_unchanged_by_each_saving(saving):
    def grads(**cfg):
        torch.manual_seed(0)
        cfg = {"fused_down_projection": False, "fused_mlp": False, **cfg}
        model = create_model("side4video-tiny", num_classes=3, num_frames=2, image_size=64, **cfg).train()
        torch.manual_seed(1)
        video = torch.randn(2, 3, 2, 64, 64)
        F.cross_entropy(model(video), torch.tensor([0, 2])).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ref, got = grads(), grads(**saving)
    assert ref.keys() == got.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_frozen_backbone_matches_float32_and_halves_its_weights():
    torch.manual_seed(0)
    ref = create_model("side4video-tiny", num_classes=3, num_frames=2, image_size=64).eval()
    bf16 = create_model("side4video-tiny", num_classes=3, num_frames=2, image_size=64, backbone_dtype="bfloat16")
    bf16.load_state_dict(ref.state_dict())
    bf16.eval().keep_frozen_weights("cpu")
    assert ref.keep_frozen_weights("cpu").backbone.conv1.weight.dtype == torch.float32  # auto: fp32 off CUDA
    assert bf16.backbone.conv1.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.parameters() if p.requires_grad)
    video = torch.randn(2, 3, 2, 64, 64)
    # the tapped tokens are kept for the side network's backward in the frozen weights' dtype
    assert {z.dtype for z in bf16.backbone_features(video)} == {torch.bfloat16}
    assert {z.dtype for z in ref.backbone_features(video)} == {torch.float32}
    torch.testing.assert_close(bf16(video), ref(video), rtol=0.05, atol=0.05)
    weights = sum(p.numel() for p in ref.backbone.parameters())
    ref_bytes = sum(p.nbytes for p in ref.parameters())
    assert ref_bytes - sum(p.nbytes for p in bf16.parameters()) == 2 * weights
