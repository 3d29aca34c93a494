"""The loading core shared by every video dataset (``PolicyDataset``, ``collate_samples``) and
``VideoClipDataset``: annotation list -> sampled, decoded, augmented clips; ``collate_clips`` for batches.

Views. Training returns ``repeated_aug`` independently sampled and augmented copies of a video. Testing
returns ``num_clips * num_crops`` views ordered clip-major: view ``v`` is temporal clip ``v // num_crops``
and spatial crop ``v % num_crops``.

Randomness. Every draw comes from a generator seeded with ``(seed, epoch, index, attempt)``, so a sample
depends neither on DataLoader worker scheduling nor on what was loaded before: a resumed run reproduces
its clips after ``set_epoch(epoch)``. With ``persistent_workers=True`` the workers keep the epoch they
started with, so use non-persistent workers (the default) when calling ``set_epoch``.

Bad videos (missing, empty, undecodable, too short) are never replaced by zeros. ``bad_sample_policy``:
``"fail"`` raises ``VideoReadError``; ``"skip"`` returns a ``BadSample`` that the collate leaves out of the
batch and reports; ``"resample"`` loads other random entries (at most ``max_resample``) and reports the
bad ones under ``"bad"`` in the returned sample (its ``"index"`` is then the entry actually loaded).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .lists import ListKind, VideoRecord, read_annotation_list
from .sampling import Sampling, sample_indices
from .transforms import AugmentConfig, Size, eval_views, train_clip
from .video import ReadErrorKind, VideoReadError, check_decode_short_side, read_frame_folder, video_frame_source

BadSamplePolicy = Literal["skip", "resample", "fail"]


@dataclass(frozen=True)
class BadSample:
    index: int
    path: str
    reason: str
    kind: ReadErrorKind = "undecodable"


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The random stream of one sample: a function of (seed, epoch, index, attempt) alone, so augmentation
    does not depend on DataLoader workers and a resumed run draws exactly what an uninterrupted one did."""
    return np.random.default_rng([seed, epoch, index, attempt])


class PolicyDataset(Dataset):
    """The loading core of every video dataset here: a per-sample random stream and the bad-sample policy.

    A subclass implements ``__len__`` and ``load(index, rng)`` (one sample, drawing its randomness from
    ``rng``; raises ``VideoReadError`` for a bad video). ``dataset[index]`` is ``load(index, rng(index))``
    with a bad video handled by ``bad_sample_policy``: ``"fail"`` re-raises; ``"skip"`` returns a
    ``BadSample``; ``"resample"`` loads other random entries (at most ``max_resample``) and returns the
    first good one with the bad ones under ``"bad"``, or a ``BadSample`` naming them all. Nothing is ever
    zero-filled.
    """

    policies: tuple[BadSamplePolicy, ...] = ("skip", "resample", "fail")

    def __init__(self, *, seed: int, bad_sample_policy: BadSamplePolicy, max_resample: int = 10) -> None:
        if bad_sample_policy not in self.policies:
            raise ValueError(f"bad_sample_policy must be one of {self.policies}, got {bad_sample_policy!r}")
        if max_resample < 1:
            raise ValueError(f"max_resample must be positive, got {max_resample}")
        self.seed = seed
        self.set_epoch(0)
        self.bad_sample_policy = bad_sample_policy
        self.max_resample = max_resample

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, index, attempt)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        try:
            return self.load(index, self.rng(index, 0))
        except VideoReadError as e:
            if self.bad_sample_policy == "fail":
                raise
            bad = [BadSample(index, e.path, e.reason, e.kind)]
        if self.bad_sample_policy == "skip":
            return bad[0]
        for attempt in range(1, self.max_resample + 1):
            attempt_rng = self.rng(index, attempt)
            other = int(attempt_rng.integers(len(self)))
            try:
                return {**self.load(other, attempt_rng), "bad": bad}
            except VideoReadError as e:
                bad.append(BadSample(other, e.path, e.reason, e.kind))
        tried = ", ".join(b.path for b in bad[1:])
        reason = f"{bad[0].reason}; the {self.max_resample} entries resampled instead failed too: {tried}"
        return BadSample(index, bad[0].path, reason, bad[0].kind)


