"""Small synthetic video data written as real files: a motion-direction task and corrupt videos.

The motion task has 4 classes (a bright square moving left, right, up or down over a noisy textured
background). It needs temporal order: along the motion axis the square visits the same positions in both
directions, and the other coordinate is drawn from that same set of positions, so the square's position in
any single frame has the same distribution in all 4 classes, and left/right (up/down) clips have the same
frame average in expectation. Only the order of the frames tells the classes apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
from PIL import Image

MOTION_CLASSES = ("left", "right", "up", "down")
# Near-lossless settings, so that decoded pixel values can be checked.
_QUALITY = {"libx264": {"crf": "10", "preset": "ultrafast"}, "mpeg4": {"b": "4000000"}}


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    fps: int = 25,
    codec: str = "libx264",
    gop_size: int | None = None,
    faststart: bool = False,
) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (even H and W) as yuv420p with PyAV, in the container the
    file extension names (.mp4, .mkv, .webm, .avi, .ts, .h264, ...); ``faststart`` writes the index (moov
    atom) at the start of an MP4 instead of the end."""
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w}")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(os.fspath(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if gop_size is not None:
            stream.gop_size = gop_size
        stream.options = _QUALITY.get(codec, {})
        for frame in np.ascontiguousarray(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush


def write_frame_folder(
    folder: str | os.PathLike, frames: np.ndarray, *, template: str = "img_{:05d}.jpg", start_index: int = 1
) -> None:
    """Save ``(T, H, W, 3)`` uint8 frames as images named ``template.format(t + start_index)``."""
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, template.format(t + start_index)), quality=95)


def motion_clip(direction: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(T, size, size, 3)`` uint8 clip of a square moving in ``direction`` (one of MOTION_CLASSES)."""
    side = max(4, size // 6)
    track = np.round(np.linspace(0, size - side, num_frames)).astype(int)  # positions along the motion axis
    forward = track if direction in ("right", "down") else track[::-1]
    across = rng.choice(track)  # the fixed coordinate, drawn from the same set of positions
    coarse = rng.uniform(40, 150, size=(4, 4, 3))  # smooth colour texture, constant over the clip
    texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BILINEAR), float)
    clip = texture + rng.normal(0, 12, size=(num_frames, size, size, 3))  # (T, H, W, 3)
    for t, p in enumerate(forward):
        y, x = (across, p) if direction in ("left", "right") else (p, across)
        clip[t, y : y + side, x : x + side] = 235
    return np.clip(clip, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticDataset:
    root: str  # data root of the lists
    train_list: str
    val_list: str
    label_names: str
    classes: tuple[str, ...]
    num_frames: int


def make_motion_dataset(
    root: str | os.PathLike,
    num_videos_per_class: int,
    num_frames: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    num_val_per_class: int | None = None,
    codec: str = "libx264",
    frame_folders: bool = False,
    frames_template: str = "img_{:05d}.jpg",
) -> SyntheticDataset:
    """Write the 4-class motion-direction task under ``root``: videos (or frame folders), train/val lists
    (``train_list.txt``, ``val_list.txt``, paths relative to ``root``) and ``label_names.txt``.

    ``num_val_per_class`` (default a quarter, at least 1) of each class's videos go to validation.
    """
    root = os.fspath(root)
    n_val = max(1, num_videos_per_class // 4) if num_val_per_class is None else num_val_per_class
    if not 0 < n_val < num_videos_per_class:
        raise ValueError(f"need 0 < num_val_per_class ({n_val}) < videos per class ({num_videos_per_class})")
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for label, direction in enumerate(MOTION_CLASSES):
        for i in range(num_videos_per_class):
            clip = motion_clip(direction, num_frames, size, rng)
            name = f"{direction}_{i:04d}"
            if frame_folders:
                write_frame_folder(os.path.join(root, "frames", name), clip, template=frames_template)
                entry = f"frames/{name} {num_frames} {label}"
            else:
                write_video(os.path.join(root, "videos", f"{name}.mp4"), clip, codec=codec)
                entry = f"videos/{name}.mp4 {label}"
            lines["val" if i < n_val else "train"].append(entry)
    paths = {split: os.path.join(root, f"{split}_list.txt") for split in lines}
    for split, entries in lines.items():
        with open(paths[split], "w", encoding="utf-8") as f:
            f.write("\n".join(entries) + "\n")
    label_names = os.path.join(root, "label_names.txt")
    with open(label_names, "w", encoding="utf-8") as f:
        f.write("".join(f"{i} {name}\n" for i, name in enumerate(MOTION_CLASSES)))
    return SyntheticDataset(root, paths["train"], paths["val"], label_names, MOTION_CLASSES, num_frames)


CorruptKind = Literal["zero_bytes", "truncated", "truncated_data", "garbage"]


def make_corrupt_video(
    path: str | os.PathLike,
    kind: CorruptKind = "truncated",
    *,
    num_frames: int = 16,
    size: int = 32,
    seed: int = 0,
) -> str:
    """Write a broken video file and return its path.

    ``zero_bytes``: an empty file. ``truncated``: an MP4 cut in half, losing its index (the container
    does not open). ``truncated_data``: an MP4 with its index first (faststart) cut to 60 % of its bytes,
    so it opens and announces ``num_frames`` frames but the last ones cannot be decoded. ``garbage``:
    random bytes.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rng = np.random.default_rng(seed)
    if kind == "zero_bytes":
        open(path, "wb").close()
    elif kind == "garbage":
        with open(path, "wb") as f:
            f.write(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    elif kind in ("truncated", "truncated_data"):
        frames = rng.integers(0, 256, size=(num_frames, size, size, 3), dtype=np.uint8)  # incompressible
        write_video(path, frames, gop_size=1, faststart=kind == "truncated_data")
        keep = 0.5 if kind == "truncated" else 0.6
        with open(path, "r+b") as f:
            f.truncate(int(os.path.getsize(path) * keep))
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CorruptKind.__args__}")
    return path


def numbered_frames(num_frames: int, size: int = 32, step: int = 6) -> np.ndarray:
    """Frames whose grey level encodes their index (``t * step``), for checking frame-accurate decoding."""
    levels = np.arange(num_frames, dtype=np.int64) * step
    if levels[-1] > 255:
        raise ValueError(f"{num_frames} frames with step {step} exceed 255 grey levels")
    return np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3)).astype(np.uint8)


def frame_numbers(frames: Sequence[np.ndarray] | np.ndarray, step: int = 6) -> np.ndarray:
    """Inverse of ``numbered_frames`` on decoded (lossy) frames: the nearest index of each frame."""
    return np.round(np.asarray(frames, float).mean(axis=(1, 2, 3)) / step).astype(np.int64)
