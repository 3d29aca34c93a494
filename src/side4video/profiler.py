"""Deterministic cost measures of a model: parameters, FLOPs, activation memory, training memory.

* ``gflops_per_view``: multiply-accumulates (the papers' "FLOPs") of one forward pass on one clip,
  counted per operator as fvcore counts them: matmuls, convolutions and attention (QK^T and AV)
  as MACs, LayerNorm as 5 and inference BatchNorm as 2 per element.
* ``activation_bytes``: bytes of the tensors autograd saves for backward in one training forward,
  parameters excluded, each storage counted once. Attention is run as the fused kernel runs it
  (it keeps Q, K, V, the output and a log-sum-exp row, never the N x N matrix).
* ``train_memory_bytes``: ``activation_bytes`` + every weight and buffer + for each trainable
  parameter its gradient and two AdamW moments, all in float32.

Everything works on ``torch.device("meta")``, where no memory is allocated, so even the
4.4 B-parameter EVA-CLIP backbone is profiled on a small CPU machine. On a real device, timed
AdamW training steps give ``step_time_s``, and on CUDA ``cuda_peak_bytes``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


@dataclass
class Profile:
    model: str
    backbone: str
    frames: int
    batch_size: int
    image_size: int
    total_params: int
    tunable_params: int
    gflops_per_view: float
    activation_bytes: int
    train_memory_bytes: int
    cuda_peak_bytes: int | None = None
    step_time_s: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class FusedAttention(TorchFunctionMode):
    """Route ``F.scaled_dot_product_attention`` off CUDA to the fused CPU kernel.

    On the meta device PyTorch would otherwise pick the unfused path, which saves the N x N
    attention matrix for backward; the fused kernel is what CPUs and GPUs actually run.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            q, k, v = args[:3]
            if kwargs.get("attn_mask") is None and len(args) == 3:
                out = aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, dropout_p=kwargs.get("dropout_p", 0.0), is_causal=kwargs.get("is_causal", False),
                    scale=kwargs.get("scale"),
                )
                return out[0]
        return func(*args, **kwargs)


def _numel(shape) -> int:
    return math.prod(shape)


def _sdpa_cpu_flops(q, k, v, *args, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _layer_norm_flops(x, normalized_shape, weight=None, bias=None, *args, **kwargs) -> int:
    return 2 * _numel(x) * (5 if weight is not None else 4)  # fvcore: 5 per element with affine, in MACs


def _batch_norm_eval_flops(x, weight=None, *args, **kwargs) -> int:
    return 2 * _numel(x) * (2 if weight is not None else 1)  # fvcore: inference batch norm


def _batch_norm_train_flops(x, weight=None, *args, **kwargs) -> int:
    return 2 * _numel(x) * (5 if weight is not None else 4)


# FlopCounterMode counts matmuls, convolutions and the CUDA attention kernels; these complete it.
_EXTRA_FLOPS: dict = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten.native_layer_norm: _layer_norm_flops,
    aten._native_batch_norm_legit_no_training: _batch_norm_eval_flops,
    aten._native_batch_norm_legit: _batch_norm_train_flops,
    aten.native_batch_norm: _batch_norm_train_flops,
}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    tunable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, tunable


def count_macs(model: nn.Module, forward: Callable[[], object]) -> int:
    """Multiply-accumulates of ``forward()`` (which runs ``model``) in inference mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FusedAttention(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as fc:
            forward()
    finally:
        model.train(was_training)
    return fc.get_total_flops() // 2


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors saved for backward while running ``forward()`` (a training forward)."""
    weights = {_storage_key(p) for p in model.parameters()} | {_storage_key(b) for b in model.buffers()}
    seen: dict[int, torch.Tensor] = {}  # holding the tensors keeps their storages (and keys) alive

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in weights and key not in seen:
            seen[key] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FusedAttention():
        forward()
    return sum(t.untyped_storage().nbytes() for t in seen.values())


def training_memory_bytes(model: nn.Module, activation_bytes: int, bytes_per_value: int = 4) -> int:
    """Activations + all weights and buffers + gradient and two AdamW moments per trainable value."""
    _, tunable = count_params(model)
    weights = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return activation_bytes + bytes_per_value * (weights + 3 * tunable)


def _training_steps(model: nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int = 3
                    ) -> tuple[float, int | None]:
    """Seconds per real AdamW training step (after one warm-up step) and, on CUDA, the peak memory."""
    cuda = next(model.parameters()).device.type == "cuda"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocates optimizer state and autotunes kernels
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return seconds, torch.cuda.max_memory_allocated() if cuda else None


def profile_model(
    name: str,
    num_classes: int = 400,
    frames: int = 8,
    batch_size: int = 1,
    image_size: int | None = None,
    device: str = "meta",
    merged: bool = False,
    **overrides,
) -> Profile:
    """Profile preset ``name`` (see the module docstring for what each number means).

    Recognition models see a clip and its label; retrieval models a clip and a caption of
    ``text_length`` tokens, and their FLOPs are those of encoding one clip.
    """
    from .engine.distributed import resolve_device
    from .models import create_model, get_preset

    dev = torch.device("meta") if str(device) == "meta" else resolve_device(str(device))
    task = get_preset(name).task
    if "num_classes" in {f.name for f in dataclasses.fields(get_preset(name).config)}:
        overrides["num_classes"] = num_classes
    with dev:
        model = create_model(name, num_frames=frames, image_size=image_size, **overrides)
        if merged:
            if not hasattr(model, "reparameterize"):
                raise ValueError(f"--merged applies to models with reparameterize(); {name} has none")
            model = model.reparameterize()
    size = model.backbone.cfg.image_size
    total, tunable = count_params(model)

    def clip(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, frames, size, size, device=dev)

    one = clip(1)
    macs = count_macs(model, lambda: task.encode(model, one))
    batch = task.example_batch(model, clip(batch_size))

    def loss_fn() -> torch.Tensor:
        return task.loss(model, batch, dev)[0]

    model.train()
    act = saved_activation_bytes(model, loss_fn)
    prof = Profile(
        model=name,
        backbone=model.cfg.backbone,
        frames=frames,
        batch_size=batch_size,
        image_size=size,
        total_params=total,
        tunable_params=tunable,
        gflops_per_view=round(macs / 1e9, 2),
        activation_bytes=act,
        train_memory_bytes=training_memory_bytes(model, act),
    )
    if dev.type != "meta":
        seconds, prof.cuda_peak_bytes = _training_steps(model, loss_fn)
        prof.step_time_s = round(seconds, 4)
    return prof
