"""What differs between tasks: the model's arguments, the datasets and loaders, the optimiser, the training
loss, the evaluation and the metric that picks the best checkpoint.

The training loop (``train.py``) asks ``get_task(get_preset(cfg.model).task)`` for these and stays the
same for every task: action recognition (``RecognitionTask``) and text-video retrieval (``RetrievalTask``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..metrics import retrieval_metrics
from ..models import create_model, make_config
from .config import TrainConfig
from .distributed import DistInfo, all_gather_objects
from .evaluate import Predictions, autocast_context, classification_metrics, gather_predictions


def sharded_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    info: DistInfo,
    train: bool,
    collate_fn: Callable[[list], dict[str, Any]],
    drop_last: bool = False,
) -> DataLoader:
    """Sharded over ranks by a ``DistributedSampler`` (also with one process: it shuffles with (seed, epoch)).

    ``drop_last`` drops each rank's last incomplete batch (the sampler itself pads to equal shards).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train, seed=cfg.seed, drop_last=False
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size),
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=info.device.type == "cuda",
    )


def mixup(video: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each clip with another of the batch: returns (mixed video, partner permutation, weight lambda)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(video.shape[0], device=video.device)
    return lam * video + (1.0 - lam) * video[perm], perm, lam


class RecognitionTask:
    """Action recognition: cross-entropy with label smoothing (and optional mixup), multi-view top-k."""

    name = "recognition"
    metric = "top1"  # validation metric of best.pt (higher is better)

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return create_model(
            cfg.model, num_classes=cfg.num_classes, num_frames=cfg.frames, pretrained=cfg.pretrained,
            image_size=cfg.image_size, **cfg.model_overrides,
        )

    def build_dataset(self, cfg: TrainConfig, train: bool, list_file: str | Path | None = None) -> Dataset:
        """``VideoClipDataset`` for training (augmented, repeated) or testing (crops x clips views)."""
        from ..data import AugmentConfig, VideoClipDataset

        list_file = list_file or (cfg.train_list if train else cfg.val_list)
        if list_file is None:
            raise ValueError(f"no {'train' if train else 'val'}_list given")
        common = dict(
            num_frames=cfg.frames, train=train, image_size=cfg.image_size, sampling=cfg.sampling,
            frame_interval=cfg.frame_interval, bad_sample_policy=cfg.bad_sample_policy,
            frames_template=cfg.frames_template, seed=cfg.seed, augment=AugmentConfig(**cfg.augment),
        )  # the augment config also holds the normalisation used at test time
        if train:
            return VideoClipDataset(list_file, cfg.data_root, repeated_aug=cfg.repeated_aug, **common)
        return VideoClipDataset(list_file, cfg.data_root, num_clips=cfg.test_clips, num_crops=cfg.test_crops,
                                test_resize=cfg.test_resize, **common)

    def make_loader(self, dataset: Dataset, cfg: TrainConfig, info: DistInfo, train: bool) -> DataLoader:
        from ..data import collate_clips

        return sharded_loader(dataset, cfg, info, train, collate_clips)

    def build_optimizer(self, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        from .optim import build_optimizer

        return build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)

    def loss(self, model: nn.Module, batch: dict[str, Any], cfg: TrainConfig, device: torch.device):
        """Mean loss over the batch's clips and the number of clips: ``video`` is ``(B, R, 3, T, H, W)``."""
        video = batch["video"].to(device, non_blocking=True).flatten(0, 1)  # (B*R, 3, T, H, W)
        labels = batch["view_labels"].to(device).flatten()  # (B*R,): a flip may swap a view's label
        if cfg.mixup_alpha > 0:
            video, perm, lam = mixup(video, cfg.mixup_alpha)
            logits = model(video).float()  # (B*R, C)
            loss = lam * F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing) + (
                1.0 - lam
            ) * F.cross_entropy(logits, labels[perm], label_smoothing=cfg.label_smoothing)
        else:
            logits = model(video).float()  # (B*R, C)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        return loss, video.shape[0]

    def evaluate(
        self, model: nn.Module, loader: DataLoader, cfg: TrainConfig, info: DistInfo, progress: bool = False
    ) -> tuple[dict[str, Any], Predictions]:
        preds = gather_predictions(
            model, loader, info, cfg.eval_chunk, amp=cfg.amp, amp_dtype=getattr(torch, cfg.amp_dtype),
            progress=progress,
        )
        return classification_metrics(preds.probs, preds.labels), preds

    def describe(self, metrics: dict[str, Any]) -> str:
        return f"top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}"


# ---- text-video retrieval ----------------------------------------------------------------------------


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


def load_text_tokenizer(cfg: TrainConfig, vocab_size: int) -> Any:
    """The run's CLIP BPE tokenizer (``cfg.tokenizer``), checked against the text tower's vocabulary."""
    from ..backbones.tokenizer import load_tokenizer

    if cfg.tokenizer is None:
        raise ValueError("retrieval needs a tokenizer: set tokenizer to CLIP's tokenizer.json, a folder with "
                         "vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz")
    tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer} has {tokenizer.vocab_size} tokens but the text tower of "
                         f"{cfg.model} embeds only {vocab_size}")
    return tokenizer


