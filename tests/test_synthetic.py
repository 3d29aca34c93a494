"""Synthetic motion-direction videos: real MP4s whose class only the order of the frames reveals."""

import os

import numpy as np
import pytest

from fixtures import make_corrupt_video
from side4video.data import (
    MOTION_CLASSES,
    BadSample,
    VideoClipDataset,
    VideoReadError,
    collate_clips,
    count_frames,
    header_frame_count,
    make_motion_dataset,
    read_annotation_list,
    read_label_names,
    read_video_frames,
    write_video,
)
from side4video.data.synthetic import motion_clip

T, SIZE = 8, 32


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    data = make_motion_dataset(tmp_path_factory.mktemp("motion"), 5, num_frames=T, size=SIZE, seed=0)
    clips, labels = [], []
    for list_file in (data.train_list, data.val_list):
        for r in read_annotation_list(list_file):
            clips.append(read_video_frames(os.path.join(data.root, r.path), range(T)))
            labels.append(r.label)
    return data, np.stack(clips), np.array(labels)  # (N, T, H, W, 3)


def _square_tracks(clips):
    """Centre (x, y) of the bright square in every frame: (N, T, 2)."""
    bright = clips.min(-1) > 200  # the square is 235 on every channel, the background at most ~190
    assert bright.any(axis=(2, 3)).all(), "a frame lost its square"
    ys, xs = np.arange(SIZE)[:, None], np.arange(SIZE)[None, :]
    area = bright.sum(axis=(2, 3))
    return np.stack([(bright * xs).sum(axis=(2, 3)) / area, (bright * ys).sum(axis=(2, 3)) / area], -1)


def test_files_lists_and_labels(motion):
    data, clips, labels = motion
    assert read_label_names(data.label_names) == list(MOTION_CLASSES)
    train, val = read_annotation_list(data.train_list), read_annotation_list(data.val_list)
    assert len(train) == 4 * 4
    assert len(val) == 4
    assert sorted(r.label for r in val) == [0, 1, 2, 3]
    path = os.path.join(data.root, train[0].path)
    assert path.endswith(".mp4")
    assert count_frames(path) == T
    assert count_frames(path, decode=True) == T
    assert clips.shape == (20, T, SIZE, SIZE, 3)
    ds = VideoClipDataset(data.train_list, data.root, num_frames=4, train=True, image_size=24)
    batch = collate_clips([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 1, 3, 4, 24, 24)
    assert not batch["bad"]


def test_direction_is_only_in_the_frame_order(motion):
    _, clips, labels = motion
    tracks = _square_tracks(clips.astype(np.int64))  # (N, T, 2)
    # the order of the frames gives the class every time: motion along x or y, with its sign
    step = tracks[:, -1] - tracks[:, 0]  # (N, 2)
    horizontal = np.abs(step[:, 0]) > np.abs(step[:, 1])
    predicted = np.where(horizontal, np.where(step[:, 0] < 0, 0, 1), np.where(step[:, 1] < 0, 2, 3))
    np.testing.assert_array_equal(predicted, labels)
    # without the order, opposite directions visit exactly the same positions
    along = np.where((labels < 2)[:, None], tracks[..., 0], tracks[..., 1])  # (N, T)
    visited = np.sort(along, axis=1)
    np.testing.assert_allclose(visited, np.broadcast_to(visited[:1], visited.shape), atol=0.5)


def test_frame_average_cannot_tell_left_from_right(tmp_path):
    """Same background and row, opposite directions: the frame averages agree to a grey level or two,
    while the frame-ordered difference of the same clips is large."""
    mean_gap, order_gap = [], []
    for seed in range(4):
        decoded = []
        for direction in ("left", "right"):
            path = tmp_path / f"{direction}{seed}.mp4"
            write_video(path, motion_clip(direction, T, SIZE, np.random.default_rng(seed)))
            decoded.append(read_video_frames(str(path), range(T)).astype(float))
        left, right = decoded
        mean_gap.append(np.abs(left.mean(0) - right.mean(0)).mean())
        order_gap.append(np.abs((left[-1] - left[0]) - (right[-1] - right[0])).mean())
    assert max(mean_gap) < 2.5
    assert min(order_gap) > 10 * max(mean_gap)


@pytest.mark.parametrize(
    ("kind", "error"),
    [("zero_bytes", "empty"), ("truncated", "undecodable"), ("garbage", "undecodable")],
)
def test_corrupt_videos(tmp_path, kind, error):
    path = make_corrupt_video(tmp_path / f"{kind}.mp4", kind)
    with pytest.raises(VideoReadError) as e:
        read_video_frames(path, [0])
    assert e.value.kind == error


def test_truncated_data_opens_but_fails_to_decode(tmp_path):
    path = make_corrupt_video(tmp_path / "cut.mp4", "truncated_data", num_frames=16)
    assert header_frame_count(path) == 16  # the header survives
    with pytest.raises(VideoReadError, match="truncated") as e:
        read_video_frames(path, [0])  # the cut last packet marks the whole file as broken
    assert e.value.kind == "undecodable"
    list_file = tmp_path / "l.txt"
    list_file.write_text("cut.mp4 0\n")
    item = VideoClipDataset(str(list_file), tmp_path, num_frames=8, train=False, image_size=16)[0]
    assert isinstance(item, BadSample)
