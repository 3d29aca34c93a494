"""Autograd functions that keep less for backward than the modules they replace, with the same outputs.

``layer_norm_linear``: ``Linear(LayerNorm(z))`` keeping only ``z``. Autograd would keep both ``z`` and
``LayerNorm(z)`` (under autocast also a float32 copy of a bfloat16 ``z`` for the norm and a bfloat16 copy of
the norm's output for the matmul). It saves ``z`` as it is given (e.g. in the frozen backbone's dtype), plus
the per-token mean and reciprocal standard deviation, and recomputes the normalised tokens in backward. The
forward runs the norm in float32 (as autocast does) and the matmul in the autocast dtype, if any, else in
the weights' dtype: its output is that of ``F.linear(F.layer_norm(z.float()))``.

``linear_gelu_linear``: the MLP ``Linear(GELU(Linear(x)))`` keeping ``x`` and the pre-activation, not also
the GELU's output (a third of an MLP's saved tensors, the widest); GELU is recomputed in backward.

Gradients agree with autograd's to float rounding (``tests/test_layers.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _linear_param_grads(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool):
    """``F.linear``'s weight and bias gradients from ``dy (M, out)`` and its input ``x (M, in)``, both in the
    matmul's dtype; returned in the weight's dtype (as autocast's cast back gives them)."""
    return (dy.t() @ x).to(weight.dtype), (dy.sum(0).to(weight.dtype) if has_bias else None)


class _LayerNormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, norm_weight, norm_bias, weight, bias, eps: float):
        # z: (..., D); mean / rstd: (..., 1) in float32, from the norm's own kernel
        zf = z.to(torch.promote_types(z.dtype, torch.float32))  # bf16 / fp16 -> fp32; fp64 stays
        shape = list(z.shape[-1:])
        h, mean, rstd = torch.ops.aten.native_layer_norm(zf, shape, norm_weight, norm_bias, eps)  # (..., D)
        y = F.linear(h, weight, bias)  # (..., d); under autocast in the autocast dtype
        ctx.save_for_backward(z, mean, rstd, norm_weight, norm_bias, weight)
        ctx.has_bias, ctx.eps = bias is not None, eps
        ctx.h_dtype, ctx.mm_dtype = h.dtype, y.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        z, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        zf, shape = z.to(ctx.h_dtype), list(z.shape[-1:])
        h = torch.ops.aten.native_layer_norm(zf, shape, norm_weight, norm_bias, ctx.eps)[0]  # recomputed
        dy2 = dy.to(ctx.mm_dtype).reshape(-1, dy.shape[-1])  # (M, d)
        d_weight, d_bias = _linear_param_grads(dy2, h.to(ctx.mm_dtype).reshape(-1, h.shape[-1]), weight, ctx.has_bias)
        del h
        dh = (dy.to(ctx.mm_dtype) @ weight.to(ctx.mm_dtype)).to(ctx.h_dtype)  # (..., D)
        mask = [ctx.needs_input_grad[0], True, True]
        dz, d_norm_weight, d_norm_bias = torch.ops.aten.native_layer_norm_backward(
            dh, zf, shape, mean, rstd, norm_weight, norm_bias, mask)  # the norm's own backward kernel
        return (None if dz is None else dz.to(z.dtype)), d_norm_weight.to(norm_weight.dtype), \
            d_norm_bias.to(norm_bias.dtype), d_weight, d_bias, None


def layer_norm_linear(
    z: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.linear(F.layer_norm(z, (D,), norm_weight, norm_bias, eps), weight, bias)``, saving only ``z``."""
    return _LayerNormLinear.apply(z, norm_weight, norm_bias, weight, bias, eps)


class _LinearGeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2):
        # x: (..., C) -> h: (..., H) -> y: (..., C_out); under autocast h and y in the autocast dtype
        h = F.linear(x, weight1, bias1)
        y = F.linear(F.gelu(h), weight2, bias2)
        x_mm = x.to(h.dtype)  # what the first matmul read: autocast would keep this copy too
        ctx.save_for_backward(x_mm, h, weight1, weight2)
        ctx.x_dtype = x.dtype
        ctx.has_bias = (bias1 is not None, bias2 is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x_mm, h, weight1, weight2 = ctx.saved_tensors
        mm = h.dtype
        h2 = h.reshape(-1, h.shape[-1])  # (M, H)
        dy2 = dy.to(mm).reshape(-1, dy.shape[-1])  # (M, C_out)
        a = F.gelu(h2)  # recomputed, bit for bit the forward's
        d_weight2, d_bias2 = _linear_param_grads(dy2, a, weight2, ctx.has_bias[1])
        del a  # each (M, H) temporary freed as soon as it is used: at most two alive beside h
        da = dy2 @ weight2.to(mm)  # (M, H)
        dh = torch.ops.aten.gelu_backward(da, h2)
        del da
        d_weight1, d_bias1 = _linear_param_grads(dh, x_mm.reshape(-1, x_mm.shape[-1]), weight1, ctx.has_bias[0])
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dh @ weight1.to(mm)).reshape(x_mm.shape).to(ctx.x_dtype)
        return dx, d_weight1, d_bias1, d_weight2, d_bias2


def linear_gelu_linear(
    x: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
) -> torch.Tensor:
    """``F.linear(F.gelu(F.linear(x, weight1, bias1)), weight2, bias2)``, recomputing the GELU in backward."""
    return _LinearGeluLinear.apply(x, weight1, bias1, weight2, bias2)
