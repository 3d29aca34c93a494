"""RandAugment for video clips, from a policy string such as ``rand-m7-n4-mstd0.5-inc1``.

The string follows the widely used convention: ``m`` magnitude (0..``mmax``, default ``mmax`` 10),
``n`` operations drawn with replacement from 15, ``mstd`` Gaussian noise on the magnitude per operation,
``inc1`` the "increasing" variants (a larger magnitude is always a stronger change), ``p`` the chance that
each drawn operation is applied (default 0.5). Levels map to operation arguments as follows
(``l = magnitude / 10``, ``±`` a random sign):

    rotate ±30 l degrees   shear_x/y ±0.3 l   translate_x/y ±0.45 l of the width/height
    posterize: keep 4 - int(4 l) bits (inc) or int(4 l) bits   solarize: threshold 256 - int(256 l) (inc)
    or int(256 l)   solarize_add: +int(110 l) below 128   color/contrast/brightness/sharpness: factor
    1 ± 0.9 l (inc) or 0.1 + 1.8 l   auto_contrast, equalize, invert: no argument

Every operation is drawn once per clip and applied with the same arguments to all ``T`` frames. The
data-dependent ones (auto_contrast, equalize, contrast) take their statistics over the whole clip, so the
same pixel value maps to the same output in every frame. Frames are ``(T, 3, H, W)`` floats in [0, 1];
geometric operations fill uncovered pixels with ``fill`` (an RGB colour in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

LEVEL_DENOM = 10.0
_LUMA = (0.299, 0.587, 0.114)


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.int64)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:  # (T, 3, H, W) -> (T, 1, H, W)
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _affine(x: torch.Tensor, matrix: torch.Tensor, fill: tuple[float, float, float]) -> torch.Tensor:
    """Warp every frame by the same 2x3 pixel-space matrix (source -> destination)."""
    t, _, h, w = x.shape
    m = matrix.to(x).expand(t, 2, 3)
    fill_value = x.new_tensor(fill)
    return warp_affine(x, m, (h, w), padding_mode="fill", fill_value=fill_value).clamp(0, 1)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(0, 2, 3), keepdim=True)  # (1, 3, 1, 1), per channel over the clip
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-8), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel, one lookup table for the whole clip."""
    u8 = _to_u8(x)
    out = []
    for c in range(3):
        channel = u8[:, c]
        hist = torch.bincount(channel.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            out.append(channel)
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(0, 255)
        out.append(lut[channel])
    return torch.stack(out, 1).to(x.dtype) / 255


def invert(x: torch.Tensor) -> torch.Tensor:
    return 1 - x


def rotate(x: torch.Tensor, degrees: float, fill: tuple[float, float, float]) -> torch.Tensor:
    h, w = x.shape[-2:]
    center = x.new_tensor([[(w - 1) / 2, (h - 1) / 2]])
    matrix = get_rotation_matrix2d(center, x.new_tensor([degrees]), x.new_ones(1, 2))  # (1, 2, 3)
    return _affine(x, matrix, fill)


def shear(x: torch.Tensor, factor: float, axis: str, fill: tuple[float, float, float]) -> torch.Tensor:
    """Output pixel (u, v) reads input (u + factor (v + 1/2), v) for ``axis="x"`` (transposed for ``"y"``),
    the pixel-centre convention of PIL's affine transform."""
    inverse_x = [[1.0, factor, factor / 2], [0.0, 1.0, 0.0]]
    inverse_y = [[1.0, 0.0, 0.0], [factor, 1.0, factor / 2]]
    inv = torch.tensor(inverse_x if axis == "x" else inverse_y)
    forward = torch.linalg.inv(torch.cat([inv, torch.tensor([[0.0, 0.0, 1.0]])]))[:2]
    return _affine(x, forward[None], fill)


def translate(x: torch.Tensor, fraction: float, axis: str, fill: tuple[float, float, float]) -> torch.Tensor:
    """Shift the content by ``fraction`` of the width (``axis="x"``) or height towards the origin."""
    h, w = x.shape[-2:]
    shift = -fraction * (w if axis == "x" else h)
    dx, dy = (shift, 0.0) if axis == "x" else (0.0, shift)
    matrix = torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    return _affine(x, matrix[None], fill)


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    if bits >= 8:
        return x
    mask = ~(2 ** (8 - max(bits, 0)) - 1) & 0xFF
    return (_to_u8(x) & mask).to(x.dtype) / 255


def solarize(x: torch.Tensor, threshold: int) -> torch.Tensor:
    u8 = _to_u8(x)
    return torch.where(u8 >= threshold, 255 - u8, u8).to(x.dtype) / 255


def solarize_add(x: torch.Tensor, add: int, threshold: int = 128) -> torch.Tensor:
    u8 = _to_u8(x)
    return torch.where(u8 < threshold, (u8 + add).clamp(max=255), u8).to(x.dtype) / 255


def color(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = (_to_u8(_gray(x)).float().mean() + 0.5).floor() / 255  # clip-level mean grey level
    return _blend(torch.full_like(x, float(mean)), x, factor)


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with a 3x3 smoothed copy (centre weight 5, others 1); the one-pixel border is kept."""
    kernel = x.new_ones(3, 1, 3, 3)
    kernel[:, :, 1, 1] = 5
    smooth = F.conv2d(x, kernel / kernel.sum((2, 3), keepdim=True), groups=3)  # (T, 3, H-2, W-2)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


@dataclass(frozen=True)
class RandAugment:
    """Clip-consistent RandAugment; build it with ``RandAugment.from_string``."""

    magnitude: float = 9.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False
    prob: float = 0.5

    @classmethod
    def from_string(cls, policy: str) -> RandAugment:
        sections = policy.split("-")
        if sections[0] != "rand":
            raise ValueError(f"RandAugment policy must start with 'rand-', got {policy!r}")
        keys = {"m": ("magnitude", float), "n": ("num_ops", int), "mstd": ("magnitude_std", float),
                "mmax": ("magnitude_max", float), "inc": ("increasing", lambda v: bool(int(v))),
                "p": ("prob", float)}  # fmt: skip
        kwargs = {}
        for section in sections[1:]:
            key = next((k for k in sorted(keys, key=len, reverse=True) if section.startswith(k)), None)
            if key is None:
                known = sorted(keys)
                raise ValueError(f"unknown RandAugment field {section!r} in {policy!r}; known: {known}")
            name, cast = keys[key]
            kwargs[name] = cast(section[len(key) :])
        return cls(**kwargs)

    def _level(self, rng: np.random.Generator) -> float:
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = rng.uniform(0, m)
        elif self.magnitude_std > 0:
            m = rng.normal(m, self.magnitude_std)
        return min(max(m, 0.0), self.magnitude_max) / LEVEL_DENOM

    def operations(self, fill: tuple[float, float, float]) -> dict[str, Callable]:
        """name -> op(clip, level in [0, mmax / 10], rng)."""
        inc = self.increasing

        def enhance(fn: Callable) -> Callable:
            if inc:
                return lambda x, l, r: fn(x, 1.0 + _signed(0.9 * l, r))
            return lambda x, l, r: fn(x, 0.1 + 1.8 * l)

        return {
            "auto_contrast": lambda x, l, r: auto_contrast(x),
            "equalize": lambda x, l, r: equalize(x),
            "invert": lambda x, l, r: invert(x),
            "rotate": lambda x, l, r: rotate(x, _signed(30 * l, r), fill),
            "posterize": lambda x, l, r: posterize(x, 4 - int(4 * l) if inc else int(4 * l)),
            "solarize": lambda x, l, r: solarize(x, 256 - int(256 * l) if inc else int(256 * l)),
            "solarize_add": lambda x, l, r: solarize_add(x, int(110 * l)),
            "color": enhance(color),
            "contrast": enhance(contrast),
            "brightness": enhance(brightness),
            "sharpness": enhance(sharpness),
            "shear_x": lambda x, l, r: shear(x, _signed(0.3 * l, r), "x", fill),
            "shear_y": lambda x, l, r: shear(x, _signed(0.3 * l, r), "y", fill),
            "translate_x": lambda x, l, r: translate(x, _signed(0.45 * l, r), "x", fill),
            "translate_y": lambda x, l, r: translate(x, _signed(0.45 * l, r), "y", fill),
        }

    def __call__(
        self, clip: torch.Tensor, rng: np.random.Generator, fill: tuple[float, float, float] = (0.5, 0.5, 0.5)
    ) -> torch.Tensor:
        """``clip`` (T, 3, H, W) in [0, 1] -> same shape; one draw of operations and arguments per call."""
        ops = self.operations(fill)
        names = list(ops)
        for i in rng.integers(len(names), size=self.num_ops):  # with replacement
            if rng.random() < self.prob:
                clip = ops[names[i]](clip, self._level(rng), rng)
        return clip
