"""Text-video retrieval annotation files: MSR-VTT 1k-A, MSVD, VATEX and a generic TSV.

Every reader returns a ``CaptionedSplit``: the split's videos (paths relative to the video root), its
captions, and ``caption_video[i]``, the video of caption ``i``. A video may have several captions. A file
that cannot be read, or a malformed line or key, raises ``CaptionFormatError`` naming the file (and line).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..safe_load import UnsafePickleError, load_plain_pickle

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
    video id -> list of captions, each a string or a list of tokens), read as plain data only: a pickle
    naming anything else (code) is refused."""
    anno_dir = os.fspath(anno_dir)
    ids = read_id_list(os.path.join(anno_dir, f"{split}_list.txt"))
    path = os.path.join(anno_dir, captions_file)
    try:
        raw = load_plain_pickle(path)
    except OSError as e:
        raise CaptionFormatError(f"{path}: cannot read the captions pickle: {e.strerror or e}") from None
    except UnsafePickleError as e:
        raise CaptionFormatError(str(e)) from None
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
