"""Video data: decoding, annotation lists, temporal sampling, clip augmentation, datasets, checks, and
captioned videos for text-video retrieval."""

from .caption_dataset import VIDEO_EXTENSIONS, CaptionDataset, VideoOnlyDataset, collate_captions
from .caption_files import (
    CaptionedSplit,
    CaptionFormatError,
    read_caption_tsv,
    read_captions,
    read_msrvtt,
    read_msvd,
    read_vatex,
)
from .check import DataReport, DataWarning, Problem, check_data, format_report
from .dataset import BadSample, PolicyDataset, VideoClipDataset, collate_clips, collate_samples
from .frame_index import FrameIndex, FrameIndexCache
from .lists import ListFormatError, VideoRecord, parse_annotation_list, read_annotation_list, read_label_names
from .randaugment import RandAugment
from .sampling import dense_indices, sample_indices, segment_indices
from .synthetic import (
    MOTION_CLASSES,
    SyntheticDataset,
    make_motion_dataset,
    write_video,
)
from .synthetic_captions import CaptionedSynthetic, make_captioned_dataset, write_caption_tokenizer
from .transforms import CLIP_MEAN, CLIP_STD, SS_FLIP_PAIRS, AugmentConfig, eval_views, train_clip
from .video import (
    VideoReadError,
    count_frames,
    header_frame_count,
    read_all_frames,
    read_frame_folder,
    read_video_frames,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MOTION_CLASSES",
    "SS_FLIP_PAIRS",
    "VIDEO_EXTENSIONS",
    "AugmentConfig",
    "BadSample",
    "CaptionDataset",
    "CaptionFormatError",
    "CaptionedSplit",
    "CaptionedSynthetic",
    "DataReport",
    "DataWarning",
    "FrameIndex",
    "FrameIndexCache",
    "ListFormatError",
    "PolicyDataset",
    "Problem",
    "RandAugment",
    "SyntheticDataset",
    "VideoClipDataset",
    "VideoOnlyDataset",
    "VideoReadError",
    "VideoRecord",
    "check_data",
    "collate_captions",
    "collate_clips",
    "collate_samples",
    "count_frames",
    "dense_indices",
    "eval_views",
    "format_report",
    "header_frame_count",
    "make_captioned_dataset",
    "make_motion_dataset",
    "parse_annotation_list",
    "read_all_frames",
    "read_annotation_list",
    "read_caption_tsv",
    "read_captions",
    "read_frame_folder",
    "read_label_names",
    "read_msrvtt",
    "read_msvd",
    "read_vatex",
    "read_video_frames",
    "sample_indices",
    "segment_indices",
    "train_clip",
    "write_caption_tokenizer",
    "write_video",
]
