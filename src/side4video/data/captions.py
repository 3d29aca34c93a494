"""Text-video retrieval data: annotation readers (MSR-VTT 1k-A, MSVD, VATEX, a generic TSV) and datasets.

Every reader returns a ``CaptionedSplit``: the split's videos (paths relative to the video root), its
captions, and ``caption_video[i]``, the video of caption ``i``. A video may have several captions.

Training (``CaptionDataset(train=True)``) has one item per caption: its video's ``num_frames`` frames
(TSN segments, a random frame per segment), resized on the short side and centre-cropped (optionally
flipped), CLIP-normalised, with the caption's token ids and mask. The retrieval loss gathers the batch of
every rank and needs the same batch size everywhere: training loaders use ``drop_last=True``, and with
several ranks ``bad_sample_policy="resample"`` (a bad video is replaced by another caption, not dropped).

Evaluation encodes every video once (``CaptionDataset.eval_videos``: segment centres, one item per unique
video) and every caption once (``ids``, ``mask``), computes the similarity ``(num_texts, num_videos)`` and
scores it with ``metrics.retrieval_metrics(sim, text_to_video)``; ``eval_targets`` gives the rows and
targets for the videos actually encoded (bad ones are reported and left out, never zero-filled).

Randomness comes from a generator seeded with ``(seed, epoch, index, attempt)``, as in ``dataset.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..backbones.tokenizer import ClipTokenizer
from .dataset import BadSample, BadSamplePolicy, load_with_policy, sample_rng
from .sampling import segment_indices
from .transforms import CLIP_MEAN, CLIP_STD, eval_views
from .video import video_frame_source

# Tried, in this order, when a listed video is not found with its own extension.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
Split = Literal["train", "val", "test"]


class CaptionFormatError(ValueError):
    """An annotation file that cannot be read, or a line / key in it that is malformed or missing."""


@dataclass(frozen=True)
class CaptionedSplit:
    videos: list[str]  # paths relative to the video root, unique
    captions: list[str]
    caption_video: list[int]  # caption i describes videos[caption_video[i]]

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_video):
            n, m = len(self.captions), len(self.caption_video)
            raise ValueError(f"{n} captions but {m} caption_video entries")
        if len(set(self.videos)) != len(self.videos):
            raise ValueError("videos must be unique")
        if any(not 0 <= v < len(self.videos) for v in self.caption_video):
            raise ValueError(f"caption_video entries must lie in [0, {len(self.videos)})")

    @property
    def text_to_video(self) -> torch.Tensor:
        return torch.tensor(self.caption_video, dtype=torch.long)  # (num_captions,)

    def captions_of(self, video: int) -> list[str]:
        return [c for c, v in zip(self.captions, self.caption_video, strict=True) if v == video]


def group_captions(pairs: Iterable[tuple[str, str]]) -> CaptionedSplit:
    """A split from ``(video, caption)`` pairs; videos in order of first appearance."""
    index: dict[str, int] = {}
    captions, caption_video = [], []
    for video, caption in pairs:
        captions.append(caption)
        caption_video.append(index.setdefault(video, len(index)))
    return CaptionedSplit(list(index), captions, caption_video)


def _listed_split(
    ids: Sequence[str], captions: dict[str, list[str]], ext: str, source: str
) -> CaptionedSplit:
    """Every listed video id with all its captions; an id without captions is an error naming ``source``."""
    missing = [i for i in ids if not captions.get(i)]
    if missing:
        n = len(missing)
        raise CaptionFormatError(f"{source}: no captions for {n} listed video(s), e.g. {missing[:3]}")
    return group_captions((i + ext, c) for i in ids for c in captions[i])


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionFormatError(f"{path}: cannot read: {e}") from e


def _read_json(path: str) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise CaptionFormatError(f"{path}: invalid JSON: {e}") from e


def _read_csv(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise CaptionFormatError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
    return list(reader)


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Video ids, one per line (blank lines ignored)."""
    path = os.fspath(path)
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _caption_text(caption: Any, where: str) -> str:
    """A caption stored as a string or as a list of tokens."""
    if isinstance(caption, str):
        return caption.strip()
    if isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
        return " ".join(caption)
    raise CaptionFormatError(f"{where}: a caption must be a string or a list of tokens, got {caption!r}")


