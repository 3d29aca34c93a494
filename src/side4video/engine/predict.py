"""Classify video files with a trained model, using exactly the test-time views of evaluation."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import AugmentConfig, BadSample, VideoClipDataset
from ..methods.common import autocast_context
from .config import TrainConfig, replace
from .recognition import predict_views


def clip_dataset(cfg: TrainConfig, videos: Sequence[str | Path], list_dir: str) -> VideoClipDataset:
    """A test-mode dataset of ``videos`` (any label): a one-entry-per-line list written in ``list_dir``."""
    paths = [os.path.abspath(v) for v in videos]
    spaced = [p for p in paths if any(c.isspace() for c in p)]
    if spaced:
        raise ValueError(f"video paths may not contain whitespace (annotation list format): {spaced}")
    list_file = Path(list_dir) / "videos.txt"
    list_file.write_text("".join(f"{p} 0\n" for p in paths))
    d, e = cfg.data, cfg.eval
    return VideoClipDataset(
        list_file, "", num_frames=cfg.model.frames, train=False, image_size=cfg.model.image_size,
        sampling=d.sampling, frame_interval=d.frame_interval, num_clips=e.test_clips, num_crops=e.test_crops,
        test_resize=e.test_resize, test_position=e.test_segment_position, decode_short_side=d.decode_short_side,
        augment=AugmentConfig(**d.augment), bad_sample_policy="skip", list_kind="video", view_chunk=e.eval_chunk,
    )


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    cfg: TrainConfig,
    videos: Sequence[str | Path],
    topk: int = 5,
    views: tuple[int, int] | None = None,
    label_names: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One result per video, in order: ``{"path", "top": [{"label", "prob"[, "name"]}, ...]}`` with the
    ``topk`` classes by probability averaged over the (crops x clips) views, or ``{"path", "error"}``.
    The views are decoded ``eval_chunk`` at a time; non-finite outputs raise ``NonFiniteError``."""
    if views is not None:
        cfg = replace(cfg, "--views", test_crops=views[0], test_clips=views[1])
    device = next(model.parameters()).device
    model.eval()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = clip_dataset(cfg, videos, tmp)
        chunks = dataset.chunks_per_video
        for i, video in enumerate(videos):
            probs, views, error = 0.0, 0, None
            for c in range(chunks):  # the video's views, one decoded chunk at a time
                item = dataset[i * chunks + c]
                if isinstance(item, BadSample):
                    error = item.reason
                    break
                with autocast_context(device, cfg.optim.amp, getattr(torch, cfg.optim.amp_dtype)):
                    p = predict_views(model, item["video"][None].to(device), cfg.eval.eval_chunk)[0]  # (C,)
                probs, views = probs + p * item["video"].shape[0], views + item["video"].shape[0]
            if error is not None:
                results.append({"path": str(video), "error": error})
                continue
            probs = probs / views  # (C,) mean over every view
            top = probs.topk(min(topk, probs.numel()))
            results.append({"path": str(video), "top": [
                {"label": int(k), "prob": float(p), **({"name": label_names[k]} if label_names else {})}
                for p, k in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]})
    return results
