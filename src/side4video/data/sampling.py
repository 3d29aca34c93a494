"""Temporal sampling: which frames of an ``n``-frame video make a ``T``-frame clip.

Pure functions of the video length, returning sorted 0-based frame indices (int64, shape ``(T,)``).
Training draws from ``rng``; testing is deterministic and takes the clip number ``k`` of ``K``.
A video with fewer than ``T`` frames repeats frames, keeping temporal order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Sampling = Literal["segment", "dense"]


def _check(num_frames: int, clip_len: int, clip_index: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video of {num_frames} frames")
    if clip_len < 1 or not 0 <= clip_index < num_clips:
        raise ValueError(f"bad clip: clip_len={clip_len}, clip {clip_index} of {num_clips}")


def segment_indices(
    num_frames: int,
    clip_len: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
    test_position: float = 0.5,
) -> np.ndarray:
    """TSN sampling: split the video into ``clip_len`` equal segments and take one frame from each.

    Train: a uniformly random frame of every segment. Test: clip ``k`` of ``K`` takes the point
    ``(k + test_position) / K`` of the way through each segment (clip ``k`` is shifted by ``k / K`` of a
    segment from clip 0). ``test_position`` 0.5: one clip takes the segment centres; 0: the segment
    starts (the Side4Video / CLIP4Clip retrieval test frames).
    """
    _check(num_frames, clip_len, clip_index, num_clips)
    seg = num_frames / clip_len
    starts = np.floor(np.arange(clip_len) * seg).astype(np.int64)  # (T,)
    if train:
        if rng is None:
            raise ValueError("training sampling needs an rng")
        ends = np.maximum(np.floor((np.arange(clip_len) + 1) * seg).astype(np.int64), starts + 1)
        return rng.integers(starts, ends)  # one frame in [start, end) per segment
    if not 0.0 <= test_position < 1.0:
        raise ValueError(f"test_position must lie in [0, 1), got {test_position}")
    offset = (clip_index + test_position) / num_clips
    return np.floor((np.arange(clip_len) + offset) * seg).astype(np.int64)


def dense_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int = 1,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Dense sampling: ``clip_len`` frames ``frame_interval`` apart from one start frame.

    Train: a uniformly random start. Test: ``K`` starts spread evenly, clip ``k`` starting at the
    ``(k + 0.5) / K`` point of the valid start range (one clip is centred). A video shorter than the span
    ``(clip_len - 1) * frame_interval + 1`` is sampled evenly over its whole length instead.
    """
    _check(num_frames, clip_len, clip_index, num_clips)
    if frame_interval < 1:
        raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
    span = (clip_len - 1) * frame_interval + 1
    if span > num_frames:
        return np.floor(np.arange(clip_len) * num_frames / clip_len).astype(np.int64)
    num_starts = num_frames - span + 1
    if train:
        if rng is None:
            raise ValueError("training sampling needs an rng")
        start = int(rng.integers(num_starts))
    else:
        start = int((clip_index + 0.5) * num_starts / num_clips)
    return start + np.arange(clip_len, dtype=np.int64) * frame_interval


def sample_indices(
    sampling: Sampling,
    num_frames: int,
    clip_len: int,
    *,
    train: bool,
    frame_interval: int = 1,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
    test_position: float = 0.5,
) -> np.ndarray:
    """Dispatch to ``segment_indices`` or ``dense_indices`` (``frame_interval`` is for dense only,
    ``test_position`` for segment only)."""
    kw = dict(train=train, rng=rng, clip_index=clip_index, num_clips=num_clips)
    if sampling == "segment":
        return segment_indices(num_frames, clip_len, test_position=test_position, **kw)
    if sampling == "dense":
        return dense_indices(num_frames, clip_len, frame_interval, **kw)
    raise ValueError(f"unknown sampling {sampling!r}; expected 'segment' or 'dense'")