def read_msrvtt(
    anno_dir: str | os.PathLike,
    split: Literal["train", "test"],
    *,
    train_csv: str = "MSRVTT_train.9k.csv",
    test_csv: str = "MSRVTT_JSFUSION_test.csv",
    data_json: str = "MSRVTT_data.json",
    ext: str = ".mp4",
) -> CaptionedSplit:
    """MSR-VTT 1k-A. Train: the videos of ``train_csv`` (column ``video_id``) with all their captions from
    ``data_json`` (``sentences``: ``{video_id, caption}``), one sample per caption. Test: the
    ``test_csv`` pairs (columns ``video_id``, ``sentence``), one caption per video."""
    anno_dir = os.fspath(anno_dir)
    if split == "test":
        path = os.path.join(anno_dir, test_csv)
        rows = _read_csv(path, ("video_id", "sentence"))
        return group_captions((r["video_id"] + ext, r["sentence"].strip()) for r in rows)
    if split != "train":
        raise ValueError(f"MSR-VTT 1k-A has splits 'train' and 'test', got {split!r}")
    csv_path, json_path = os.path.join(anno_dir, train_csv), os.path.join(anno_dir, data_json)
    ids = [r["video_id"] for r in _read_csv(csv_path, ("video_id",))]
    data = _read_json(json_path)
    if not isinstance(data, dict) or "sentences" not in data:
        raise CaptionFormatError(f"{json_path}: missing key 'sentences'")
    wanted, captions = set(ids), {}
    for n, s in enumerate(data["sentences"]):
        if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
            raise CaptionFormatError(f"{json_path}: sentences[{n}] lacks key 'video_id' or 'caption'")
        if s["video_id"] in wanted:
            caption = _caption_text(s["caption"], f"{json_path}: sentences[{n}]")
            captions.setdefault(s["video_id"], []).append(caption)
    return _listed_split(ids, captions, ext, json_path)


def read_msvd(
    anno_dir: str | os.PathLike,
    split: Split,
    *,
    captions_file: str = "raw-captions.pkl",
    ext: str = ".avi",
) -> CaptionedSplit:
    """MSVD: ids of ``{split}_list.txt`` with every caption of the pickle ``captions_file`` (a dict
    video id -> list of captions, each a string or a list of tokens). The pickle is trusted input."""
    anno_dir = os.fspath(anno_dir)
    ids = read_id_list(os.path.join(anno_dir, f"{split}_list.txt"))
    path = os.path.join(anno_dir, captions_file)
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise CaptionFormatError(f"{path}: cannot read the captions pickle: {e}") from e
    if not isinstance(raw, dict):
        raise CaptionFormatError(f"{path}: expected a dict video id -> captions, got {type(raw).__name__}")
    listed = set(ids)
    captions = {k: [_caption_text(c, f"{path}: [{k!r}]") for c in v] for k, v in raw.items() if k in listed}
    return _listed_split(ids, captions, ext, path)


def _vatex_captions(data: Any, path: str) -> dict[str, list[str]]:
    """``{id: [captions]}`` or the official ``[{"videoID", "enCap": [...]}, ...]`` -> ``{id: [captions]}``."""
    if isinstance(data, dict):
        return {k: [_caption_text(c, f"{path}: [{k!r}]") for c in v] for k, v in data.items()}
    if not isinstance(data, list):
        raise CaptionFormatError(f"{path}: expected a dict or a list of entries, got {type(data).__name__}")
    captions: dict[str, list[str]] = {}
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or "videoID" not in entry or "enCap" not in entry:
            raise CaptionFormatError(f"{path}: entry [{n}] lacks key 'videoID' or 'enCap'")
        vid = entry["videoID"]
        where = f"{path}: [{n}]['enCap']"
        captions.setdefault(vid, []).extend(_caption_text(c, where) for c in entry["enCap"])
    return captions


