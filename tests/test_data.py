"""Video data pipeline: sampling, decoding, lists, clip augmentation, bad samples, data checks."""

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import DataLoader

from fixtures import frame_numbers, make_corrupt_video, numbered_frames, write_frame_folder
from side4video.data import (
    CLIP_MEAN,
    CLIP_STD,
    SS_FLIP_PAIRS,
    AugmentConfig,
    BadSample,
    ListFormatError,
    RandAugment,
    VideoClipDataset,
    VideoReadError,
    check_data,
    collate_clips,
    count_frames,
    dense_indices,
    eval_views,
    format_report,
    header_frame_count,
    read_all_frames,
    read_annotation_list,
    read_frame_folder,
    read_label_names,
    read_video_frames,
    segment_indices,
    train_clip,
    write_video,
)
from side4video.data import randaugment as ra
from side4video.data.transforms import random_resized_crop_box

# ---- sampling ----------------------------------------------------------------------------------------


def test_segment_test_centres_and_clip_shift():
    np.testing.assert_array_equal(segment_indices(80, 8, train=False), np.arange(8) * 10 + 5)
    clip0 = segment_indices(80, 8, train=False, clip_index=0, num_clips=2)
    clip1 = segment_indices(80, 8, train=False, clip_index=1, num_clips=2)
    np.testing.assert_array_equal(clip0, np.arange(8) * 10 + 2)
    np.testing.assert_array_equal(clip1 - clip0, np.full(8, 5))  # shifted by 1/2 of a segment
    clips = [segment_indices(120, 4, train=False, clip_index=k, num_clips=3) for k in range(3)]
    np.testing.assert_array_equal(np.stack(clips)[:, 0], [5, 15, 25])  # segment 30: shifts of 10 = 30/3


def test_segment_train_one_random_frame_per_segment():
    seen = np.zeros((8, 10), bool)
    for s in range(200):
        idx = segment_indices(80, 8, train=True, rng=np.random.default_rng(s))
        seg = idx // 10
        np.testing.assert_array_equal(seg, np.arange(8))  # exactly one frame in each segment
        seen[seg, idx % 10] = True
    assert seen.all()  # every frame of every segment is reachable
    a = segment_indices(80, 8, train=True, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, segment_indices(80, 8, train=True, rng=np.random.default_rng(3)))


def test_short_video_repeats_frames_in_order():
    np.testing.assert_array_equal(segment_indices(3, 8, train=False), [0, 0, 0, 1, 1, 2, 2, 2])
    for s in range(20):
        idx = segment_indices(3, 8, train=True, rng=np.random.default_rng(s))
        assert set(idx.tolist()) == {0, 1, 2}
        assert np.all(np.diff(idx) >= 0)
    np.testing.assert_array_equal(segment_indices(1, 4, train=False), [0, 0, 0, 0])
    # dense sampling shorter than its span (29 frames) spreads over the whole video
    np.testing.assert_array_equal(dense_indices(10, 8, 4, train=False), [0, 1, 2, 3, 5, 6, 7, 8])


def test_dense_sampling():
    np.testing.assert_array_equal(dense_indices(100, 8, 4, train=False), 36 + 4 * np.arange(8))
    starts = [dense_indices(100, 8, 4, train=False, clip_index=k, num_clips=3)[0] for k in range(3)]
    assert starts == [12, 36, 60]  # 72 valid starts split evenly
    for s in range(50):
        idx = dense_indices(100, 8, 4, train=True, rng=np.random.default_rng(s))
        np.testing.assert_array_equal(np.diff(idx), np.full(7, 4))
        assert idx[0] >= 0
        assert idx[-1] <= 99
    with pytest.raises(ValueError, match="rng"):
        dense_indices(100, 8, 4, train=True)


# ---- decoding ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """40-frame videos whose frame k has grey level 6k (keyframe every 8 frames)."""
    root = tmp_path_factory.mktemp("numbered")
    paths = {}
    for codec in ("libx264", "mpeg4"):
        paths[codec] = str(root / f"{codec}.mp4")
        write_video(paths[codec], numbered_frames(40), codec=codec, gop_size=8)
    return paths


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_frame_accurate_decode(numbered, codec):
    path = numbered[codec]
    assert count_frames(path) == 40
    assert count_frames(path, decode=True) == 40
    indices = [37, 3, 20, 3, 0, 39, 8, 7]
    frames = read_video_frames(path, indices)
    assert frames.shape == (8, 32, 32, 3)
    assert frames.dtype == np.uint8
    np.testing.assert_array_equal(frame_numbers(frames), indices)


