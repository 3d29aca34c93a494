"""Deterministic cost measures of a model: parameters, FLOPs, and the memory of a training step.

* ``gflops_per_view``: multiply-accumulates (the papers' "FLOPs") of one forward pass on one clip,
  counted per operator as fvcore counts them: matmuls, convolutions and attention (QK^T and AV)
  as MACs, LayerNorm as 5 and inference BatchNorm as 2 per element.
* Memory, predicted by running one AdamW training step on ``torch.device("meta")`` (nothing is
  allocated, so even the 4.4 B-parameter EVA-CLIP is profiled on a small CPU machine) while a
  dispatch mode tracks the bytes of every live tensor storage:

  - ``weight_bytes``: every parameter and buffer, in the dtype it is kept in;
  - ``grad_bytes`` and ``optimizer_bytes``: a gradient and two AdamW moments per trainable value;
  - ``input_bytes``: the batch (clips, labels or captions);
  - ``activation_bytes``: what the training forward leaves alive for backward (saved tensors and
    the inputs of checkpointed parts), each storage once. Attention is run as the fused kernel runs
    it (it keeps Q, K, V, the output and a log-sum-exp row, never the N x N matrix);
  - ``train_memory_bytes``: the peak of live bytes over the whole step (forward, backward,
    optimizer step), transient buffers included.

  ``precision`` is that of the step: ``fp32``, or ``bf16-mixed`` / ``fp16-mixed`` (float32 weights,
  gradients and AdamW state; the forward under CUDA autocast's casting rules, which ``MixedPrecision``
  applies on any device, so saved tensors have the dtype a CUDA autocast step gives them).

On a real device, timed training steps give ``step_time_s`` and the allocator's peak of one step,
``measured_peak_bytes`` (CPU: ``torch.profiler`` memory events; CUDA: ``max_memory_allocated``),
beside the prediction at the same precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten

Precision = Literal["fp32", "bf16-mixed", "fp16-mixed"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed", "fp16-mixed")
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def default_precision(device: torch.device | str) -> str:
    """What training uses there: bf16 autocast on CUDA (and on meta, which stands in for a GPU), fp32 on CPU."""
    return "fp32" if torch.device(device).type == "cpu" else "bf16-mixed"


@dataclass
class Profile:
    model: str
    backbone: str
    frames: int
    batch_size: int
    image_size: int
    precision: str
    total_params: int
    tunable_params: int
    gflops_per_view: float
    weight_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_bytes: int | None = None
    input_bytes: int | None = None
    activation_bytes: int | None = None
    train_memory_bytes: int | None = None
    measured_peak_bytes: int | None = None
    step_time_s: float | None = None

    @property
    def prediction_error(self) -> float | None:
        """Predicted / measured peak - 1 (None without a measurement)."""
        if self.measured_peak_bytes is None or self.train_memory_bytes is None:
            return None
        return self.train_memory_bytes / self.measured_peak_bytes - 1

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.prediction_error is not None:
            d["prediction_error"] = round(self.prediction_error, 4)
        return d


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


class MetaNorms(TorchDispatchMode):
    """LayerNorm's forward and backward on the meta device as one allocation per output.

    PyTorch computes these meta outputs by running its Python reference decomposition (a dozen element-wise
    meta operators), a fifth of a simulated step's time. The outputs here have the same shapes, dtypes and
    (contiguous) strides: mean and rstd in float32 for 16-bit inputs, gradients in their parameter's dtype.
    Enter it before the counting modes, so that they still see the operator."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.native_layer_norm.default and args[0].device.type == "meta" and not kwargs:
            x, shape = args[0], args[1]
            stats = (*x.shape[: x.dim() - len(shape)], *(1,) * len(shape))
            acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            return x.new_empty(x.shape), x.new_empty(stats, dtype=acc), x.new_empty(stats, dtype=acc)
        if func is aten.native_layer_norm_backward.default and args[0].device.type == "meta" and not kwargs:
            _, x, _, _, _, weight, bias, mask = args
            return (x.new_empty(x.shape) if mask[0] else None,
                    weight.new_empty(weight.shape) if mask[1] and weight is not None else None,
                    bias.new_empty(bias.shape) if mask[2] and bias is not None else None)
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


