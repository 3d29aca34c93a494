"""Resize options of the clip pipeline (fixed height x width or short side, in training and at test),
the short-side jitter crop and random erasing, against direct computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from side4video.data.sampling import segment_indices
from side4video.data.transforms import CLIP_MEAN, CLIP_STD, AugmentConfig, eval_views, train_clip
from side4video.engine.config import resolve_config


def clip(t: int = 3, h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def reference_resize(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def normalized(x: torch.Tensor) -> torch.Tensor:  # (T, 3, H, W) in [0, 1] -> (3, T, H, W)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).transpose(0, 1)


def test_test_views_of_a_fixed_height_and_width():
    frames = clip(h=30, w=40)
    views = eval_views(frames, 16, num_crops=3, resize_to=(20, 28))  # aspect ratio not kept: 30x40 -> 20x28
    full = reference_resize(frames, (20, 28))
    for view, left in zip(views, (0, 6, 12), strict=True):  # left / centre / right, 2 rows off the top
        torch.testing.assert_close(view, normalized(full[..., 2:18, left : left + 16]))
    (centre,) = eval_views(frames, 16, resize_to=20)  # short side 20: 30x40 -> 20x27
    torch.testing.assert_close(centre, normalized(reference_resize(frames, (20, 27))[..., 2:18, 5:21]))
    with pytest.raises(ValueError, match="smaller than the crop"):
        eval_views(frames, 16, resize_to=(15, 28))


def test_training_resizes_before_the_random_resized_crop():
    frames = clip(h=30, w=40)
    whole = dict(scale=(1.0, 1.0), ratio=(28 / 20, 28 / 20), flip=0.0)  # the crop is the whole resized frame
    x, _ = train_clip(frames, 0, AugmentConfig(resize=(20, 28), **whole), 16, np.random.default_rng(0))
    want = F.interpolate(reference_resize(frames, (20, 28)), size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(x, normalized(want.clamp(0, 1)))
    short, _ = train_clip(frames, 0, AugmentConfig(resize=20, **whole), 16, np.random.default_rng(0))
    assert not torch.allclose(short, x)  # short side 20 keeps the aspect ratio: 20x27, a different crop


def test_short_side_jitter_takes_a_window_of_a_jittered_resize():
    frames = clip(h=30, w=40)
    cfg = AugmentConfig(short_side_jitter=(16, 20), flip=0.0)
    rescaled = {side: normalized(reference_resize(frames, (side, round(40 * side / 30)))) for side in range(16, 21)}
    used = set()
    for seed in range(12):
        x, _ = train_clip(frames, 0, cfg, 16, np.random.default_rng(seed))  # (3, T, 16, 16)
        matches = [(side, top, left) for side, full in rescaled.items()
                   for top in range(full.shape[-2] - 15) for left in range(full.shape[-1] - 15)
                   if torch.allclose(full[..., top : top + 16, left : left + 16], x, atol=1e-5)]
        assert matches, seed
        used.add(matches[0][0])
    assert len(used) >= 3  # the short side really varies


@pytest.mark.parametrize("mode", ["const", "rand"])
def test_random_erasing_one_rectangle_on_every_frame(mode):
    frames = clip(t=4, h=32, w=32)
    plain = AugmentConfig(resize=32, flip=0.0)
    erase = AugmentConfig(resize=32, flip=0.0, random_erasing=1.0, erasing_mode=mode)
    grey = normalized(torch.full((1, 3, 1, 1), 128 / 255))  # (3, 1, 1, 1)
    for seed in range(5):
        before, _ = train_clip(frames, 0, plain, 32, np.random.default_rng(seed))  # same draws up to the erasing
        after, _ = train_clip(frames, 0, erase, 32, np.random.default_rng(seed))
        changed = (after != before).any(dim=0)  # (T, H, W)
        assert torch.equal(changed, changed[:1].expand_as(changed))  # the same region in every frame
        rows, cols = changed[0].any(1).nonzero().squeeze(1), changed[0].any(0).nonzero().squeeze(1)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = after[:, :, top:bottom, left:right]
        assert 0.02 * 32 * 32 * 0.5 <= box[0, 0].numel() <= 32 * 32 / 3 * 1.1  # area fraction 2 % - 1/3
        if mode == "const":
            torch.testing.assert_close(box, grey.expand_as(box))
        else:
            assert not torch.equal(box[:, 0], box[:, 1])  # fresh noise on every frame
            std, mean = torch.tensor(CLIP_STD).view(3, 1, 1, 1), torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)
            levels = (box * std + mean) * 255
            assert (levels - levels.round()).abs().max() < 1e-3  # 8-bit values
    quarter = AugmentConfig(resize=32, flip=0.0, random_erasing=0.25)
    erased = sum(
        not torch.equal(train_clip(frames, 0, quarter, 32, np.random.default_rng(s))[0],
                        train_clip(frames, 0, plain, 32, np.random.default_rng(s))[0])
        for s in range(80)
    )
    assert 8 <= erased <= 32  # about a quarter of the clips


def test_resize_options_from_yaml_and_set(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: side4video-b16\ntest_resize: [256, 320]\naugment:\n  resize: [256, 320]\n")
    cfg = resolve_config(path)
    assert cfg.eval.test_resize == (256, 320)
    assert AugmentConfig(**cfg.data.augment).resize == (256, 320)
    cfg = resolve_config(path, sets=["test_resize=256", "augment.resize=256", "augment.short_side_jitter=[224,258]"])
    augment = cfg.data.augment
    assert (cfg.eval.test_resize, augment["resize"], augment["short_side_jitter"]) == (256, 256, (224, 258))
    with pytest.raises(ValueError, match="resize"):
        AugmentConfig(resize=(256, 0))


def test_segment_test_position_start_or_centre():
    np.testing.assert_array_equal(segment_indices(120, 12, train=False, test_position=0.0), np.arange(12) * 10)
    np.testing.assert_array_equal(segment_indices(120, 12, train=False), np.arange(12) * 10 + 5)
    starts = [segment_indices(120, 4, train=False, clip_index=k, num_clips=2, test_position=0.0) for k in (0, 1)]
    np.testing.assert_array_equal(starts[1] - starts[0], [15] * 4)  # clip 1: half a segment later
    with pytest.raises(ValueError, match="test_position"):
        segment_indices(120, 4, train=False, test_position=1.0)