class VideoClipDataset(PolicyDataset):
    """Clips of the videos (files or frame folders) of an mmaction2-style annotation list.

    ``__getitem__(i)`` returns ``{"video": float32 (R, 3, T, H, W), "label": int, "view_labels": int64 (R,),
    "index": int, "view_start": int, "path": str}`` (plus ``"bad": list[BadSample]`` under the resample
    policy), or a ``BadSample`` under the skip policy. ``"label"`` is the annotated label; ``"view_labels"``
    are the per-view training targets, which differ from it when a flip swaps a direction-sensitive label.
    With ``num_classes``, a label outside ``[0, num_classes)`` is an error naming the list's file and line.
    ``decode_short_side``: video files are decoded already resized so that their short side is this (frame
    folders are read at full size).

    At test time ``view_chunk`` splits each video's ``num_clips x num_crops`` views into items of at most
    ``view_chunk`` views (``"index"`` the video's entry, ``"view_start"`` its first view): only the frames
    of those views are decoded, so memory is bounded by ``view_chunk`` however many views are asked for.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        data_root: str | os.PathLike | None,
        *,
        num_frames: int,
        train: bool,
        image_size: int = 224,
        sampling: Sampling = "segment",
        frame_interval: int = 1,
        num_clips: int = 1,
        num_crops: int = 1,
        test_resize: Size | None = None,
        test_position: float = 0.5,
        augment: AugmentConfig | None = None,
        repeated_aug: int = 1,
        bad_sample_policy: BadSamplePolicy = "skip",
        frames_template: str = "img_{:05d}.jpg",
        decode_short_side: int | None = None,
        seed: int = 0,
        min_frames: int = 1,
        max_resample: int = 10,
        list_kind: ListKind = "auto",
        num_classes: int | None = None,
        view_chunk: int | None = None,
    ):
        super().__init__(seed=seed, bad_sample_policy=bad_sample_policy, max_resample=max_resample)
        if sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        if min(num_frames, repeated_aug, num_clips, num_crops, min_frames, view_chunk or 1) < 1:
            names = "num_frames, repeated_aug, num_clips, num_crops, min_frames, view_chunk"
            raise ValueError(f"{names} must all be positive")
        self.list_file = os.fspath(list_file)
        self.data_root = os.fspath(data_root) if data_root else ""
        self.records: list[VideoRecord] = read_annotation_list(self.list_file, list_kind, num_classes)
        self.num_frames = num_frames
        self.train = train
        self.image_size = image_size
        self.sampling = sampling
        self.frame_interval = frame_interval
        self.num_clips = num_clips
        self.num_crops = num_crops
        self.test_resize = test_resize
        self.test_position = test_position
        self.augment = augment or AugmentConfig()
        self.repeated_aug = repeated_aug
        self.frames_template = frames_template
        self.decode_short_side = check_decode_short_side(decode_short_side, image_size)
        self.min_frames = min_frames
        self.view_chunk = None if train or view_chunk is None else min(view_chunk, num_clips * num_crops)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def chunks_per_video(self) -> int:
        """Items per video: 1, or (test, ``view_chunk``) its views' chunks."""
        return 1 if self.view_chunk is None else -(-self.num_clips * self.num_crops // self.view_chunk)

    def __len__(self) -> int:
        return len(self.records) * self.chunks_per_video

    def path(self, index: int) -> str:
        return os.path.join(self.data_root, self.records[index].path)

    def _source(self, record: VideoRecord, path: str) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
        """Frame count of a video and a function reading its frames by index."""
        if record.num_frames is not None:
            if not os.path.isdir(path):
                raise VideoReadError(path, "missing frame folder", "missing")
            n, read = record.num_frames, partial(read_frame_folder, path, template=self.frames_template)
        else:
            n, read = video_frame_source(path, short_side=self.decode_short_side)
        if n == 0:
            raise VideoReadError(path, "empty: 0 frames", "empty")
        if n < self.min_frames:
            reason = f"too short: {n} frames, at least {self.min_frames} needed"
            raise VideoReadError(path, reason, "too_short")
        return n, read

    def clip_indices(self, num_video_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Frame indices of every clip: ``repeated_aug`` random ones in training, ``num_clips`` at test."""
        args = (self.sampling, num_video_frames, self.num_frames)
        kw = dict(train=self.train, frame_interval=self.frame_interval)
        if self.train:
            return [sample_indices(*args, rng=rng, **kw) for _ in range(self.repeated_aug)]
        k_of = self.num_clips
        return [sample_indices(*args, clip_index=k, num_clips=k_of, test_position=self.test_position, **kw)
                for k in range(k_of)]

    def load(self, item: int, rng: np.random.Generator) -> dict[str, Any]:
        """Item ``item`` (an entry, or one view chunk of it), drawing its randomness from ``rng``; raises
        ``VideoReadError``."""
        index, chunk = divmod(item, self.chunks_per_video)
        record, path = self.records[index], self.path(index)
        n, read = self._source(record, path)
        clips = self.clip_indices(n, rng)
        first_view, first_clip = 0, 0
        if self.view_chunk is not None:  # views [first_view, stop) come from clips [first_clip, last_clip]
            first_view = chunk * self.view_chunk
            stop = min(first_view + self.view_chunk, self.num_clips * self.num_crops)
            first_clip, last_clip = first_view // self.num_crops, (stop - 1) // self.num_crops
            clips = clips[first_clip : last_clip + 1]
        frames = read(np.concatenate(clips))  # one decoding pass for all clips
        frames = frames.reshape(len(clips), self.num_frames, *frames.shape[1:])  # (clips, T, H, W, 3)
        if self.train:
            pairs = [train_clip(f, record.label, self.augment, self.image_size, rng) for f in frames]
            views, view_labels = zip(*pairs, strict=True)
        else:
            crop = dict(num_crops=self.num_crops, resize_to=self.test_resize, mean=self.augment.mean,
                        std=self.augment.std)
            views = [v for f in frames for v in eval_views(f, self.image_size, **crop)]
            if self.view_chunk is not None:
                offset = first_view - first_clip * self.num_crops
                views = views[offset : offset + self.view_chunk]
            view_labels = [record.label] * len(views)
        return {
            "video": torch.stack(views),  # (R, 3, T, H, W)
            "label": record.label,
            "view_labels": torch.tensor(view_labels, dtype=torch.long),  # (R,)
            "index": index,
            "view_start": first_view,
            "path": path,
        }


def collate_samples(batch: list[dict[str, Any] | BadSample], empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stack the good samples of any ``PolicyDataset`` and report the bad ones.

    Tensors are stacked (``"video"`` ``(B, ...)``), ints become int64 ``(B,)``, other values lists; ``"bad"``
    lists every ``BadSample`` (the skipped ones and those a resampled sample carries). With no good sample,
    ``"video"`` is None, ``"index"`` and ``"path"`` are empty and the other fields are those of ``empty``.
    """
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)] + [x for b in good for x in b.get("bad", [])]
    if not good:
        return {"video": None, "index": torch.empty(0, dtype=torch.long), "path": [], **(empty or {}), "bad": bad}
    out: dict[str, Any] = {}
    for key, value in good[0].items():
        if key == "bad":
            continue
        items = [b[key] for b in good]
        if isinstance(value, torch.Tensor):
            out[key] = torch.stack(items)
        elif isinstance(value, int):
            out[key] = torch.tensor(items, dtype=torch.long)
        else:
            out[key] = items
    out["bad"] = bad
    return out


def collate_clips(batch: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
    """``collate_samples`` for ``VideoClipDataset``: ``{"video": (B, R, 3, T, H, W) or None when no sample is
    good, "label": (B,), "view_labels": (B, R), "index": (B,), "view_start": (B,), "path": list[str], "bad":
    list[BadSample]}``."""
    empty = torch.empty(0, dtype=torch.long)
    return collate_samples(batch, {"label": empty, "view_labels": empty.view(0, 0), "view_start": empty})