def count_macs(model: nn.Module, forward: Callable[[], object], train: bool = False) -> int:
    """Multiply-accumulates of ``forward()`` (which runs ``model``): in inference mode, or with
    ``train`` in training mode with autograd on (then ``forward`` may also run the backward)."""
    was_training = model.training
    model.train(train)
    try:
        with torch.set_grad_enabled(train), FusedAttention(), MetaNorms(), \
                FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as fc:
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


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {_storage_key(t): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created under this mode that are still alive (``current``) and
    their maximum (``peak``). Works on any device, meta included: a storage counts from the operator
    that creates it until Python's reference to it dies."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in _tensors((args, kwargs))}  # views and in-place results alias these
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self._sizes and key not in inputs:
                self._sizes[key] = storage.nbytes()
                self.current += self._sizes[key]
                weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out

    def _free(self, key: int) -> None:
        self.current -= self._sizes.pop(key)


def _cast(dtype: torch.dtype, cache: dict | None = None) -> Callable:
    def cast(x):
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()) or x.dtype in (dtype, torch.float64):
            return x
        if cache is None or not (x.is_leaf and x.requires_grad and x.dtype == torch.float32):
            return x.to(dtype)
        if id(x) not in cache:  # autocast casts a trainable weight once per region
            cache[id(x)] = (x, x.to(dtype))
        return cache[id(x)][1]

    return cast


Tensor = torch.Tensor
# CUDA autocast's operator lists (torch/csrc/autograd/autocast_mode.cpp), as Python callables.
_LOWER_PRECISION = {
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.scaled_dot_product_attention, torch.matmul, Tensor.matmul, Tensor.__matmul__, Tensor.__rmatmul__,
    torch.mm, Tensor.mm, torch.bmm, Tensor.bmm, torch.addmm, Tensor.addmm, torch.baddbmm, Tensor.baddbmm,
    torch.mv, Tensor.mv, torch.einsum,
}
_FLOAT32 = {
    F.layer_norm, F.group_norm, F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss, F.smooth_l1_loss,
    F.binary_cross_entropy_with_logits, F.kl_div, F.cosine_similarity, torch.cdist,
    torch.exp, Tensor.exp, torch.log, Tensor.log, torch.logsumexp, Tensor.logsumexp, torch.rsqrt, Tensor.rsqrt,
    torch.reciprocal, Tensor.reciprocal, torch.pow, Tensor.pow, Tensor.__pow__, torch.norm, Tensor.norm,
    torch.linalg.vector_norm,
}
# Run in float32 by passing ``dtype``: the input is not copied, the output is float32.
_FLOAT32_OUTPUT = {
    F.softmax, F.log_softmax, torch.softmax, Tensor.softmax, torch.log_softmax, Tensor.log_softmax,
    torch.sum, Tensor.sum, torch.cumsum, Tensor.cumsum, torch.prod, Tensor.prod,
}


class MixedPrecision(TorchFunctionMode):
    """CUDA autocast's casting rules on any device (meta and CPU included, where ``torch.autocast("cuda")``
    does not run): matmuls, convolutions and attention in ``dtype``; norms, softmax, losses, reductions
    and exponentials in float32; everything else in its inputs' dtype. The casts are autograd operations
    as under autocast, so the tensors saved for backward have the dtype a CUDA autocast step gives them."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __exit__(self, *exc):
        self._cache.clear()
        return super().__exit__(*exc)

    def cast(self, func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``func``'s arguments as autocast would pass them."""
        if func in _LOWER_PRECISION:
            return tree_map(_cast(self.dtype, self._cache), (args, kwargs))
        if func in _FLOAT32:
            return tree_map(_cast(torch.float32), (args, kwargs))
        if func in _FLOAT32_OUTPUT and kwargs.get("dtype") is None:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16):
                return args, {**kwargs, "dtype": torch.float32}
        return args, kwargs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args, kwargs = self.cast(func, args, kwargs or {})
        return func(*args, **kwargs)


class _SimulatedForward(TorchFunctionMode):
    """``MixedPrecision`` (when ``dtype`` is given) and ``FusedAttention`` as one mode: a checkpointed
    part's recomputation can restore only one."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.precision = MixedPrecision(dtype) if dtype is not None else None
        self.attention = FusedAttention()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.precision is not None:
            args, kwargs = self.precision.cast(func, args, kwargs)
        return self.attention.__torch_function__(func, types, args, kwargs)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's precision context: nothing for fp32, ``torch.autocast`` on CUDA, else ``MixedPrecision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = _AUTOCAST_DTYPES[precision]
    return torch.autocast("cuda", dtype=dtype) if device.type == "cuda" else MixedPrecision(dtype)


def _forward_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The precision of a training forward (``autocast``), off CUDA with attention run as the fused kernel."""
    context = autocast(precision, device)
    return context if device.type == "cuda" else _SimulatedForward(_AUTOCAST_DTYPES.get(precision))