@pytest.mark.parametrize(("suffix", "codec"), [(".mkv", "libx264"), (".ts", "libx264"), (".avi", "mpeg4"),
                                              (".h264", "libx264"), (".webm", "libvpx-vp9")])  # fmt: skip
def test_decode_other_containers(tmp_path, suffix, codec):
    """No frame count in the header (Matroska, WebM, MPEG-TS, raw H.264), imprecise seeks (MPEG-TS), no
    timestamps at all (raw H.264): frames are still exact."""
    path = str(tmp_path / f"v{suffix}")
    write_video(path, numbered_frames(30), codec=codec, gop_size=8)
    frames = read_video_frames(path, [25, 3, 14, 29, 3])
    np.testing.assert_array_equal(frame_numbers(frames), [25, 3, 14, 29, 3])
    np.testing.assert_array_equal(frame_numbers(read_all_frames(path)), np.arange(30))
    assert count_frames(path) == 30
    assert header_frame_count(path) in (None, 30)


def test_dataset_reads_videos_without_frame_count(tmp_path):
    write_video(tmp_path / "a.mkv", numbered_frames(16, size=32) + 10)
    assert header_frame_count(str(tmp_path / "a.mkv")) is None
    ds = _dataset(tmp_path, _write_list(tmp_path / "l.txt", [("a.mkv", 0)]), train=False)
    grey = ds[0]["video"][0, 0].mean(dim=(1, 2)) * CLIP_STD[0] + CLIP_MEAN[0]  # (T,)
    assert torch.round((grey * 255 - 10) / 6).long().tolist() == [2, 6, 10, 14]  # centres of 4 segments


def test_read_past_end_is_too_short(numbered):
    with pytest.raises(VideoReadError) as e:
        read_video_frames(numbered["libx264"], [10, 40])
    assert e.value.kind == "too_short"
    assert e.value.path == numbered["libx264"]


def test_frame_folder_reading(tmp_path):
    write_frame_folder(tmp_path / "a", numbered_frames(10))
    assert sorted(os.listdir(tmp_path / "a"))[0] == "img_00001.jpg"  # 1-based default template
    frames = read_frame_folder(str(tmp_path / "a"), [9, 0, 4, 4])
    np.testing.assert_array_equal(frame_numbers(frames), [9, 0, 4, 4])
    write_frame_folder(tmp_path / "b", numbered_frames(5), template="{:03d}.png", start_index=0)
    frames = read_frame_folder(str(tmp_path / "b"), [4, 1], template="{:03d}.png", start_index=0)
    np.testing.assert_array_equal(frame_numbers(frames), [4, 1])
    with pytest.raises(VideoReadError, match="img_00011.jpg") as e:
        read_frame_folder(str(tmp_path / "a"), [10])
    assert e.value.kind == "too_short"
    with pytest.raises(VideoReadError) as e:
        read_frame_folder(str(tmp_path / "nope"), [0])
    assert e.value.kind == "missing"


# ---- lists -------------------------------------------------------------------------------------------


def test_annotation_lists(tmp_path):
    videos = tmp_path / "videos.txt"
    videos.write_text("# comment\n\na/x.mp4 3\n  b/y.mp4   0  \n")
    records = read_annotation_list(str(videos))
    assert [(r.path, r.label, r.num_frames, r.line) for r in records] == [
        ("a/x.mp4", 3, None, 3),
        ("b/y.mp4", 0, None, 4),
    ]
    frames = tmp_path / "frames.txt"
    frames.write_text("clip_a 32 5\nclip_b 7 1\n")
    assert [(r.path, r.num_frames, r.label) for r in read_annotation_list(str(frames))] == [
        ("clip_a", 32, 5),
        ("clip_b", 7, 1),
    ]


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("a.mp4 1\nb.mp4\n", 2, "expected 'path label'"),
        ("a.mp4 1\n# c\nb.mp4 x\n", 3, "label must be a non-negative integer"),
        ("a 10 1\nb 10 -1\n", 2, "label must be"),
        ("a 10 1\nb.mp4 2\n", 2, "dir num_frames label"),
        ("a ten 1\n", 1, "num_frames must be"),
    ],
)
def test_malformed_list_line_names_file_and_line(tmp_path, text, line, match):
    path = tmp_path / "list.txt"
    path.write_text(text)
    with pytest.raises(ListFormatError, match=match) as e:
        read_annotation_list(str(path))
    assert e.value.line == line
    assert str(e.value).startswith(f"{path}:{line}:")


