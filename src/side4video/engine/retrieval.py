"""Text-video retrieval: symmetric InfoNCE over (video, caption) batches gathered across ranks, and
R@1/5/10, MdR, MnR both ways over every caption and every unique video of the validation split.

The models only embed and score (``encode_video``, ``encode_text``, ``similarity``, ``logit_scale``);
the contrastive loss and the all-gather live here, as a loss module apart from the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..methods.common import autocast_context
from ..metrics import retrieval_metrics
from ..typed_config import ConfigError
from .distributed import DistInfo, all_gather_objects, sharded_loader
from .tasks import NonFiniteError, NoReadableVideoError, Task

if TYPE_CHECKING:
    from .config import TrainConfig


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow through this rank's slice.

    Without an initialised process group (or with one rank) ``x`` is returned unchanged. Every
    rank must pass a tensor of the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a square ``(B, B)`` logit matrix with matching pairs on the diagonal, both ways."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return getattr(model, "module", model)


def contrastive_loss(model: nn.Module, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching (video, caption) pairs, against every pair of every rank.

    ``model(video, ids, mask)`` runs through the DDP wrapper (if any); the gathered embeddings are
    scored by the model's own ``similarity`` and temperature.
    """
    video_emb, text_emb = model(video, ids, mask)  # (B, ...) each
    video_emb, text_emb, mask = (all_gather_with_grad(x) for x in (video_emb, text_emb, mask))
    net = unwrap(model)
    logits = net.similarity(video_emb, text_emb, mask) * net.logit_scale.exp()  # (world*B, world*B)
    return symmetric_infonce(logits.float())


@dataclass
class RetrievalEvalData:
    """What retrieval evaluation reads: this rank's shard of the unique videos, and every caption."""

    videos: DataLoader  # over ``captions.eval_videos``, one item per video, sharded across ranks
    captions: Any  # the ``CaptionDataset`` (token ids, masks, caption -> video)


@dataclass
class RetrievalResults:
    """Similarities of the captions with the videos that could be read, and the unreadable videos."""

    video_index: np.ndarray  # (Nv,) dataset index of each column of ``sim``, sorted
    text_index: np.ndarray  # (Nt,) caption of each row of ``sim`` (those of the videos in ``video_index``)
    sim: torch.Tensor  # (Nt, Nv) caption-video similarity, without temperature
    text_to_video: torch.Tensor  # (Nt,) column of each caption's video
    bad: list  # BadSample reports seen while evaluating


def load_text_tokenizer(path: str | None, vocab_size: int, model_name: str) -> Any:
    """The run's CLIP BPE tokenizer, checked against the text tower's vocabulary."""
    from ..backbones.tokenizer import load_tokenizer

    if path is None:
        raise ValueError("retrieval needs a tokenizer: set tokenizer to CLIP's tokenizer.json, a folder with "
                         "vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz")
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer {path} has {tokenizer.vocab_size} tokens but the text tower of "
                         f"{model_name} embeds only {vocab_size}")
    return tokenizer