@contextlib.contextmanager
def _recompute_like_forward(precision: str, device: torch.device):
    """Recompute checkpointed parts under the forward's function modes (``MixedPrecision``, ``FusedAttention``).

    ``torch.utils.checkpoint`` restores ``torch.autocast`` for its recomputation by itself, but the backward
    runs without the forward's function modes; its ``context_fn`` default brings them back meanwhile.
    """
    import torch.utils.checkpoint as ckpt

    fn = ckpt.checkpoint
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    saved = dict(fn.__kwdefaults__)
    fn.__kwdefaults__["context_fn"] = lambda: (contextlib.nullcontext(), _forward_context(precision, device))
    try:
        yield
    finally:
        fn.__kwdefaults__.update(saved)


@dataclass
class StepMemory:
    """Bytes of one training step (see the module docstring)."""

    weights: int
    grads: int
    optimizer: int
    inputs: int
    activations: int
    peak: int


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _optimizer(model: nn.Module, foreach: bool | None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with its state allocated, as after the first step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, foreach=foreach)
    for p in params:
        opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return opt


def simulate_training_step(
    model: nn.Module,
    batch: dict,
    loss_fn: Callable[[], torch.Tensor],
    precision: str = "fp32",
    foreach: bool | None = None,
    hold_grads: bool = False,
) -> StepMemory:
    """Memory of one AdamW training step of ``model`` (``loss_fn()``: its loss on ``batch``), counted by
    ``LiveBytes``.

    ``foreach`` picks AdamW's implementation (CUDA's default is the foreach one, whose temporaries
    span all parameters at once). With ``hold_grads`` the gradients exist before the forward, as in
    every micro-batch but the first of a gradient-accumulation group.
    """
    opt = _optimizer(model, foreach)
    params = [p for p in model.parameters() if p.requires_grad]
    if hold_grads:
        for p in params:
            p.grad = torch.zeros_like(p)
    weights = storage_bytes([*model.parameters(), *model.buffers()])
    state = storage_bytes(_tensors(list(opt.state.values())))
    inputs = storage_bytes(_tensors(batch))
    held = storage_bytes(p.grad for p in params if p.grad is not None)
    device = _tensors(batch)[0].device
    model.train()
    with MetaNorms(), LiveBytes() as live, _recompute_like_forward(precision, device):
        with _forward_context(precision, device):
            loss = loss_fn()
        activations = live.current
        loss.backward()
        del loss
        opt.step()
        opt.zero_grad(set_to_none=True)
    grads = storage_bytes(p for p in params)  # one gradient per trainable value, in its dtype
    return StepMemory(weights, grads, state, inputs, activations, weights + state + inputs + held + live.peak)


def measure_training_step(
    model: nn.Module, batch: dict, loss_fn: Callable[[], torch.Tensor], precision: str = "fp32", steps: int = 3
) -> tuple[float | None, int]:
    """Seconds per real AdamW training step over ``steps`` timed steps (None for 0) after a warm-up step,
    and the allocator's peak bytes of one more step: on CUDA ``max_memory_allocated``; elsewhere the bytes
    alive before the step (weights, AdamW state, batch) plus the highest running sum of
    ``torch.profiler``'s allocation events during it."""
    device = _tensors(batch)[0].device
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and precision == "fp16-mixed")
    emulated = not cuda  # function modes, to be restored for recomputation
    model.train()

    def step() -> None:
        with _recompute_like_forward(precision, device) if emulated else contextlib.nullcontext():
            with _forward_context(precision, device):
                loss = loss_fn()
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocates optimizer state and autotunes kernels
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps if steps else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        step()
        return seconds, torch.cuda.max_memory_allocated()
    before = storage_bytes([*model.parameters(), *model.buffers(), *_tensors(list(opt.state.values())),
                            *_tensors(batch)])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return seconds, before + peak