def read_vatex(
    anno_dir: str | os.PathLike,
    split: Split,
    *,
    captions_file: str = "vatex_data.json",
    ext: str = ".mp4",
) -> CaptionedSplit:
    """VATEX: ids of ``{split}_list.txt`` with every English caption of ``captions_file`` (a dict video id
    -> captions, or the official list of ``{"videoID", "enCap": [...]}``)."""
    anno_dir = os.fspath(anno_dir)
    ids = read_id_list(os.path.join(anno_dir, f"{split}_list.txt"))
    path = os.path.join(anno_dir, captions_file)
    return _listed_split(ids, _vatex_captions(_read_json(path), path), ext, path)


def read_caption_tsv(path: str | os.PathLike) -> CaptionedSplit:
    """Generic ``video<TAB>caption`` lines (a video may have several lines; blank lines and ``#``
    comments are ignored). A malformed line raises ``CaptionFormatError`` naming file and line."""
    path = os.fspath(path)
    pairs = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        video, sep, caption = line.partition("\t")
        if not sep or not video.strip() or not caption.strip():
            raise CaptionFormatError(f"{path}:{n}: expected 'video<TAB>caption', got {line!r}")
        pairs.append((video.strip(), caption.strip()))
    if not pairs:
        raise CaptionFormatError(f"{path}: no captions")
    return group_captions(pairs)


DATASETS = ("msrvtt", "msvd", "vatex", "tsv")


def read_captions(
    dataset: str, path: str | os.PathLike, split: Split = "train", **kwargs: Any
) -> CaptionedSplit:
    """Dispatch on ``dataset``: ``path`` is the annotation folder (``"tsv"``: the file itself, ``split``
    unused); ``kwargs`` go to the reader (file names, video extension)."""
    if dataset == "msrvtt":
        return read_msrvtt(path, split, **kwargs)
    if dataset == "msvd":
        return read_msvd(path, split, **kwargs)
    if dataset == "vatex":
        return read_vatex(path, split, **kwargs)
    if dataset == "tsv":
        return read_caption_tsv(path, **kwargs)
    raise KeyError(f"unknown retrieval dataset {dataset!r}; known: {DATASETS}")


def resolve_video(path: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> str:
    """``path`` if it exists, else the first existing file with its stem and one of ``extensions``
    (else ``path``, which the reader then reports as missing)."""
    if os.path.isfile(path):
        return path
    stem = os.path.splitext(path)[0]
    return next((stem + e for e in extensions if os.path.isfile(stem + e)), path)


class VideoOnlyDataset(Dataset):
    """One clip per video: ``{"video": float32 (3, T, S, S), "frame_indices": int64 (T,), "video_index": int,
    "path": str}``, or a ``BadSample`` (``bad_sample_policy="skip"``) when the video cannot be read.

    Frames: ``num_frames`` TSN segments, a random frame of each in training, the centres otherwise. The
    short side is resized to ``short_side`` (default ``image_size``) and the centre crop kept; training
    flips it horizontally with probability ``flip`` (default 0: a caption may say "left" or "right").
    """

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
        bad_sample_policy: Literal["skip", "fail"] = "skip",
        seed: int = 0,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
    ) -> None:
        if bad_sample_policy not in ("skip", "fail"):
            raise ValueError(f"bad_sample_policy must be 'skip' or 'fail', got {bad_sample_policy!r}")
        if num_frames < 1 or not 0.0 <= flip <= 1.0:
            raise ValueError(f"need num_frames >= 1 and 0 <= flip <= 1, got {num_frames}, {flip}")
        self.videos = list(videos)
        self.video_root = os.fspath(video_root) if video_root else ""
        self.num_frames = num_frames
        self.image_size = image_size
        self.train = train
        self.flip = flip
        self.short_side = short_side
        self.bad_sample_policy = bad_sample_policy
        self.seed = seed
        self.extensions = tuple(extensions)
        self.mean, self.std = mean, std
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, index, attempt)

    def path(self, index: int) -> str:
        return resolve_video(os.path.join(self.video_root, self.videos[index]), self.extensions)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """The clip of video ``index``, drawing its randomness from ``rng``; raises ``VideoReadError``."""
        path = self.path(index)
        n, read = video_frame_source(path)
        indices = segment_indices(n, self.num_frames, train=self.train, rng=rng)  # (T,)
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

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        return load_with_policy(self.load, index, len(self), self.rng, self.bad_sample_policy)


