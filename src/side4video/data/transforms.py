"""Clip transforms: one draw of random parameters per clip, applied identically to all of its frames.

Training: optional resize (``AugmentConfig.resize``) -> RandomResizedCrop, or a short-side jitter and a
random square crop (``short_side_jitter``) -> horizontal flip (optionally swapping direction-sensitive
labels) -> RandAugment -> grayscale -> random erasing -> CLIP normalisation. Testing: resize (the short
side, or to a fixed height x width), then a centre crop or three crops along the long side. Frames enter
as ``uint8`` arrays ``(T, H, W, 3)`` and leave as normalised ``float32`` tensors ``(3, T, S, S)``.
Randomness comes only from the ``numpy`` generator passed in, so a clip is a pure function of its seed.

A resize ``size`` is an ``int`` (the short side, aspect ratio kept) or ``(height, width)`` (a fixed
size). Side4Video's released pipeline resizes Kinetics frames to short side 256 and Something-Something
frames to 256 x 320, in training (before the crop) and at test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .randaugment import RandAugment

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Something-Something: "pushing/pulling/turning ... from left to right" <-> "... right to left".
SS_FLIP_PAIRS = ((86, 87), (93, 94), (166, 167))
Size = int | tuple[int, int]  # short side, or (height, width)


@dataclass(frozen=True)
class AugmentConfig:
    resize: Size | None = None  # frames resized before the crop: short side or (height, width); None: as decoded
    short_side_jitter: tuple[int, int] | None = None  # short side uniform in [lo, hi], then a random square crop
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction (without short_side_jitter)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
    flip: float = 0.5  # horizontal flip probability
    flip_label_pairs: tuple[tuple[int, int], ...] = ()  # a flipped clip swaps these labels
    rand_augment: str | None = None  # e.g. "rand-m7-n4-mstd0.5-inc1"
    grayscale: float = 0.0  # probability
    random_erasing: float = 0.0  # probability of erasing one rectangle, the same on every frame
    erasing_mode: Literal["const", "rand"] = "const"  # fill: grey (128) or uniform random pixels
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):  # fail early on bad pairs, a bad policy string or a bad size
        _ = self.flip_map, self.rand_augment_op
        if self.resize is not None:
            check_size(self.resize, "resize")
        if self.short_side_jitter is not None and not 0 < self.short_side_jitter[0] <= self.short_side_jitter[1]:
            raise ValueError(f"short_side_jitter must be (lo, hi) with 0 < lo <= hi, got {self.short_side_jitter}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"random_erasing is a probability, got {self.random_erasing}")
        if self.erasing_mode not in ("const", "rand"):
            raise ValueError(f"erasing_mode must be 'const' or 'rand', got {self.erasing_mode!r}")

    @cached_property
    def flip_map(self) -> dict[int, int]:
        flip_map: dict[int, int] = {}
        for a, b in self.flip_label_pairs:
            if a in flip_map or b in flip_map or a == b:
                raise ValueError(f"a label is in more than one flip pair: {self.flip_label_pairs}")
            flip_map[a], flip_map[b] = b, a
        return flip_map

    @cached_property
    def rand_augment_op(self) -> RandAugment | None:
        return None if self.rand_augment is None else RandAugment.from_string(self.rand_augment)

    @classmethod
    def recipe(cls, dataset: str, **overrides) -> AugmentConfig:
        """Side4Video's training augmentation (paper Table 12) for ``"kinetics"`` or ``"something"``."""
        recipes = {
            "kinetics": cls(grayscale=0.2),
            "something": cls(rand_augment="rand-m7-n4-mstd0.5-inc1", flip_label_pairs=SS_FLIP_PAIRS),
        }
        if dataset not in recipes:
            raise KeyError(f"no augmentation recipe for {dataset!r}; known: {sorted(recipes)}")
        return replace(recipes[dataset], **overrides)


def check_size(size: Size, name: str) -> Size:
    """``size`` if it is a positive int or a pair of positive ints, else a ``ValueError`` naming ``name``."""
    values = (size,) if isinstance(size, int) else tuple(size)
    if len(values) not in (1, 2) or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{name} must be a short side (int) or (height, width), got {size!r}")
    return size if isinstance(size, int) else (values[0], values[1])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``(T, 3, H, W)`` to ``size`` = (height, width)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(T, 3, H, W)`` in [0, 1] -> normalised ``(3, T, H, W)``."""
    x = (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)
    return x.transpose(0, 1).contiguous()


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop of random area fraction in ``scale`` and aspect ratio in ``ratio``;
    after 10 misses, the largest centred crop with the aspect ratio clamped to ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _grayscale(x: torch.Tensor) -> torch.Tensor:  # (T, 3, H, W), ITU-R 601 luma copied to 3 channels
    luma = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return luma.expand_as(x).contiguous()


def random_erase_box(
    height: int, width: int, rng: np.random.Generator, area: tuple[float, float] = (0.02, 1 / 3),
    aspect: tuple[float, float] = (0.3, 10 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one erased rectangle: area fraction uniform in ``area``, aspect ratio
    log-uniform in ``aspect`` (mmaction2's ``RandomErasing`` defaults)."""
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    target = height * width * rng.uniform(*area)
    h = min(round(math.sqrt(target * ratio)), height)
    w = min(round(math.sqrt(target / ratio)), width)
    top = int(rng.integers(height - h)) if height > h else 0
    left = int(rng.integers(width - w)) if width > w else 0
    return top, left, h, w


