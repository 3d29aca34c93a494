"""Video data: decoding, annotation lists, temporal sampling, clip augmentation, datasets, checks."""

from .check import DataReport, Problem, check_data, format_report
from .dataset import BadSample, VideoClipDataset, collate_clips
from .lists import ListFormatError, VideoRecord, parse_annotation_list, read_annotation_list, read_label_names
from .randaugment import RandAugment
from .sampling import dense_indices, sample_indices, segment_indices
from .synthetic import (
    MOTION_CLASSES,
    SyntheticDataset,
    make_corrupt_video,
    make_motion_dataset,
    write_frame_folder,
    write_video,
)
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
    "AugmentConfig",
    "BadSample",
    "DataReport",
    "ListFormatError",
    "Problem",
    "RandAugment",
    "SyntheticDataset",
    "VideoClipDataset",
    "VideoReadError",
    "VideoRecord",
    "check_data",
    "collate_clips",
    "count_frames",
    "dense_indices",
    "eval_views",
    "format_report",
    "header_frame_count",
    "make_corrupt_video",
    "make_motion_dataset",
    "parse_annotation_list",
    "read_all_frames",
    "read_annotation_list",
    "read_frame_folder",
    "read_label_names",
    "read_video_frames",
    "sample_indices",
    "segment_indices",
    "train_clip",
    "write_frame_folder",
    "write_video",
]
