"""Evaluation metrics: text-video retrieval recalls / ranks and recognition accuracies.

Ranks are counted so that ties go against the model: the rank of the true candidate is the
number of candidates scoring at least as high as it (a constant score matrix ranks every true
candidate last), never an order that depends on how a sort breaks ties.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x if dtype is None else x.to(dtype)


def rank_summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """R@1/5/10 (percent), median and mean rank of 1-based ``ranks``."""
    ranks = ranks.double()
    out = {f"{prefix}_r{k}": 100.0 * (ranks <= k).double().mean().item() for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = torch.quantile(ranks, 0.5).item()  # the mean of the two middle ranks if even
    out[f"{prefix}_meanr"] = ranks.mean().item()
    return out


def text_to_video_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """Rank of each caption's video among all videos: ``(num_texts,)``."""
    true = sim.gather(1, text_to_video[:, None])  # (Nt, 1)
    return (sim >= true).sum(dim=1)


def caption_group_scores(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """Score of each video's caption group for every video: ``(num_videos, num_videos)``, entry
    ``[g, v]`` = the best ``sim[c, v]`` over the captions ``c`` of video ``g`` (``-inf`` if ``g`` has none)."""
    num_videos = sim.shape[1]
    groups = torch.full((num_videos, num_videos), float("-inf"), dtype=sim.dtype)
    index = text_to_video[:, None].expand(-1, num_videos)  # (Nt, Nv): the group of each row of sim
    return groups.scatter_reduce(0, index, sim, reduce="amax")  # (Ng = Nv, Nv)


def video_to_text_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """Rank of each captioned video's own caption group among all caption groups: ``(num_captioned_videos,)``.

    The candidates of video->text are the caption groups, one per captioned video, each scored by its
    best caption (CLIP4Clip's ``tensor_video_to_text_sim``: a max over the caption axis):
    ``rank(v) = #{g : max_{c in C(g)} sim[c, v] >= max_{c in C(v)} sim[c, v]}``.
    """
    captioned = torch.zeros(sim.shape[1], dtype=torch.bool)
    captioned[text_to_video] = True
    groups = caption_group_scores(sim, text_to_video)[captioned][:, captioned]  # (Ng, Ng): [group, video]
    return (groups >= groups.diagonal()[None, :]).sum(dim=0)


def video_to_caption_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """Rank of each captioned video's best caption among all individual captions: ``(num_captioned_videos,)``.

    ``rank(v) = #{c' : sim[c', v] >= max_{c in C(v)} sim[c, v]}``: every caption is a candidate, so
    the other captions of the same video count against it. Equals ``video_to_text_ranks`` when every
    video has one caption; with several, the two agree on which videos rank first (same R@1) only.
    """
    true = sim.gather(1, text_to_video[:, None]).squeeze(1)  # (Nt,): each caption with its own video
    best = torch.full((sim.shape[1],), float("-inf"), dtype=sim.dtype)
    best = best.scatter_reduce(0, text_to_video, true, reduce="amax")  # (Nv,): best caption score per video
    captioned = torch.zeros(sim.shape[1], dtype=torch.bool)
    captioned[text_to_video] = True
    return (sim[:, captioned] >= best[captioned]).sum(dim=0)


def dual_softmax(sim: torch.Tensor, dim: int, temperature: float = 100.0) -> torch.Tensor:
    """DSL re-weighting: ``sim * softmax(temperature * sim, dim)`` (``dim=0`` for text->video,
    a prior over the texts competing for each video; ``dim=1`` for video->text)."""
    return sim * torch.softmax(temperature * sim, dim=dim)


def retrieval_metrics(
    sim: torch.Tensor | np.ndarray,
    text_to_video: torch.Tensor | np.ndarray,
    dsl: bool = False,
    dsl_temperature: float = 100.0,
    per_caption: bool = False,
) -> dict[str, float]:
    """Text->video and video->text R@1/5/10 (percent), MdR and MnR.

    ``sim``: ``(num_texts, num_videos)`` similarities; ``text_to_video``: ``(num_texts,)`` index of
    each caption's video (several captions may share a video). Videos without a caption only
    serve as distractors for text->video.

    * ``t2v_*``: each caption ranks all videos; ``rank = #{v' : sim[c, v'] >= sim[c, v(c)]}``.
    * ``v2t_*``: each captioned video ranks the caption groups, one per captioned video, each scored
      by its best caption (CLIP4Clip convention); see ``video_to_text_ranks``.
    * ``v2c_*`` (only with ``per_caption``): each captioned video's best caption ranked among all
      individual captions; see ``video_to_caption_ranks``.

    Ties count against the model (``>=`` above). With ``dsl`` the same numbers after dual-softmax
    re-weighting are added under keys prefixed ``dsl_``; the plain numbers are always returned.
    """
    sim = _as_tensor(sim, torch.float64)
    t2v = _as_tensor(text_to_video, torch.long)
    if sim.ndim != 2 or t2v.shape != (sim.shape[0],):
        raise ValueError(f"sim must be (num_texts, num_videos) and text_to_video (num_texts,); got "
                         f"{tuple(sim.shape)} and {tuple(t2v.shape)}")
    if t2v.numel() and not 0 <= int(t2v.min()) <= int(t2v.max()) < sim.shape[1]:
        raise ValueError(f"text_to_video indices must lie in [0, {sim.shape[1]})")

    def summaries(t2v_sim: torch.Tensor, v2t_sim: torch.Tensor, prefix: str) -> dict[str, float]:
        out = {
            **rank_summary(text_to_video_ranks(t2v_sim, t2v), f"{prefix}t2v"),
            **rank_summary(video_to_text_ranks(v2t_sim, t2v), f"{prefix}v2t"),
        }
        if per_caption:
            out.update(rank_summary(video_to_caption_ranks(v2t_sim, t2v), f"{prefix}v2c"))
        return out

    out = summaries(sim, sim, "")
    if dsl:
        out.update(summaries(dual_softmax(sim, 0, dsl_temperature), dual_softmax(sim, 1, dsl_temperature), "dsl_"))
    return out


# ------------------------------------------------------------------------------------------------
# Recognition


def class_ranks(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """1-based rank of the true class: the number of classes scoring at least as high ``(N,)``."""
    scores = _as_tensor(scores).float()
    labels = _as_tensor(labels, torch.long)
    return (scores >= scores.gather(1, labels[:, None])).sum(dim=1)


def topk_accuracy(
    logits_or_probs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracies in percent, keyed ``top1``, ``top5`` ... (ties count as misses)."""
    ranks = class_ranks(logits_or_probs, labels)  # (N,), at most C: a k beyond C counts every sample
    return {f"top{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}


def classification_metrics(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies, mean class accuracy (both in %) and
    ``num_samples``, with ties counted against the model (see :func:`class_ranks`)."""
    labels = _as_tensor(labels, torch.long)
    if labels.numel() == 0:
        raise ValueError("no samples to evaluate")
    return {**topk_accuracy(scores, labels, ks), "mean_class_acc": mean_class_accuracy(scores, labels),
            "num_samples": int(labels.numel())}


def mean_class_accuracy(
    logits_or_probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
) -> float:
    """Top-1 accuracy averaged over the classes present in ``labels``, in percent."""
    hits = (class_ranks(logits_or_probs, labels) == 1).double()
    labels = _as_tensor(labels, torch.long)
    classes = labels.unique()
    per_class = torch.zeros(int(labels.max()) + 1, dtype=torch.float64).index_add_(0, labels, hits)
    counts = torch.bincount(labels).double()
    return 100.0 * (per_class[classes] / counts[classes]).mean().item()


def confusion_matrix(
    preds_or_scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    num_classes: int | None = None,
) -> torch.Tensor:
    """``(C, C)`` counts, rows = true class, columns = predicted class (argmax of scores if 2-D)."""
    preds = _as_tensor(preds_or_scores)
    labels = _as_tensor(labels, torch.long)
    if num_classes is None:
        num_classes = preds.shape[1] if preds.ndim == 2 else int(max(preds.max(), labels.max())) + 1
    preds = preds.argmax(dim=1) if preds.ndim == 2 else preds.long()
    counts = torch.bincount(labels * num_classes + preds, minlength=num_classes**2)
    return counts.view(num_classes, num_classes)
