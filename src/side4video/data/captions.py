"""Stable import path of the retrieval data: the annotation readers live in ``caption_files.py``, the
datasets in ``caption_dataset.py``."""

from .caption_dataset import VIDEO_EXTENSIONS, CaptionDataset, VideoOnlyDataset, collate_captions, resolve_video
from .caption_files import (
    CaptionedSplit,
    CaptionFormatError,
    group_captions,
    read_caption_tsv,
    read_captions,
    read_id_list,
    read_msrvtt,
    read_msvd,
    read_vatex,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "CaptionDataset",
    "CaptionFormatError",
    "CaptionedSplit",
    "VideoOnlyDataset",
    "collate_captions",
    "group_captions",
    "read_caption_tsv",
    "read_captions",
    "read_id_list",
    "read_msrvtt",
    "read_msvd",
    "read_vatex",
    "resolve_video",
]