def test_label_names(tmp_path):
    plain, ids, csv = tmp_path / "plain.txt", tmp_path / "ids.txt", tmp_path / "labels.csv"
    plain.write_text("abseiling\nair drumming\n\n")
    ids.write_text("1 moving right\n0 moving left\n")
    csv.write_text("id,name\n0,abseiling\n1,air drumming\n")
    assert read_label_names(str(plain)) == ["abseiling", "air drumming"]
    assert read_label_names(str(ids)) == ["moving left", "moving right"]
    assert read_label_names(str(csv)) == ["abseiling", "air drumming"]
    bad = tmp_path / "bad.txt"
    bad.write_text("0 a\n0 b\n")
    with pytest.raises(ListFormatError, match="given twice") as e:
        read_label_names(str(bad))
    assert e.value.line == 2


# ---- augmentation ------------------------------------------------------------------------------------


def _static_clip(t=4, h=40, w=56, seed=0):
    frame = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return np.broadcast_to(frame, (t, h, w, 3)).copy()


def test_augmentation_identical_across_frames_different_across_clips():
    cfg = AugmentConfig(rand_augment="rand-m7-n4-mstd0.5-inc1", grayscale=0.5)
    clip = _static_clip()
    outs = []
    for s in range(12):
        x, _ = train_clip(clip, 0, cfg, 32, np.random.default_rng(s))  # (3, T, 32, 32)
        assert x.shape == (3, 4, 32, 32)
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, x[:, :1].expand_as(x), rtol=0, atol=0)  # same parameters on all frames
        outs.append(x[:, 0])
    distinct = {tuple(o.flatten()[:64].tolist()) for o in outs}
    assert len(distinct) == len(outs)  # every clip drew its own parameters


def test_flip_swaps_direction_labels():
    clip = _static_clip(h=32, w=32)
    square = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flip = AugmentConfig(flip=1.0, flip_label_pairs=SS_FLIP_PAIRS, **square)
    keep = AugmentConfig(flip=0.0, flip_label_pairs=SS_FLIP_PAIRS, **square)
    for label, swapped in [(86, 87), (87, 86), (93, 94), (167, 166), (5, 5)]:
        x_flip, l_flip = train_clip(clip, label, flip, 32, np.random.default_rng(0))
        x_keep, l_keep = train_clip(clip, label, keep, 32, np.random.default_rng(0))
        assert (l_flip, l_keep) == (swapped, label)
        torch.testing.assert_close(x_flip, x_keep.flip(-1))
    with pytest.raises(ValueError, match="more than one flip pair"):
        AugmentConfig(flip_label_pairs=((1, 2), (2, 3)))


def test_normalisation_and_three_crops():
    h, w = 32, 64
    clip = np.zeros((2, h, w, 3), np.uint8)
    clip[..., 0] = np.arange(w, dtype=np.uint8)[None, None] * 3  # red encodes the column
    views = eval_views(clip, 32, num_crops=3)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    for view, left in zip(views, [0, 16, 32], strict=True):
        assert view.shape == (3, 2, 32, 32)
        red = view[0] * std[0] + mean[0]
        expected = torch.arange(left, left + 32) * 3 / 255.0
        torch.testing.assert_close(red, expected.expand_as(red), atol=1e-5, rtol=0)
        torch.testing.assert_close(view[2] * std[2] + mean[2], torch.zeros(2, 32, 32), atol=1e-5, rtol=0)
    tall = np.ascontiguousarray(clip.transpose(0, 2, 1, 3))  # portrait: crops run top/centre/bottom
    views = eval_views(tall, 32, num_crops=3)
    for view, top in zip(views, [0, 16, 32], strict=True):
        red = view[0] * std[0] + mean[0]
        torch.testing.assert_close(red[:, :, 0], (torch.arange(top, top + 32) * 3 / 255.0).expand(2, 32))
    (centre,) = eval_views(clip, 16, resize_to=16)  # resize 32x64 -> 16x32 then centre 16x16
    assert centre.shape == (3, 2, 16, 16)


