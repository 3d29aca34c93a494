"""Test-only video generators: broken files, frame folders and frames that carry their own index."""

import contextlib
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from side4video.data import write_video

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


def write_frame_folder(
    folder: str | os.PathLike, frames: np.ndarray, *, template: str = "img_{:05d}.jpg", start_index: int = 1
) -> None:
    """Save ``(T, H, W, 3)`` uint8 frames as images named ``template.format(t + start_index)``."""
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, template.format(t + start_index)), quality=95)


def numbered_frames(num_frames: int, size: int = 32, step: int = 6) -> np.ndarray:
    """Frames whose grey level encodes their index (``t * step``), for checking frame-accurate decoding."""
    levels = np.arange(num_frames, dtype=np.int64) * step
    if levels[-1] > 255:
        raise ValueError(f"{num_frames} frames with step {step} exceed 255 grey levels")
    return np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3)).astype(np.uint8)


def frame_numbers(frames: Sequence[np.ndarray] | np.ndarray, step: int = 6) -> np.ndarray:
    """Inverse of ``numbered_frames`` on decoded (lossy) frames: the nearest index of each frame."""
    return np.round(np.asarray(frames, float).mean(axis=(1, 2, 3)) / step).astype(np.int64)


class ToyClips(torch.utils.data.Dataset):
    """In-memory clips (items of ``VideoClipDataset``): the class is the sign of a brightness ramp over time.

    The noise is drawn from (seed, epoch, index), like the real dataset's augmentation.
    """

    def __init__(self, n: int, frames: int = 2, size: int = 32, views: int = 1, nan_at_epoch: int | None = None):
        self.n, self.frames, self.size, self.views = n, frames, size, views
        self.nan_at_epoch, self.epoch = nan_at_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.epoch + index)
        label = index % 2
        ramp = torch.linspace(-1, 1, self.frames) * (1 if label else -1)  # (T,)
        video = ramp.view(1, 1, -1, 1, 1) + 0.5 * torch.randn(self.views, 3, self.frames, self.size, self.size,
                                                              generator=g)  # (R, 3, T, H, W)
        if self.epoch == self.nan_at_epoch and index == 1:
            video[:] = float("nan")
        return {"video": video, "label": label, "view_labels": torch.full((self.views,), label), "index": index,
                "path": f"toy/{index}"}


@contextlib.contextmanager
def decoded_once():
    """Within this block each video is decoded once, not once per epoch: the clip and caption datasets read
    exactly the frames they would read from the file, from memory."""
    import side4video.data.caption_dataset as captions
    import side4video.data.dataset as clips
    from side4video.data.video import video_frame_source

    cache: dict = {}

    def cached(path: str, **kwargs):
        key = (path, tuple(sorted(kwargs.items())))
        if key not in cache:
            n, read = video_frame_source(path, **kwargs)
            cache[key] = read(np.arange(n))  # (N, H, W, 3)
        frames = cache[key]
        return len(frames), lambda indices: frames[np.asarray(indices)]

    clips.video_frame_source = captions.video_frame_source = cached
    try:
        yield
    finally:
        clips.video_frame_source = captions.video_frame_source = video_frame_source