class RetrievalTask:
    """Text-video retrieval: symmetric InfoNCE over (video, caption) batches gathered across ranks, and
    R@1/5/10, MdR, MnR both ways over every caption and every unique video of the validation split."""

    name = "retrieval"
    metric = "t2v_r1"

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return create_model(cfg.model, num_frames=cfg.frames, pretrained=cfg.pretrained,
                            image_size=cfg.image_size, **cfg.model_overrides)

    def build_dataset(self, cfg: TrainConfig, train: bool, list_file: str | Path | None = None) -> Dataset:
        """A ``CaptionDataset`` of annotation ``list_file`` (default ``train_list`` / ``val_list``) read as
        ``caption_format`` (split ``train`` or ``val_split``), videos under ``data_root``.

        In training a bad video is replaced by another caption (``"skip"`` acts as ``"resample"``): the
        contrastive batch, gathered across ranks, must keep its size. Training does not flip clips
        (captions say "left" and "right").
        """
        from ..data import AugmentConfig
        from ..data.captions import CaptionDataset, read_captions

        path = list_file or (cfg.train_list if train else cfg.val_list)
        if path is None:
            raise ValueError(f"no {'train' if train else 'val'}_list given ({cfg.caption_format} captions)")
        split = read_captions(cfg.caption_format, path, "train" if train else cfg.val_split)
        model_cfg = make_config(cfg.model, num_frames=cfg.frames, **cfg.model_overrides)
        policy = "resample" if train and cfg.bad_sample_policy == "skip" else cfg.bad_sample_policy
        augment = AugmentConfig(**cfg.augment)
        return CaptionDataset(
            split, cfg.data_root, load_text_tokenizer(cfg, model_cfg.text.vocab_size), num_frames=cfg.frames,
            image_size=cfg.image_size, text_length=model_cfg.text_length, train=train,
            bad_sample_policy=policy, seed=cfg.seed, mean=augment.mean, std=augment.std,
        )

    def make_loader(self, dataset: Any, cfg: TrainConfig, info: DistInfo, train: bool) -> DataLoader | Any:
        """Training: caption batches of exactly ``batch_size`` (``drop_last``). Evaluation: a
        ``RetrievalEvalData`` whose loader yields each unique video once."""
        from ..data.captions import collate_captions

        if train:
            loader = sharded_loader(dataset, cfg, info, True, collate_captions, drop_last=True)
            if len(loader) == 0:
                raise ValueError(f"{len(dataset)} training captions over {info.world_size} process(es) make "
                                 f"no full batch of {cfg.batch_size}; lower batch_size")
            return loader
        videos = sharded_loader(dataset.eval_videos, cfg, info, False, collate_captions)
        return RetrievalEvalData(videos, dataset)

    def build_optimizer(self, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        """AdamW over ``methods.retrieval.param_groups``: ``lr`` for new modules, ``lr_clip`` for CLIP's."""
        from ..methods.retrieval import param_groups

        groups = param_groups(model, cfg.lr, cfg.lr_clip, cfg.weight_decay)
        if not groups:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        return torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps)

    def loss(self, model: nn.Module, batch: dict[str, Any], cfg: TrainConfig, device: torch.device):
        """Symmetric InfoNCE of the (video, caption) pairs (gathered across ranks inside the model)."""
        video = batch["video"].to(device, non_blocking=True)  # (B, 3, T, H, W)
        ids, mask = batch["ids"].to(device), batch["mask"].to(device)  # (B, L) each
        return model(video, ids, mask).float(), video.shape[0]

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
        device, amp = info.device, (cfg.amp, getattr(torch, cfg.amp_dtype))
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
            raise ValueError("no video of the validation set could be read")
        all_emb = torch.cat([e for s in shards for e in s[1]])  # (sum B, T, E) or (sum B, E)
        video_index, first = np.unique(all_index, return_index=True)  # drops the sampler's padding repeats
        video_emb = all_emb[torch.from_numpy(first)].to(device)  # (Nv, ...), in dataset order

        captions = data.captions
        text_rows = torch.arange(info.rank, len(captions), info.world_size)  # this rank's captions
        step = cfg.eval_batch_size or cfg.batch_size
        sims = []
        for part in text_rows.split(step):
            ids, mask = captions.ids[part].to(device), captions.mask[part].to(device)  # (b, L)
            with autocast_context(device, *amp):
                text_emb = model.encode_text(ids, mask).float()  # (b, L, E) or (b, E)
            sims.append(model.similarity(video_emb, text_emb, mask, chunk_size=cfg.sim_chunk).float().cpu())
        local_sim = torch.cat(sims) if sims else torch.zeros(0, len(video_index))  # (n_rank, Nv)
        rows = all_gather_objects((text_rows, local_sim), info)
        sim = torch.empty(len(captions), len(video_index))
        for r, s in rows:
            sim[r] = s
        keep, target = captions.eval_targets(torch.from_numpy(video_index))
        results = RetrievalResults(video_index, np.flatnonzero(keep.numpy()), sim[keep], target,
                                   [b for s in shards for b in s[2]])
        metrics = retrieval_metrics(results.sim, target, dsl=cfg.dsl)
        return {**metrics, "num_videos": len(video_index), "num_texts": int(keep.sum())}, results

    def describe(self, metrics: dict[str, Any]) -> str:
        return ", ".join(
            f"{d} R@1 {metrics[f'{d}_r1']:.2f} R@5 {metrics[f'{d}_r5']:.2f} R@10 {metrics[f'{d}_r10']:.2f} "
            f"MdR {metrics[f'{d}_medr']:.1f} MnR {metrics[f'{d}_meanr']:.1f}"
            for d in ("t2v", "v2t")
        )


TASKS: dict[str, type] = {"recognition": RecognitionTask, "retrieval": RetrievalTask}


def get_task(name: str) -> Any:
    if name not in TASKS:
        raise NotImplementedError(f"task {name!r} is not supported by the training engine yet; "
                                  f"supported: {sorted(TASKS)}")
    return TASKS[name]()