def test_random_resized_crop_box_bounds():
    for s in range(100):
        rng = np.random.default_rng(s)
        top, left, h, w = random_resized_crop_box(60, 80, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert top >= 0
        assert top + h <= 60
        assert left >= 0
        assert left + w <= 80
        assert 0.08 * 0.9 <= h * w / 4800 <= 1.0
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15


def test_rand_augment_policy_string():
    op = RandAugment.from_string("rand-m7-n4-mstd0.5-inc1")
    assert (op.magnitude, op.num_ops, op.magnitude_std, op.increasing, op.prob) == (7, 4, 0.5, True, 0.5)
    with pytest.raises(ValueError, match="unknown RandAugment field"):
        RandAugment.from_string("rand-m7-q3")
    levels = [op._level(np.random.default_rng(s)) for s in range(500)]
    assert abs(np.mean(levels) - 0.7) < 0.01
    assert 0.03 < np.std(levels) < 0.07


@pytest.fixture(scope="module")
def pil_frame():
    a = np.random.default_rng(0).integers(20, 220, size=(40, 48, 3), dtype=np.uint8)
    return Image.fromarray(a), torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)


_FILL = (128, 128, 128)


def _pil_affine(coefficients):  # output pixel (x, y) reads input (a x + b y + c, d x + e y + f)
    return lambda im: im.transform(im.size, Image.AFFINE, coefficients, Image.BILINEAR, fillcolor=_FILL)

_PIL_OPS = {  # ours (T=1 clip, so clip statistics are frame statistics) vs PIL, max error in grey levels
    "auto_contrast": (lambda x: ra.auto_contrast(x), lambda im: ImageOps.autocontrast(im), 1),
    "equalize": (lambda x: ra.equalize(x), lambda im: ImageOps.equalize(im), 0),
    "posterize": (lambda x: ra.posterize(x, 2), lambda im: ImageOps.posterize(im, 2), 0),
    "solarize": (lambda x: ra.solarize(x, 100), lambda im: ImageOps.solarize(im, 100), 0),
    "color": (lambda x: ra.color(x, 1.6), lambda im: ImageEnhance.Color(im).enhance(1.6), 1),
    "contrast": (lambda x: ra.contrast(x, 0.4), lambda im: ImageEnhance.Contrast(im).enhance(0.4), 1),
    "brightness": (lambda x: ra.brightness(x, 1.3), lambda im: ImageEnhance.Brightness(im).enhance(1.3), 1),
    "sharpness": (lambda x: ra.sharpness(x, 1.8), lambda im: ImageEnhance.Sharpness(im).enhance(1.8), 1),
    "translate_x": (
        lambda x: ra.translate(x, 0.25, "x", (0.5, 0.5, 0.5)),
        _pil_affine((1, 0, 12, 0, 1, 0)),
        1,
    ),
}
_PIL_WARPS = {  # interpolation differs only along the image border: compare the mean error
    "rotate": (
        lambda x: ra.rotate(x, 20, (0.5, 0.5, 0.5)),
        lambda im: im.rotate(20, resample=Image.BILINEAR, fillcolor=_FILL),
    ),
    "shear_x": (
        lambda x: ra.shear(x, 0.2, "x", (0.5, 0.5, 0.5)),
        _pil_affine((1, 0.2, 0, 0, 1, 0)),
    ),
    "shear_y": (
        lambda x: ra.shear(x, -0.2, "y", (0.5, 0.5, 0.5)),
        _pil_affine((1, 0, 0, -0.2, 1, 0)),
    ),
}


def _diff(ours: torch.Tensor, reference: Image.Image) -> np.ndarray:
    return np.abs((ours[0].permute(1, 2, 0) * 255).round().numpy() - np.asarray(reference, float))


@pytest.mark.parametrize("name", sorted(_PIL_OPS))
def test_rand_augment_ops_match_pil(pil_frame, name):
    image, x = pil_frame
    ours, reference, tolerance = _PIL_OPS[name]
    assert _diff(ours(x), reference(image)).max() <= tolerance


