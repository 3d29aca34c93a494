"""``Linear(LayerNorm(z))`` that keeps only ``z`` for backward.

Autograd would keep both ``z`` and ``LayerNorm(z)`` (under autocast also a float32 copy of a bfloat16
``z`` for the norm and a bfloat16 copy of the norm's output for the matmul). ``layer_norm_linear`` saves
``z`` as it is given (e.g. in the frozen backbone's dtype), plus the per-token mean and reciprocal
standard deviation, and recomputes the normalised tokens in backward. The forward runs the norm in
float32 (as autocast does) and the matmul in the autocast dtype, if any, else in the weights' dtype: its
output is that of ``F.linear(F.layer_norm(z.float()))``; gradients agree with autograd's to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _LayerNormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, norm_weight, norm_bias, weight, bias, eps: float):
        # z: (..., D); mean / rstd: (..., 1) in float32, as F.layer_norm computes them
        zf = z.to(torch.promote_types(z.dtype, torch.float32))  # bf16 / fp16 -> fp32; fp64 stays
        var, mean = torch.var_mean(zf, dim=-1, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        h = F.layer_norm(zf, z.shape[-1:], norm_weight, norm_bias, eps)  # (..., D) in float32, as under autocast
        y = F.linear(h, weight, bias)  # (..., d); under autocast in the autocast dtype
        ctx.save_for_backward(z, mean, rstd, norm_weight, norm_bias, weight)
        ctx.has_bias = bias is not None
        ctx.h_dtype, ctx.mm_dtype = h.dtype, y.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        z, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        zhat = (z.to(mean.dtype) - mean) * rstd  # (..., D), recomputed
        h = zhat * norm_weight.to(zhat.dtype) + norm_bias.to(zhat.dtype)
        dy2 = dy.to(ctx.mm_dtype).reshape(-1, dy.shape[-1])  # (M, d)
        d_weight = (dy2.t() @ h.to(ctx.mm_dtype).reshape(-1, h.shape[-1])).to(weight.dtype)
        d_bias = dy2.sum(0).to(weight.dtype) if ctx.has_bias else None
        dh = (dy.to(ctx.mm_dtype) @ weight.to(ctx.mm_dtype)).to(ctx.h_dtype)  # (..., D)
        lead = tuple(range(dh.dim() - 1))
        d_norm_weight = (dh * zhat).sum(lead).to(norm_weight.dtype)
        d_norm_bias = dh.sum(lead).to(norm_bias.dtype)
        dz = None
        if ctx.needs_input_grad[0]:
            g = dh * norm_weight.to(dh.dtype)
            dz = (rstd * (g - g.mean(-1, keepdim=True) - zhat * (g * zhat).mean(-1, keepdim=True))).to(z.dtype)
        return dz, d_norm_weight, d_norm_bias, d_weight, d_bias, None


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