@dataclass
class _Setup:
    model: nn.Module
    batch: dict
    loss_fn: Callable[[], torch.Tensor]  # the task's training loss on ``batch``
    encode: Callable[[], object]  # the forward whose FLOPs are reported: one clip


def _setup(
    name: str, dev: torch.device, target: torch.device, num_classes: int, frames: int, batch_size: int,
    image_size: int | None, merged: bool, overrides: dict,
) -> _Setup:
    """Preset ``name`` built on ``dev`` with its frozen weights as training keeps them on ``target``, its
    task's example training batch and loss."""
    from .models import create_model, get_preset

    overrides = dict(overrides)
    task = get_preset(name).task
    if "num_classes" in {f.name for f in dataclasses.fields(get_preset(name).config)}:
        overrides["num_classes"] = num_classes
    with dev:
        model = create_model(name, num_frames=frames, image_size=image_size, **overrides)
        if merged:
            if not hasattr(model, "reparameterize"):
                raise ValueError(f"--merged applies to models with reparameterize(); {name} has none")
            model = model.reparameterize()
    model.keep_frozen_weights(target)
    size = model.backbone.cfg.image_size

    def clip(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, frames, size, size, device=dev)

    one = clip(1)
    batch = task.example_batch(model, clip(batch_size))

    def loss_fn() -> torch.Tensor:
        return task.loss(model, batch, dev)[0]

    return _Setup(model, batch, loss_fn, lambda: task.encode(model, one))


def predict_memory(
    name: str,
    batch_size: int,
    frames: int = 8,
    precision: str = "bf16-mixed",
    num_classes: int = 400,
    image_size: int | None = None,
    merged: bool = False,
    hold_grads: bool = False,
    **overrides,
) -> StepMemory:
    """Memory of one CUDA training step of preset ``name``, simulated on the meta device."""
    s = _setup(name, torch.device("meta"), torch.device("cuda"), num_classes, frames, batch_size, image_size,
               merged, overrides)
    return simulate_training_step(s.model, s.batch, s.loss_fn, precision, foreach=True, hold_grads=hold_grads)


def profile_model(
    name: str,
    num_classes: int = 400,
    frames: int = 8,
    batch_size: int = 1,
    image_size: int | None = None,
    device: str = "meta",
    merged: bool = False,
    precision: str | None = None,
    steps: int = 3,
    memory: bool = True,
    **overrides,
) -> Profile:
    """Profile preset ``name`` (see the module docstring for what each number means).

    The prediction always runs on the meta device; with ``device`` ``cpu`` or ``cuda`` the preset is
    also trained there for ``steps`` timed steps and one measured one, giving ``step_time_s`` and
    ``measured_peak_bytes``.
    ``precision`` defaults to what training uses on ``device`` (``default_precision``). With ``memory``
    False only parameters and FLOPs are counted.
    """
    from .engine.distributed import resolve_device

    dev = torch.device("meta") if str(device) == "meta" else resolve_device(str(device))
    precision = precision or default_precision(dev)
    args = (num_classes, frames, batch_size, image_size, merged, overrides)
    target = torch.device("cuda") if dev.type == "meta" else dev  # meta stands in for a GPU
    s = _setup(name, torch.device("meta"), target, *args)
    total, tunable = count_params(s.model)
    macs = count_macs(s.model, s.encode)
    prof = Profile(
        model=name,
        backbone=s.model.cfg.backbone,
        frames=frames,
        batch_size=batch_size,
        image_size=s.model.backbone.cfg.image_size,
        precision=precision,
        total_params=total,
        tunable_params=tunable,
        gflops_per_view=round(macs / 1e9, 2),
    )
    if not memory:
        return prof
    # AdamW's default implementation: foreach on CUDA (meta stands in for it), per tensor on CPU
    mem = simulate_training_step(s.model, s.batch, s.loss_fn, precision, foreach=dev.type != "cpu")
    prof.weight_bytes, prof.grad_bytes, prof.optimizer_bytes = mem.weights, mem.grads, mem.optimizer
    prof.input_bytes, prof.activation_bytes, prof.train_memory_bytes = mem.inputs, mem.activations, mem.peak
    if dev.type != "meta":
        real = _setup(name, dev, target, *args)
        seconds, prof.measured_peak_bytes = measure_training_step(
            real.model, real.batch, real.loss_fn, precision, steps)
        prof.step_time_s = None if seconds is None else round(seconds, 4)
    return prof