def _erase(x: torch.Tensor, mode: str, rng: np.random.Generator) -> torch.Tensor:
    """``x`` ``(T, 3, H, W)`` in [0, 1] with one rectangle, the same on every frame, filled with grey 128
    (``const``) or uniform random 8-bit values drawn per pixel and frame (``rand``)."""
    top, left, h, w = random_erase_box(x.shape[-2], x.shape[-1], rng)
    x = x.clone()
    if mode == "const":
        x[..., top : top + h, left : left + w] = 128 / 255
    else:
        noise = rng.integers(0, 256, size=(x.shape[0], 3, h, w))
        x[..., top : top + h, left : left + w] = torch.from_numpy(noise).to(x) / 255
    return x


def train_clip(
    frames: np.ndarray, label: int, cfg: AugmentConfig, image_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, int]:
    """One augmented training view: ``(T, H, W, 3)`` uint8 -> (``(3, T, S, S)`` float32, label after flip)."""
    if cfg.resize is None and cfg.short_side_jitter is None:  # crop the decoded frames, resize the crop only
        top, left, h, w = random_resized_crop_box(frames.shape[1], frames.shape[2], cfg.scale, cfg.ratio, rng)
        x = resize(to_tensor(frames[:, top : top + h, left : left + w]), (image_size, image_size))  # (T, 3, S, S)
    else:
        x = to_tensor(frames) if cfg.resize is None else rescale(to_tensor(frames), cfg.resize)  # (T, 3, H', W')
        if cfg.short_side_jitter is None:
            top, left, h, w = random_resized_crop_box(x.shape[-2], x.shape[-1], cfg.scale, cfg.ratio, rng)
            x = resize(x[..., top : top + h, left : left + w], (image_size, image_size))  # (T, 3, S, S)
        else:
            side = round(rng.uniform(*cfg.short_side_jitter))
            x = rescale(x, max(side, image_size))  # (T, 3, H'', W'')
            top = int(rng.integers(x.shape[-2] - image_size + 1))
            left = int(rng.integers(x.shape[-1] - image_size + 1))
            x = x[..., top : top + image_size, left : left + image_size]  # (T, 3, S, S)
    if rng.random() < cfg.flip:
        x = x.flip(-1)
        label = cfg.flip_map.get(label, label)
    if cfg.rand_augment_op is not None:
        x = cfg.rand_augment_op(x, rng, fill=cfg.mean)
    if rng.random() < cfg.grayscale:
        x = _grayscale(x)
    if cfg.random_erasing and rng.random() < cfg.random_erasing:
        x = _erase(x, cfg.erasing_mode, rng)
    return normalize(x, cfg.mean, cfg.std), label


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    return resize(x, (max(size, round(h * scale)), max(size, round(w * scale))))


def rescale(x: torch.Tensor, size: Size) -> torch.Tensor:
    """``(T, 3, H, W)`` resized to short side ``size`` (an int) or to ``size`` = (height, width)."""
    return resize_short_side(x, size) if isinstance(size, int) else resize(x, tuple(size))


def eval_views(
    frames: np.ndarray,
    image_size: int,
    *,
    num_crops: int = 1,
    resize_to: Size | None = None,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> list[torch.Tensor]:
    """Deterministic test crops: resize to ``resize_to`` (a short side or (height, width); default: short
    side ``image_size``), then 1 centre crop or 3 crops (left/centre/right, or top/centre/bottom when
    portrait). Returns ``num_crops`` tensors ``(3, T, S, S)`` in that order."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    size = check_size(resize_to or image_size, "test resize")
    if min((size,) if isinstance(size, int) else size) < image_size:
        raise ValueError(f"test resize {size} is smaller than the crop {image_size}")
    x = rescale(to_tensor(frames), size)  # (T, 3, H', W')
    h, w = x.shape[-2:]
    landscape = w >= h
    long_room = (w if landscape else h) - image_size
    short_offset = ((h if landscape else w) - image_size) // 2
    starts = [long_room // 2] if num_crops == 1 else [0, long_room // 2, long_room]
    views = []
    for s in starts:
        top, left = (short_offset, s) if landscape else (s, short_offset)
        views.append(normalize(x[..., top : top + image_size, left : left + image_size], mean, std))
    return views