class RetrievalTask(Task):
    """Text-video retrieval on caption annotations (``data.caption_format``) and a video folder."""

    name = "retrieval"
    metric = "t2v_r1"

    def check_config(self, cfg: TrainConfig, source: str) -> None:
        super().check_config(cfg, source)
        if cfg.eval.confusion_matrix:
            raise ConfigError(f"{source}: confusion_matrix: recognition only; {cfg.model.name!r} is a "
                              f"{self.name} preset")

    def build_dataset(self, cfg: TrainConfig, model_cfg: Any, train: bool, list_file: str | Path | None = None
                      ) -> Dataset:
        """A ``CaptionDataset`` of annotation ``list_file`` (default ``train_list`` / ``val_list``) read as
        ``caption_format`` (split ``train`` or ``val_split``), videos under ``data_root``.

        In training a bad video is replaced by another caption (``"skip"`` acts as ``"resample"``): the
        contrastive batch, gathered across ranks, must keep its size. Training does not flip clips
        (captions say "left" and "right").
        """
        from ..data import AugmentConfig, CaptionDataset, read_captions

        d = cfg.data
        path = list_file or (d.train_list if train else d.val_list)
        if path is None:
            raise ValueError(f"no {'train' if train else 'val'}_list given ({d.caption_format} captions)")
        split = read_captions(d.caption_format, path, "train" if train else d.val_split)
        policy = "resample" if train and d.bad_sample_policy == "skip" else d.bad_sample_policy
        augment = AugmentConfig(**d.augment)
        tokenizer = load_text_tokenizer(d.tokenizer, model_cfg.text.vocab_size, cfg.model.name)
        return CaptionDataset(
            split, d.data_root, tokenizer, num_frames=cfg.model.frames, image_size=cfg.model.image_size,
            text_length=model_cfg.text_length, train=train, bad_sample_policy=policy, seed=cfg.run.seed,
            decode_short_side=d.decode_short_side, mean=augment.mean, std=augment.std,
            test_position=cfg.eval.test_segment_position,
        )

    def make_loader(self, dataset: Any, cfg: TrainConfig, info: DistInfo, train: bool) -> DataLoader | Any:
        """Training: caption batches of exactly ``batch_size`` (``drop_last``). Evaluation: a
        ``RetrievalEvalData`` whose loader yields each unique video once."""
        from ..data import collate_captions

        o = cfg.optim
        if train:
            loader = sharded_loader(dataset, info, o.batch_size, cfg.data.num_workers, cfg.run.seed, True,
                                    collate_captions, drop_last=True)
            if len(loader) == 0:
                raise ValueError(f"{len(dataset)} training captions over {info.world_size} process(es) make "
                                 f"no full batch of {o.batch_size}; lower batch_size")
            return loader
        videos = sharded_loader(dataset.eval_videos, info, cfg.eval.eval_batch_size or o.batch_size,
                                cfg.data.num_workers, cfg.run.seed, False, collate_captions)
        return RetrievalEvalData(videos, dataset)

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device, cfg: TrainConfig | None = None
             ) -> tuple[torch.Tensor, int]:
        """Symmetric InfoNCE of the (video, caption) pairs, gathered across ranks."""
        video = batch["video"].to(device, non_blocking=True)  # (B, 3, T, H, W)
        ids, mask = batch["ids"].to(device), batch["mask"].to(device)  # (B, L) each
        return contrastive_loss(model, video, ids, mask), video.shape[0]

    def example_batch(self, model: nn.Module, video: torch.Tensor) -> dict[str, Any]:
        """``video (B, 3, T, H, W)`` with full-length captions ending in the EOT token."""
        net = unwrap(model)
        text, length, b = net.text.cfg, net.cfg.text_length, video.shape[0]
        eot = text.eot_token_id if text.eot_token_id is not None else text.vocab_size - 1
        ids = torch.randint(1, eot, (b, length), device=video.device)
        ids[:, -1] = eot
        return {"video": video, "ids": ids, "mask": torch.ones(b, length, dtype=torch.long, device=video.device)}

    def encode(self, model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
        return model.encode_video(clip)  # the cost of indexing one clip

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        data: RetrievalEvalData,
        cfg: TrainConfig,
        info: DistInfo,
        progress: bool = False,
    ) -> tuple[dict[str, Any], RetrievalResults]:
        """Encode this rank's videos and captions, gather the videos, score this rank's captions against
        all of them (``sim_chunk`` captions at a time), gather the rows and compute the metrics."""
        model.eval()
        device, amp = info.device, (cfg.optim.amp, getattr(torch, cfg.optim.amp_dtype))
        index, emb, bad = [], [], []
        batches = data.videos
        if progress and info.is_main:
            from tqdm import tqdm

            batches = tqdm(batches, desc="eval videos", unit="batch", dynamic_ncols=True)
        for batch in batches:
            bad.extend(batch["bad"])
            if batch["video"] is None:
                continue
            with autocast_context(device, *amp):
                emb.append(model.encode_video(batch["video"].to(device, non_blocking=True)).float().cpu())
            index.append(batch["video_index"].numpy())  # (B,)
        shards = all_gather_objects((index, emb, bad), info)
        all_index = np.concatenate([i for s in shards for i in s[0]] or [np.zeros(0, np.int64)])
        if all_index.size == 0:
            raise NoReadableVideoError([b for s in shards for b in s[2]])
        all_emb = torch.cat([e for s in shards for e in s[1]])  # (sum B, T, E) or (sum B, E)
        video_index, first = np.unique(all_index, return_index=True)  # drops the sampler's padding repeats
        video_emb = all_emb[torch.from_numpy(first)].to(device)  # (Nv, ...), in dataset order

        captions = data.captions
        text_rows = torch.arange(info.rank, len(captions), info.world_size)  # this rank's captions
        step = cfg.eval.eval_batch_size or cfg.optim.batch_size
        sims = []
        for part in text_rows.split(step):
            ids, mask = captions.ids[part].to(device), captions.mask[part].to(device)  # (b, L)
            with autocast_context(device, *amp):
                text_emb = model.encode_text(ids, mask).float()  # (b, L, E) or (b, E)
            sims.append(model.similarity(video_emb, text_emb, mask, chunk_size=cfg.eval.sim_chunk).float().cpu())
        local_sim = torch.cat(sims) if sims else torch.zeros(0, len(video_index))  # (n_rank, Nv)
        rows = all_gather_objects((text_rows, local_sim), info)
        sim = torch.empty(len(captions), len(video_index))
        for r, s in rows:
            sim[r] = s
        if not torch.isfinite(sim).all():
            raise NonFiniteError("non-finite similarities (NaN or inf): the model's weights have diverged")
        keep, target = captions.eval_targets(torch.from_numpy(video_index))
        results = RetrievalResults(video_index, np.flatnonzero(keep.numpy()), sim[keep], target,
                                   [b for s in shards for b in s[2]])
        metrics = retrieval_metrics(results.sim, target, dsl=cfg.eval.dsl)
        return {**metrics, "num_videos": len(video_index), "num_texts": int(keep.sum())}, results

    def summary(self, metrics: dict[str, Any], cfg: TrainConfig) -> str:
        return f"{metrics['num_texts']} captions, {metrics['num_videos']} videos"

    def describe(self, metrics: dict[str, Any]) -> str:
        return ", ".join(
            f"{d} R@1 {metrics[f'{d}_r1']:.2f} R@5 {metrics[f'{d}_r5']:.2f} R@10 {metrics[f'{d}_r10']:.2f} "
            f"MdR {metrics[f'{d}_medr']:.1f} MnR {metrics[f'{d}_meanr']:.1f}"
            for d in ("t2v", "v2t")
        )


RETRIEVAL = RetrievalTask()
