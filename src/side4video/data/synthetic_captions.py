"""Synthetic captioned videos for text-video retrieval, written as real MP4s and generic TSV caption files.

Each video shows one coloured shape (a square or a disc) moving left, right, up or down over a noisy grey
texture, and has several paraphrased captions ("a red square moves left", "a red box going to the left",
...). Every (colour, shape, direction) combination occurs, so a caption singles out its video only through
both appearance and temporal order: as in ``synthetic.py``, the shape visits the same positions whatever
its direction, so no single frame tells the direction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..backbones.tokenizer import EOT, SOT
from .synthetic import write_video

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 235), "yellow": (235, 215, 40)}
SHAPES = ("square", "circle")
DIRECTIONS = ("left", "right", "up", "down")
_SHAPE_WORDS = {"square": ("square", "box", "square"), "circle": ("circle", "disc", "ball")}
_DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "towards the top"),
    "down": ("down", "downwards", "towards the bottom"),
}
_TEMPLATES = ("a {c} {s} moves {d}", "a {c} {s} going {d}", "the {c} {s} slides {d}")


def paraphrases(colour: str, shape: str, direction: str) -> list[str]:
    """The captions of a video: one per template, each with its own wording of the shape and direction."""
    words = zip(_TEMPLATES, _SHAPE_WORDS[shape], _DIRECTION_WORDS[direction], strict=True)
    return [t.format(c=colour, s=s, d=d) for t, s, d in words]


def shape_mask(shape: str, side: int) -> np.ndarray:
    """``(side, side)`` bool footprint of ``shape``."""
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        r = (np.arange(side) - (side - 1) / 2) ** 2
        return r[:, None] + r[None, :] <= (side / 2) ** 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def captioned_clip(
    colour: str, shape: str, direction: str, num_frames: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """``(T, size, size, 3)`` uint8 clip of a ``colour`` ``shape`` moving in ``direction``."""
    side = max(6, size // 6)
    track = np.round(np.linspace(0, size - side, num_frames)).astype(int)  # positions along the motion
    forward = track if direction in ("right", "down") else track[::-1]
    across = rng.choice(track)  # the fixed coordinate, drawn from the same positions
    coarse = rng.uniform(70, 150, size=(4, 4, 1)).repeat(3, axis=2)  # grey texture, constant over the clip
    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BILINEAR), float)
    clip = texture + rng.normal(0, 8, size=(num_frames, size, size, 3))  # (T, H, W, 3)
    footprint = shape_mask(shape, side)  # (side, side)
    for t, p in enumerate(forward):
        y, x = (across, p) if direction in ("left", "right") else (p, across)
        clip[t, y : y + side, x : x + side][footprint] = COLOURS[colour]
    return np.clip(clip, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class CaptionedSynthetic:
    root: str  # video root of the caption files
    train_file: str  # generic TSV: video<TAB>caption
    test_file: str
    num_frames: int
    captions_per_video: int


def make_captioned_dataset(
    root: str | os.PathLike,
    num_per_caption: int = 1,
    num_frames: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    num_test_per_caption: int = 1,
    colours: tuple[str, ...] = tuple(COLOURS),
    shapes: tuple[str, ...] = SHAPES,
    directions: tuple[str, ...] = DIRECTIONS,
) -> CaptionedSynthetic:
    """Write ``num_per_caption`` training and ``num_test_per_caption`` test videos of every (colour, shape,
    direction) under ``root/videos/{train,test}/`` and their captions (every paraphrase) to
    ``root/{train,test}_captions.tsv``, video paths relative to ``root``."""
    root = os.fspath(root)
    unknown = [d for d in directions if d not in DIRECTIONS] + [c for c in colours if c not in COLOURS]
    if unknown:
        known = (*COLOURS, *DIRECTIONS)
        raise ValueError(f"unknown colour(s) / direction(s) {unknown}; known: {known}")
    if num_per_caption < 1 or num_test_per_caption < 1:
        counts = (num_per_caption, num_test_per_caption)
        raise ValueError(f"need at least one train and one test video per caption, got {counts}")
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in (("train", num_per_caption), ("test", num_test_per_caption)):
        lines = []
        for colour in colours:
            for shape in shapes:
                for direction in directions:
                    for i in range(count):
                        video = f"videos/{split}/{colour}_{shape}_{direction}_{i:03d}.mp4"
                        clip = captioned_clip(colour, shape, direction, num_frames, size, rng)
                        write_video(os.path.join(root, video), clip)
                        lines += [f"{video}\t{c}\n" for c in paraphrases(colour, shape, direction)]
        files[split] = os.path.join(root, f"{split}_captions.tsv")
        with open(files[split], "w", encoding="utf-8") as f:
            f.writelines(lines)
    return CaptionedSynthetic(root, files["train"], files["test"], num_frames, len(_TEMPLATES))


def write_caption_tokenizer(path: str | os.PathLike) -> str:
    """A word-level ``tokenizer.json`` covering every synthetic caption, with CLIP's start and end tokens
    as the two largest ids (so EOT pooling at the largest id works), for runs without CLIP's BPE files."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = sorted({w for c in COLOURS for s in SHAPES for d in DIRECTIONS for p in paraphrases(c, s, d)
                    for w in p.split()})
    vocab = {"<pad>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    vocab[SOT], vocab[EOT] = len(vocab), len(vocab) + 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([SOT, EOT])
    tokenizer.save(os.fspath(path))
    return os.fspath(path)