@pytest.mark.parametrize("name", sorted(_PIL_WARPS))
def test_rand_augment_warps_match_pil(pil_frame, name):
    image, x = pil_frame
    ours, reference = _PIL_WARPS[name]
    d = _diff(ours(x), reference(image))
    assert d.mean() < 1.5
    assert np.median(d) <= 1


# ---- dataset and bad samples ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    """Four good 12-frame videos (frame k of video v has grey level 6k + 10 + v) and six bad ones."""
    root = tmp_path_factory.mktemp("videos")
    good = []
    for v in range(4):
        write_video(root / f"good{v}.mp4", numbered_frames(12, size=48) + 10 + v)
        good.append(f"good{v}.mp4")
    write_video(root / "short.mp4", numbered_frames(3, size=48))
    bad = {"missing": "nope.mp4", "too_short": "short.mp4"}
    for kind in ("zero_bytes", "truncated", "truncated_data", "garbage"):
        make_corrupt_video(root / f"{kind}.mp4", kind)
        bad[kind] = f"{kind}.mp4"
    return root, good, bad


def _write_list(path, entries):
    path.write_text("".join(f"{name} {label}\n" for name, label in entries))
    return str(path)


def _dataset(root, list_file, **kw):
    kw = {"num_frames": 4, "train": True, "image_size": 32, "min_frames": 4, **kw}
    return VideoClipDataset(list_file, root, **kw)


def test_dataset_train_sample_and_determinism(video_root, tmp_path):
    root, good, _ = video_root
    ds = _dataset(root, _write_list(tmp_path / "l.txt", [(g, i) for i, g in enumerate(good)]), repeated_aug=2)
    item = ds[1]
    assert item["video"].shape == (2, 3, 4, 32, 32)
    assert item["label"] == 1
    assert item["index"] == 1
    assert item["path"] == os.path.join(str(root), "good1.mp4")
    assert item["view_labels"].tolist() == [1, 1]
    assert not torch.equal(item["video"][0], item["video"][1])  # independent repeated copies
    torch.testing.assert_close(ds[1]["video"], item["video"], rtol=0, atol=0)  # (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["video"], item["video"])
    ds.set_epoch(0)
    torch.testing.assert_close(ds[1]["video"], item["video"], rtol=0, atol=0)  # a resumed epoch reproduces
    other_seed = _dataset(root, ds.list_file, repeated_aug=2, seed=1)
    assert not torch.equal(other_seed[1]["video"], item["video"])


def test_dataset_independent_of_worker_scheduling(video_root, tmp_path):
    root, good, _ = video_root
    ds = _dataset(root, _write_list(tmp_path / "l.txt", [(g, 0) for g in good]))
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_clips)
        batches.append(torch.cat([b["video"] for b in loader]))
    torch.testing.assert_close(batches[0], batches[1], rtol=0, atol=0)


def test_dataset_test_views_decode_the_right_frames(video_root, tmp_path):
    root, good, _ = video_root
    list_file = _write_list(tmp_path / "l.txt", [(good[2], 0)])
    ds = _dataset(root, list_file, train=False, num_clips=2, num_crops=3)
    item = ds[0]
    assert item["video"].shape == (6, 3, 4, 32, 32)
    assert item["view_labels"].tolist() == [0] * 6
    grey = item["video"][:, 0].mean(dim=(2, 3)) * CLIP_STD[0] + CLIP_MEAN[0]  # (views, T)
    numbers = torch.round((grey * 255 - 12) / 6).long()  # video 2: level 6k + 12
    # 12 frames, 4 segments of 3: clip 0 takes 0.25 of each segment, clip 1 takes 0.75 (clip-major views)
    expected = [[0, 3, 6, 9]] * 3 + [[2, 5, 8, 11]] * 3
    assert numbers.tolist() == expected


