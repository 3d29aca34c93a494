"""The models behind ``side4video serve`` and what the page can ask of them.

A retrieval checkpoint becomes a ``Searcher`` (text search over the video folder, through the same
embedding cache as ``side4video search``), a recognition checkpoint a ``Classifier`` (top-k classes of
one video, as ``side4video predict`` gives them). Both read videos exactly as evaluation does, and both
show the frames the model was given: the sampled frames of the clip, after resizing and cropping.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import search as video_search
from ..backbones.tokenizer import ClipTokenizer
from ..data import AugmentConfig, BadSample, read_label_names
from ..engine.checkpoint import load_model
from ..engine.config import TrainConfig
from ..methods.retrieval import TextVideoModel
from ..models import get_preset
from .jobs import Job


def videos_in(root: Path) -> list[str]:
    """The video files under the folder ``root`` (resolved), without those that resolve outside it
    (symbolic links pointing out of the folder are never read nor served)."""
    return [p for p in video_search.find_videos(root) if Path(p).is_relative_to(root)]


@dataclass(frozen=True)
class ModelInfo:
    """What the page's header says about a loaded model."""

    task: str  # "recognition" | "retrieval"
    preset: str
    backbone: str
    frames: int
    image_size: int
    classes: int | None  # recognition only
    source: str  # what the weights were loaded from
    checkpoint: str  # as given on the command line

    @classmethod
    def of(cls, checkpoint: str | os.PathLike, model: nn.Module, cfg: TrainConfig) -> ModelInfo:
        kind = "exported model folder" if Path(checkpoint).is_dir() else "training checkpoint"
        classes = None if isinstance(model, TextVideoModel) else model.cfg.num_classes
        return cls(get_preset(cfg.model.name).task.name, cfg.model.name, model.cfg.backbone, cfg.model.frames,
                   cfg.model.image_size, classes, kind, str(checkpoint))


def frame_strip(clip: torch.Tensor, cfg: TrainConfig) -> bytes:
    """JPEG of a normalised clip ``(3, T, H, W)``'s frames side by side, in the colours the video had."""
    augment = AugmentConfig(**cfg.data.augment)
    mean = torch.tensor(augment.mean).view(3, 1, 1, 1)
    std = torch.tensor(augment.std).view(3, 1, 1, 1)
    pixels = (clip.float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)  # (3, T, H, W)
    strip = pixels.permute(2, 1, 3, 0).flatten(1, 2).numpy()  # (H, T*W, 3)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(strip)).save(out, format="JPEG", quality=90)
    return out.getvalue()


class Searcher:
    """A retrieval model over one folder of videos, with the folder's embedding cache."""

    def __init__(self, checkpoint: str, model: nn.Module, cfg: TrainConfig, tokenizer: ClipTokenizer,
                 videos: str | os.PathLike) -> None:
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.info = ModelInfo.of(checkpoint, model, cfg)
        self.root = Path(videos).resolve()
        self.cache = video_search.EmbeddingCache(video_search.default_cache_path(self.root),
                                                video_search.model_key(checkpoint, cfg))

    def index(self, job: Job) -> video_search.VideoIndex:
        """Embeddings of every video of the folder; the new or changed ones are encoded, with progress."""
        job.progress("looking for videos")
        paths = videos_in(self.root)

        def report(done: int, total: int) -> None:
            job.progress(f"indexing: {done} of {total} new or changed videos encoded", done, total)

        index = video_search.encode_videos(self.model, self.cfg, paths, self.cache, report=report)
        job.progress(f"{len(index.paths)} videos indexed, {len(index.errors)} unreadable", len(paths), len(paths))
        return index

    def index_summary(self, job: Job) -> dict[str, Any]:
        index = self.index(job)
        return {"videos": len(index.paths), "errors": self._errors(index.errors)}

    def search(self, job: Job, query: str, topk: int) -> dict[str, Any]:
        index = self.index(job)
        job.progress("ranking")
        hits = video_search.search(self.model, self.tokenizer, index, query, topk)
        clips = video_search.video_dataset(self.cfg, [h["path"] for h in hits])
        results = []
        for i, hit in enumerate(hits):
            item = clips[i]  # a video changed since it was indexed may have become unreadable
            strip = None if isinstance(item, BadSample) else frame_strip(item["video"], self.cfg)
            name = self.relative(hit["path"])
            results.append({"rank": hit["rank"], "score": hit["score"], "name": name,
                            "strip": strip and job.add_image(f"hit{i}", strip), "video": f"/videos/{quote(name)}"})
        return {"query": query, "results": results, "videos": len(index.paths), "errors": self._errors(index.errors)}

    def relative(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _errors(self, errors: dict[str, str]) -> dict[str, str]:
        return {self.relative(p): reason for p, reason in errors.items()}


class Classifier:
    """A recognition model (trained here, or an exported / imported one) and its class names."""

    def __init__(self, checkpoint: str, model: nn.Module, cfg: TrainConfig, labels: list[str] | None) -> None:
        self.model, self.cfg, self.labels = model, cfg, labels
        self.info = ModelInfo.of(checkpoint, model, cfg)

    def classify(self, job: Job, path: str | os.PathLike, name: str, topk: int = 5) -> dict[str, Any]:
        """Top-``topk`` classes of the video file ``path`` (shown to the user as ``name``), averaged over the
        run's test views exactly as ``side4video predict`` does; a file that cannot be read is a ValueError."""
        from ..engine.predict import clip_dataset, predict_videos

        job.progress(f"reading and classifying {name}")
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / f"video{Path(path).suffix}"  # any file name (the list format forbids spaces)
            link.symlink_to(Path(path).resolve())
            (result,) = predict_videos(self.model, self.cfg, [link], topk=topk, label_names=self.labels)
            if "error" in result:
                raise ValueError(f"{name} is not a video this model can read: {result['error']}")
            clip = clip_dataset(self.cfg, [link], tmp)[0]["video"][0]  # (3, T, H, W): the first view
        top = [{"label": c["label"], "name": c.get("name", str(c["label"])), "prob": c["prob"]}
               for c in result["top"]]
        return {"name": name, "top": top, "views": self.cfg.eval.test_crops * self.cfg.eval.test_clips,
                "strip": job.add_image("clip", frame_strip(clip, self.cfg))}


def load_served(
    checkpoint: str, device: str | torch.device = "cpu", *, videos: str | None = None,
    tokenizer: str | None = None, labels: str | None = None,
) -> Searcher | Classifier:
    """The checkpoint's model, as a ``Searcher`` over ``videos`` (retrieval) or a ``Classifier``."""
    model, cfg = load_model(checkpoint, device, with_config=True)
    if isinstance(model, TextVideoModel):
        if videos is None:
            raise ValueError(f"{checkpoint} is a retrieval model ({cfg.model.name}): searching needs --videos DIR")
        return Searcher(checkpoint, model, cfg, video_search.run_tokenizer(checkpoint, cfg, tokenizer),
                        videos)
    names = labels or cfg.data.label_names
    return Classifier(checkpoint, model, cfg, read_label_names(names, cfg.model.num_classes) if names else None)
