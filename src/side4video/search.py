"""Text-to-video search over a folder of videos with a trained retrieval checkpoint, and embedding export.

Every video file under the folder (recursively) is encoded once with the checkpoint's model, exactly as
evaluation reads a video (``frames`` segment centres, short side resized to ``image_size``, centre crop),
and its embedding stored in a cache file. A cache is valid for one model: the checkpoint's path, size and
mtime and the clip settings; within it an entry is reused while its video's size and mtime are unchanged,
so a changed or new video is encoded again and an unchanged one never is. Videos that cannot be read are
remembered (with the reason) in the same way and reported on every query, never silently dropped.

A cache is data, checked when read: an unreadable or malformed file, or entries with non-finite values or
a shape unlike the others, are dropped with a warning and encoded again. A video whose embedding is not
finite is reported as unreadable, never ranked. The cache lives beside the videos, or in the user cache
directory (``$XDG_CACHE_HOME/side4video``) when the video folder is not writable.

    model, cfg, tokenizer = load_retrieval_model("runs/msrvtt/best.pt")
    cache = EmbeddingCache(f"clips/{CACHE_NAME}", model_key("runs/msrvtt/best.pt", cfg))
    index = encode_videos(model, cfg, find_videos("clips/"), cache)
    hits = search(model, tokenizer, index, "a dog catches a frisbee", topk=5)
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones.tokenizer import ClipTokenizer
from .data import VIDEO_EXTENSIONS, VideoOnlyDataset, collate_captions
from .engine.config import TrainConfig

CACHE_NAME = ".side4video_embeddings.pt"
CACHE_VERSION = 1


def find_videos(root: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
    """Absolute paths of the video files under ``root`` (recursively, by extension), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist")
    suffixes = {e.lower() for e in extensions}
    return sorted(str(p.resolve()) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def file_stamp(path: str | os.PathLike) -> dict[str, int]:
    """What identifies a file's version: its size and modification time (ns)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def default_cache_path(videos: str | os.PathLike) -> Path:
    """``VIDEOS/CACHE_NAME``, or a file named after the folder in the user cache directory when
    ``videos`` is not writable."""
    folder = Path(videos).resolve()
    if os.access(folder, os.W_OK):
        return folder / CACHE_NAME
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "side4video"
    return user_cache / f"embeddings-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.pt"


def model_key(checkpoint: str | os.PathLike, cfg: TrainConfig) -> dict[str, Any]:
    """What the embeddings depend on: the checkpoint file (or every file of an export folder) and the clip."""
    from .data import AugmentConfig

    path = Path(checkpoint).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    augment = AugmentConfig(**cfg.data.augment)
    return {"checkpoint": str(path), "files": [{"name": str(p), **file_stamp(p)} for p in files],
            "frames": cfg.model.frames, "image_size": cfg.model.image_size, "mean": list(augment.mean),
            "std": list(augment.std)}


class EmbeddingCache:
    """Video embeddings of one model on disk: ``{path: {"size", "mtime_ns", "embedding" | "error"}}``."""

    def __init__(self, path: str | os.PathLike, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = key
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.entries = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        """The valid entries of the file (another model's or version's cache has none)."""
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file is rebuilt, whatever torch raises
            warnings.warn(f"{self.path}: unreadable embedding cache ({type(e).__name__}), rebuilding it",
                          stacklevel=3)
            return {}
        if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
            warnings.warn(f"{self.path}: not an embedding cache, rebuilding it", stacklevel=3)
            return {}
        if data.get("version") != CACHE_VERSION or data.get("key") != self.key:
            return {}
        entries = {p: e for p, e in data["videos"].items() if isinstance(p, str) and _valid_entry(e)}
        shapes = Counter(tuple(e["embedding"].shape) for e in entries.values() if "embedding" in e)
        if shapes:
            shape = shapes.most_common(1)[0][0]
            entries = {p: e for p, e in entries.items() if "error" in e or tuple(e["embedding"].shape) == shape}
        if len(entries) < len(data["videos"]):
            warnings.warn(f"{self.path}: {len(data['videos']) - len(entries)} invalid cache entries (non-finite, "
                          "malformed or of another shape) are encoded again", stacklevel=3)
        return entries

    def get(self, video: str, stamp: dict[str, int]) -> dict[str, Any] | None:
        """The entry of ``video`` if it was made from the file as it is now (``stamp``)."""
        entry = self.entries.get(video)
        return entry if entry is not None and all(entry[k] == v for k, v in stamp.items()) else None

    def put(self, video: str, stamp: dict[str, int], **value: Any) -> None:
        self.entries[video] = {**stamp, **value}

    def save(self) -> None:
        """Write the cache; a folder that cannot be written is a warning (the embeddings are still used)."""
        from .atomic import atomic_save

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"version": CACHE_VERSION, "key": self.key, "videos": self.entries}, self.path)
        except OSError as e:
            warnings.warn(f"{self.path}: cannot write the embedding cache ({e.strerror or e})", stacklevel=2)


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), int) for k in ("size", "mtime_ns")):
        return False
    if "error" in entry:
        return isinstance(entry["error"], str)
    emb = entry.get("embedding")
    return isinstance(emb, torch.Tensor) and emb.is_floating_point() and emb.numel() > 0 and bool(
        torch.isfinite(emb).all())


@dataclass
class VideoIndex:
    """Embeddings of the readable videos, in ``paths`` order, and the unreadable ones."""

    paths: list[str]
    embeddings: torch.Tensor  # (N, T, E) frame embeddings (Side4Video) or (N, E) (CLIP4Clip)
    errors: dict[str, str] = field(default_factory=dict)  # path -> why it could not be read
    encoded: int = 0  # videos run through the model by this call (the others came from the cache)


def load_retrieval_model(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", tokenizer: str | None = None
) -> tuple[nn.Module, TrainConfig, ClipTokenizer]:
    """A retrieval checkpoint's model (eval mode), run config and tokenizer (``tokenizer`` or the run's)."""
    from .engine.checkpoint import load_model
    from .methods.retrieval import TextVideoModel

    model, cfg = load_model(checkpoint, device, with_config=True)
    if not isinstance(model, TextVideoModel):
        raise ValueError(f"{checkpoint} holds {cfg.model.name}, a {type(model).__name__}, not a text-video "
                         "retrieval model")
    return model, cfg, run_tokenizer(checkpoint, cfg, tokenizer)


def run_tokenizer(checkpoint: str | os.PathLike, cfg: TrainConfig, tokenizer: str | None = None) -> ClipTokenizer:
    """The tokenizer ``tokenizer``, else the one the retrieval run ``cfg`` (of ``checkpoint``) was trained with."""
    from .backbones.tokenizer import load_tokenizer

    path = tokenizer or cfg.data.tokenizer
    if path is None:
        raise ValueError(f"{checkpoint}: its run names no tokenizer; pass one (tokenizer.json, ...)")
    return load_tokenizer(path)


def video_dataset(cfg: TrainConfig, paths: Sequence[str]) -> VideoOnlyDataset:
    """The clips of ``paths`` as the model of run ``cfg`` encodes them for search (evaluation's reading)."""
    from .data import AugmentConfig

    augment = AugmentConfig(**cfg.data.augment)
    return VideoOnlyDataset(paths, None, num_frames=cfg.model.frames, image_size=cfg.model.image_size, train=False,
                            test_position=cfg.eval.test_segment_position, decode_short_side=cfg.data.decode_short_side,
                            mean=augment.mean, std=augment.std)


@torch.no_grad()
def encode_videos(
    model: nn.Module,
    cfg: TrainConfig,
    paths: Sequence[str],
    cache: EmbeddingCache | None = None,
    batch_size: int = 8,
    progress: bool = False,
    report: Callable[[int, int], None] | None = None,
) -> VideoIndex:
    """Embeddings of ``paths`` (absolute); only the videos without a current cache entry are decoded and
    encoded, and the cache (if any) is saved with them. ``report(done, total)`` is called before the first
    and after every batch with the number of videos to encode."""
    device = next(model.parameters()).device
    model.eval()
    stamps = {p: file_stamp(p) for p in paths}
    found = {p: cache.get(p, stamps[p]) for p in paths} if cache is not None else dict.fromkeys(paths)
    todo = [p for p in paths if found[p] is None]
    if report is not None:
        report(0, len(todo))
    if todo:
        dataset = video_dataset(cfg, todo)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_captions)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc="encode videos", unit="batch", dynamic_ncols=True)
        for batch in loader:
            for bad in batch["bad"]:
                found[todo[bad.index]] = {"error": f"{bad.kind}: {bad.reason}"}
            if batch["video"] is not None:
                emb = model.encode_video(batch["video"].to(device)).float().cpu()  # (B, T, E) or (B, E)
                for i, e in zip(batch["video_index"].tolist(), emb, strict=True):
                    finite = bool(torch.isfinite(e).all())
                    found[todo[i]] = {"embedding": e.clone()} if finite else {"error": "non-finite embedding"}
            if report is not None:
                report(sum(found[p] is not None for p in todo), len(todo))
        if cache is not None:
            for p in todo:
                cache.put(p, stamps[p], **found[p])
            cache.save()
    good = [p for p in paths if "embedding" in found[p]]
    embeddings = torch.stack([found[p]["embedding"] for p in good]) if good else torch.zeros(0)
    errors = {p: found[p]["error"] for p in paths if "error" in found[p]}
    return VideoIndex(good, embeddings, errors, encoded=len(todo))