class CaptionDataset(Dataset):
    """One item per caption of a ``CaptionedSplit``: its video's clip (see ``VideoOnlyDataset``) with the
    caption's ``"ids"`` and ``"mask"`` (int64 ``(text_length,)``), ``"index"`` (the caption) and
    ``"video_index"``. Captions are tokenised once, at construction.

    ``bad_sample_policy``: ``"skip"`` returns a ``BadSample`` (index = the caption) that ``collate_captions``
    drops and reports; ``"resample"`` loads other random captions instead (at most ``max_resample``) and
    reports the bad ones under ``"bad"`` (keeps the batch size, as DDP training needs); ``"fail"`` raises.
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
        bad_sample_policy: BadSamplePolicy = "skip",
        max_resample: int = 10,
        seed: int = 0,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
    ) -> None:
        if bad_sample_policy not in ("skip", "resample", "fail"):
            expected = "'skip', 'resample' or 'fail'"
            raise ValueError(f"bad_sample_policy must be {expected}, got {bad_sample_policy!r}")
        self.split = split
        self.bad_sample_policy = bad_sample_policy
        self.max_resample = max_resample
        self.ids, self.mask = tokenizer.tokenize(split.captions, context_length=text_length)  # (N, L) each
        policy = "fail" if bad_sample_policy == "fail" else "skip"  # the videos' own policy
        clip = dict(num_frames=num_frames, image_size=image_size, short_side=short_side, seed=seed,
                    extensions=extensions, mean=mean, std=std, bad_sample_policy=policy)
        self.clips = VideoOnlyDataset(split.videos, video_root, train=train, flip=flip, **clip)
        self.eval_videos = VideoOnlyDataset(split.videos, video_root, **clip)

    @property
    def train(self) -> bool:
        return self.clips.train

    @property
    def caption_video(self) -> torch.Tensor:
        return self.split.text_to_video  # (N,)

    def __len__(self) -> int:
        return len(self.split.captions)

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        video = self.split.caption_video[index]
        text = {"ids": self.ids[index], "mask": self.mask[index], "index": index}
        return {**self.clips.load(video, rng), **text}

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        # seeded by the caption, so the captions of one video see different frames
        return load_with_policy(self.load, index, len(self), self.clips.rng, self.bad_sample_policy,
                                self.max_resample)

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
    """Stack the good items of a ``CaptionDataset`` or ``VideoOnlyDataset`` and report the bad ones.

    Tensors are stacked (``"video"`` ``(B, 3, T, H, W)``, ``"ids"`` / ``"mask"`` ``(B, L)``, ...), ints
    become int64 ``(B,)``, strings lists; ``"bad"`` lists every ``BadSample``. With no good item, ``"video"``
    is None and the other fields are empty.
    """
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)] + [x for b in good for x in b.get("bad", [])]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return {"video": None, "index": empty, "video_index": empty, "path": [], "bad": bad}
    out: dict[str, Any] = {"bad": bad}
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
    return out