@pytest.mark.parametrize(
    "kind", ["missing", "too_short", "zero_bytes", "truncated", "truncated_data", "garbage"]
)
def test_bad_video_fail_policy(video_root, tmp_path, kind):
    root, good, bad = video_root
    list_file = _write_list(tmp_path / "l.txt", [(good[0], 0), (bad[kind], 1)])
    ds = _dataset(root, list_file, bad_sample_policy="fail")
    assert ds[0]["video"].shape == (1, 3, 4, 32, 32)
    with pytest.raises(VideoReadError) as e:
        ds[1]
    assert e.value.path == os.path.join(str(root), bad[kind])
    expected = {"zero_bytes": "empty", "truncated": "undecodable", "truncated_data": "undecodable",
                "garbage": "undecodable"}  # fmt: skip
    assert e.value.kind == expected.get(kind, kind)


def _mixed_list(video_root, tmp_path):
    root, good, bad = video_root
    names = [good[0], bad["missing"], good[1], bad["zero_bytes"], bad["truncated"], good[2], bad["too_short"],
             bad["truncated_data"], bad["garbage"], good[3]]  # fmt: skip
    return root, _write_list(tmp_path / "mixed.txt", [(n, i) for i, n in enumerate(names)]), [0, 2, 5, 9]


def _assert_decoded(batch, good_ids):
    """Every frame of every view is a real frame of its video (grey 6k + 10 + v), never a filler."""
    grey = batch["video"][:, :, 0].mean(dim=(-2, -1)) * CLIP_STD[0] + CLIP_MEAN[0]  # (B, R, T)
    for levels, index in zip(grey * 255, batch["index"].tolist(), strict=True):
        k = (levels - 10 - good_ids.index(index)) / 6
        assert (k - k.round()).abs().max() < 0.25
        assert k.round().min() >= 0
        assert k.round().max() <= 11


def test_bad_video_skip_policy(video_root, tmp_path):
    root, list_file, good_ids = _mixed_list(video_root, tmp_path)
    ds = _dataset(root, list_file, bad_sample_policy="skip")
    items = [ds[i] for i in range(len(ds))]
    bad_ids = [i for i in range(len(ds)) if i not in good_ids]
    assert [i for i, it in enumerate(items) if isinstance(it, BadSample)] == bad_ids
    assert items[1].kind == "missing"
    assert items[3].kind == "empty"
    assert items[6].kind == "too_short"
    batch = collate_clips(items)
    assert batch["video"].shape == (4, 1, 3, 4, 32, 32)
    assert batch["index"].tolist() == good_ids
    assert batch["label"].tolist() == good_ids
    assert sorted(b.index for b in batch["bad"]) == bad_ids
    _assert_decoded(batch, good_ids)
    torch.testing.assert_close(batch["video"][1], ds[2]["video"], rtol=0, atol=0)
    empty = collate_clips([items[1], items[3]])  # a batch without a single good sample
    assert empty["video"] is None
    assert empty["index"].numel() == 0
    assert len(empty["bad"]) == 2


def test_bad_video_resample_policy(video_root, tmp_path):
    root, list_file, good_ids = _mixed_list(video_root, tmp_path)
    ds = _dataset(root, list_file, bad_sample_policy="resample")
    items = [ds[i] for i in range(len(ds))]
    assert all(isinstance(it, dict) for it in items)
    for i, it in enumerate(items):
        assert it["index"] in good_ids
        assert it["label"] == it["index"]
        reported = [b.index for b in it.get("bad", [])]
        assert (i in reported) == (i not in good_ids)  # the bad entry is reported, not hidden
        assert all(b not in good_ids for b in reported)
    batch = collate_clips(items)
    assert batch["video"].shape[0] == len(ds)
    assert set(batch["index"].tolist()) <= set(good_ids)
    assert set(range(len(ds))) - set(good_ids) <= {b.index for b in batch["bad"]}
    _assert_decoded(batch, good_ids)
    all_bad = _dataset(root, _write_list(tmp_path / "bad.txt", [("nope.mp4", 0), ("zero_bytes.mp4", 1)]),
                       bad_sample_policy="resample", max_resample=3)  # fmt: skip
    item = all_bad[0]
    assert isinstance(item, BadSample)
    assert item.index == 0
    assert "3 entries resampled instead failed" in item.reason