@torch.no_grad()
def encode_texts(
    model: nn.Module, tokenizer: ClipTokenizer, texts: Sequence[str], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings ``(N, L, E)`` (token-wise models) or ``(N, E)``, and the token masks ``(N, L)``."""
    device = next(model.parameters()).device
    ids, mask = tokenizer.tokenize(list(texts), context_length=model.cfg.text_length)  # (N, L) each
    model.eval()
    parts = [model.encode_text(i.to(device), m.to(device)).float().cpu()
             for i, m in zip(ids.split(batch_size), mask.split(batch_size), strict=True)]
    return torch.cat(parts), mask


@torch.no_grad()
def search(
    model: nn.Module, tokenizer: ClipTokenizer, index: VideoIndex, query: str, topk: int = 5
) -> list[dict[str, Any]]:
    """The ``topk`` videos of ``index`` most similar to ``query``: ``[{"rank", "path", "score"}, ...]``."""
    if not index.paths:
        return []
    device = next(model.parameters()).device
    text, mask = encode_texts(model, tokenizer, [query])
    sim = model.similarity(index.embeddings.to(device), text.to(device), mask.to(device))[0]  # (N,)
    top = sim.float().topk(min(topk, sim.numel()))
    return [{"rank": r, "path": index.paths[i], "score": s}
            for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1)]
