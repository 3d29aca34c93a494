"""Small synthetic video data written as real files: the motion-direction task of ``side4video demo``.

The motion task has 4 classes (a bright square moving left, right, up or down over a noisy textured
background). It needs temporal order: along the motion axis the square visits the same positions in both
directions, and the other coordinate is drawn from that same set of positions, so the square's position in
any single frame has the same distribution in all 4 classes, and left/right (up/down) clips have the same
frame average in expectation. Only the order of the frames tells the classes apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
) -> SyntheticDataset:
    """Write the 4-class motion-direction task under ``root``: MP4 videos, train/val lists
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
            name = f"videos/{direction}_{i:04d}.mp4"
            write_video(os.path.join(root, name), clip)
            lines["val" if i < n_val else "train"].append(f"{name} {label}")
    paths = {split: os.path.join(root, f"{split}_list.txt") for split in lines}
    for split, entries in lines.items():
        with open(paths[split], "w", encoding="utf-8") as f:
            f.write("\n".join(entries) + "\n")
    label_names = os.path.join(root, "label_names.txt")
    with open(label_names, "w", encoding="utf-8") as f:
        f.write("".join(f"{i} {name}\n" for i, name in enumerate(MOTION_CLASSES)))
    return SyntheticDataset(root, paths["train"], paths["val"], label_names, MOTION_CLASSES, num_frames)