def test_frame_folder_dataset(tmp_path):
    write_frame_folder(tmp_path / "clip", numbered_frames(8, size=32))
    list_file = tmp_path / "frames.txt"
    list_file.write_text("clip 8 2\nmissing_clip 8 1\n")
    ds = _dataset(tmp_path, str(list_file), train=False)
    item = ds[0]
    grey = item["video"][0, 0].mean(dim=(1, 2)) * CLIP_STD[0] + CLIP_MEAN[0]
    assert torch.round(grey * 255 / 6).long().tolist() == [1, 3, 5, 7]
    assert item["label"] == 2
    assert isinstance(ds[1], BadSample)
    assert ds[1].kind == "missing"


# ---- check_data ----------------------------------------------------------------------------------------


def test_check_data_report(video_root, tmp_path):
    root, good, bad = video_root
    list_file = tmp_path / "check.txt"
    lines = [f"{good[0]} 0", f"{bad['missing']} 1", "broken line with words", f"{bad['zero_bytes']} 2",
             f"{bad['truncated']} 3", f"{bad['too_short']} 4", f"{good[1]} 5", f"{bad['truncated_data']} 6",
             f"{bad['garbage']} x"]  # fmt: skip
    list_file.write_text("\n".join(lines) + "\n")
    report = check_data(str(list_file), str(root), num_frames=4)
    found = [(p.line, p.kind) for p in report.problems]
    assert found == [(2, "missing"), (3, "malformed"), (4, "empty"), (5, "undecodable"), (6, "too_short"),
                     (8, "undecodable"), (9, "malformed")]  # fmt: skip
    assert not report.ok
    assert report.num_ok == 2
    assert report.num_entries == 9 == report.num_ok + len(report.problems)  # malformed lines are entries too
    text = format_report(report)
    assert f"{list_file}:3: malformed" in text
    assert f"{list_file}:6: too_short" in text
    assert "2 ok, 7 problem(s)" in text
    quick = check_data(str(list_file), str(root), num_frames=4, decode=False)  # packets only
    assert [(p.line, p.kind) for p in quick.problems] == found  # the cut last packet gives truncation away
    good_list = _write_list(tmp_path / "good.txt", [(g, 0) for g in good])
    assert check_data(good_list, str(root), num_frames=12).ok
    assert [p.kind for p in check_data(good_list, str(root), num_frames=13).problems] == ["too_short"] * 4


def test_check_data_flags_duplicates_and_a_missing_data_root_once(video_root, tmp_path):
    root, good, bad = video_root
    list_file = _write_list(tmp_path / "dup.txt", [(good[0], 0), (good[1], 1), (f"./{good[0]}", 0),
                                                   (bad["missing"], 2), (good[1], 3)])
    report = check_data(list_file, str(root), num_frames=4, decode=False)
    assert [(p.line, p.kind, p.reason) for p in report.problems] == [
        (3, "duplicate", "also listed on line 1"), (4, "missing", "missing file"),
        (5, "duplicate", "also listed on line 2; label 1 there, 3 here")]  # fmt: skip
    assert (report.num_entries, report.num_ok) == (5, 2)
    assert "5 entries, 2 ok, 3 problem(s) (duplicate 2, missing 1)" in format_report(report)

    with pytest.raises(FileNotFoundError, match=f"data root {tmp_path / 'nowhere'}: no such directory"):
        check_data(list_file, tmp_path / "nowhere", num_frames=4)
    # the root exists but holds none of the videos: one hint instead of only a missing line per video
    text = format_report(check_data(list_file, tmp_path, num_frames=4, decode=False))
    assert f"none of the 3 videos exists under {tmp_path}: is the data root right?" in text


def test_check_data_frame_folders(tmp_path):
    write_frame_folder(tmp_path / "full", numbered_frames(6))
    write_frame_folder(tmp_path / "holes", numbered_frames(6))
    os.remove(tmp_path / "holes" / "img_00004.jpg")
    (tmp_path / "broken").mkdir()
    write_frame_folder(tmp_path / "broken", numbered_frames(6))
    (tmp_path / "broken" / "img_00002.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "none").mkdir()
    list_file = tmp_path / "frames.txt"
    list_file.write_text("full 6 0\nholes 6 0\nbroken 6 0\nabsent 6 0\nnone 0 0\n")
    report = check_data(str(list_file), str(tmp_path), num_frames=4)
    kinds = [(p.line, p.kind) for p in report.problems]
    assert kinds == [(2, "too_short"), (3, "undecodable"), (4, "missing"), (5, "empty")]
