"""Text-video retrieval datasets over a ``CaptionedSplit`` (see ``caption_files.py``).

Training (``CaptionDataset(train=True)``) has one item per caption: its video's ``num_frames`` frames
(TSN segments, a random frame per segment), resized on the short side and centre-cropped (optionally
flipped), CLIP-normalised, with the caption's token ids and mask. The retrieval loss gathers the batch of
every rank and needs the same batch size everywhere: training loaders use ``drop_last=True``, and with
several ranks ``bad_sample_policy="resample"`` (a bad video is replaced by another caption, not dropped).

Evaluation encodes every video once (``CaptionDataset.eval_videos``: segment centres, one item per unique
video) and every caption once (``ids``, ``mask``), computes the similarity ``(num_texts, num_videos)`` and
scores it with ``metrics.retrieval_metrics(sim, text_to_video)``; ``eval_targets`` gives the rows and
targets for the videos actually encoded (bad ones are reported and left out, never zero-filled).

Both datasets are ``PolicyDataset``s (``dataset.py``): the same per-sample random stream
``(seed, epoch, index, attempt)``, bad-sample policies and collate (``collate_captions``) as the clip dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backbones.tokenizer import ClipTokenizer
from .caption_files import CaptionedSplit
from .dataset import BadSample, BadSamplePolicy, PolicyDataset, collate_samples
from .sampling import segment_indices
from .transforms import CLIP_MEAN, CLIP_STD, eval_views
from .video import check_decode_short_side, video_frame_source

# Tried, in this order, when a listed video is not found with its own extension.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


def resolve_video(path: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> str:
    """``path`` if it exists, else the first existing file with its stem and one of ``extensions``
    (else ``path``, which the reader then reports as missing)."""
    if os.path.isfile(path):
        return path
    stem = os.path.splitext(path)[0]
    return next((stem + e for e in extensions if os.path.isfile(stem + e)), path)


class VideoOnlyDataset(PolicyDataset):
    """One clip per video: ``{"video": float32 (3, T, S, S), "frame_indices": int64 (T,), "video_index": int,
    "path": str}``, or a ``BadSample`` (``bad_sample_policy="skip"``) when the video cannot be read.

    Frames: ``num_frames`` TSN segments, a random frame of each in training, otherwise the point
    ``test_position`` of each (0.5: the centres; 0: the starts, as Side4Video's retrieval code). The
    short side is resized to ``short_side`` (default ``image_size``) and the centre crop kept; training
    flips it horizontally with probability ``flip`` (default 0: a caption may say "left" or "right").
    ``decode_short_side``: frames are decoded already resized so that their short side is this.
    """

    policies = ("skip", "fail")

    def __init__(
        self,
        videos: Sequence[str],
        video_root: str | os.PathLike | None,
        *,
        num_frames: int = 12,
        image_size: int = 224,
        train: bool = False,
        flip: float = 0.0,
        short_side: int | None = None,
        decode_short_side: int | None = None,
        test_position: float = 0.5,
        bad_sample_policy: BadSamplePolicy = "skip",
        seed: int = 0,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
    ) -> None:
        super().__init__(seed=seed, bad_sample_policy=bad_sample_policy)
        if num_frames < 1 or not 0.0 <= flip <= 1.0:
            raise ValueError(f"need num_frames >= 1 and 0 <= flip <= 1, got {num_frames}, {flip}")
        self.videos = list(videos)
        self.video_root = os.fspath(video_root) if video_root else ""
        self.num_frames = num_frames
        self.image_size = image_size
        self.train = train
        self.flip = flip
        self.short_side = short_side
        self.decode_short_side = check_decode_short_side(decode_short_side, image_size)
        self.test_position = test_position
        self.extensions = tuple(extensions)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.videos)

    def path(self, index: int) -> str:
        return resolve_video(os.path.join(self.video_root, self.videos[index]), self.extensions)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """The clip of video ``index``, drawing its randomness from ``rng``; raises ``VideoReadError``."""
        path = self.path(index)
        n, read = video_frame_source(path, short_side=self.decode_short_side)
        indices = segment_indices(n, self.num_frames, train=self.train, rng=rng, test_position=self.test_position)
        frames = read(indices)  # (T, H, W, 3) uint8
        norm = dict(mean=self.mean, std=self.std)
        (video,) = eval_views(frames, self.image_size, resize_to=self.short_side, **norm)  # (3, T, S, S)
        if self.train and rng.random() < self.flip:
            video = video.flip(-1)
        return {
            "video": video,  # (3, T, S, S)
            "frame_indices": torch.from_numpy(np.asarray(indices, dtype=np.int64)),  # (T,)
            "video_index": index,
            "path": path,
        }


class CaptionDataset(PolicyDataset):
    """One item per caption of a ``CaptionedSplit``: its video's clip (see ``VideoOnlyDataset``) with the
    caption's ``"ids"`` and ``"mask"`` (int64 ``(text_length,)``), ``"index"`` (the caption) and
    ``"video_index"``. Captions are tokenised once, at construction.

    ``bad_sample_policy``: ``"skip"`` returns a ``BadSample`` (index = the caption) that ``collate_captions``
    drops and reports; ``"resample"`` loads other random captions instead (at most ``max_resample``) and
    reports the bad ones under ``"bad"`` (keeps the batch size, as DDP training needs); ``"fail"`` raises.
    A sample is seeded by its caption, so the captions of one video see different frames.
    """

    def __init__(
        self,
        split: CaptionedSplit,
        video_root: str | os.PathLike | None,
        tokenizer: ClipTokenizer,
        *,
        num_frames: int = 12,
        image_size: int = 224,
        text_length: int = 32,
        train: bool,
        flip: float = 0.0,
        short_side: int | None = None,
        decode_short_side: int | None = None,
        test_position: float = 0.5,
        bad_sample_policy: BadSamplePolicy = "skip",
        max_resample: int = 10,
        seed: int = 0,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
    ) -> None:
        self.split = split
        self.ids, self.mask = tokenizer.tokenize(split.captions, context_length=text_length)  # (N, L) each
        policy = "fail" if bad_sample_policy == "fail" else "skip"  # the videos' own policy
        clip = dict(num_frames=num_frames, image_size=image_size, short_side=short_side, seed=seed,
                    decode_short_side=decode_short_side, test_position=test_position, extensions=extensions,
                    mean=mean, std=std, bad_sample_policy=policy)  # fmt: skip
        self.clips = VideoOnlyDataset(split.videos, video_root, train=train, flip=flip, **clip)
        self.eval_videos = VideoOnlyDataset(split.videos, video_root, **clip)
        super().__init__(seed=seed, bad_sample_policy=bad_sample_policy, max_resample=max_resample)

    @property
    def train(self) -> bool:
        return self.clips.train

    @property
    def epoch(self) -> int:
        return self.clips.epoch

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)  # the clips' epoch seeds the samples: one source of truth

    @property
    def caption_video(self) -> torch.Tensor:
        return self.split.text_to_video  # (N,)

    def __len__(self) -> int:
        return len(self.split.captions)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        video = self.split.caption_video[index]
        text = {"ids": self.ids[index], "mask": self.mask[index], "index": index}
        return {**self.clips.load(video, rng), **text}

    def eval_targets(self, video_indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """For the videos actually encoded, in the order of the similarity's columns: the captions to keep
        (bool ``(N,)``: those of these videos) and each kept caption's column ``(N_kept,)``, ready for
        ``retrieval_metrics(sim[keep], text_to_video)``."""
        video_indices = torch.as_tensor(video_indices, dtype=torch.long)
        if video_indices.unique().numel() != video_indices.numel():
            raise ValueError("video_indices has repeats (e.g. DistributedSampler padding): drop them first")
        column = torch.full((len(self.split.videos),), -1, dtype=torch.long)
        column[video_indices] = torch.arange(video_indices.numel())
        target = column[self.caption_video]  # (N,)
        keep = target >= 0
        return keep, target[keep]


def collate_captions(batch: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
    """``collate_samples`` for ``CaptionDataset`` and ``VideoOnlyDataset``: ``"video"`` ``(B, 3, T, H, W)``
    (None when no item is good), ``"ids"`` / ``"mask"`` ``(B, L)``, ints as int64 ``(B,)``, strings as lists,
    ``"bad"`` every ``BadSample``."""
    return collate_samples(batch, {"video_index": torch.empty(0, dtype=torch.long)})
