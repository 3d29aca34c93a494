"""Retrieval and recognition metrics against brute-force loop references, ties included."""

import statistics

import numpy as np
import pytest
import torch

from side4video.metrics import confusion_matrix, mean_class_accuracy, retrieval_metrics, topk_accuracy


def summarize(prefix: str, ranks: list[int]) -> dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(statistics.median(ranks))
    out[f"{prefix}_meanr"] = sum(ranks) / len(ranks)
    return out


def reference_retrieval(sim: list[list[float]], t2v: list[int], per_caption: bool = False) -> dict[str, float]:
    """Plain-loop ranks, ties against the model. v2t: candidates are caption groups (one per captioned
    video) scored by their best caption; v2c: the best caption of the video among all captions."""
    nt, nv = len(sim), len(sim[0])
    t2v_ranks = [sum(sim[i][j] >= sim[i][t2v[i]] for j in range(nv)) for i in range(nt)]
    groups = {v: [i for i in range(nt) if t2v[i] == v] for v in range(nv)}
    groups = {v: caps for v, caps in groups.items() if caps}
    v2t_ranks, v2c_ranks = [], []
    for v, captions in groups.items():
        own = max(sim[c][v] for c in captions)
        v2t_ranks.append(sum(max(sim[c][v] for c in caps) >= own for caps in groups.values()))
        v2c_ranks.append(min(sum(sim[k][v] >= sim[c][v] for k in range(nt)) for c in captions))
    out = {**summarize("t2v", t2v_ranks), **summarize("v2t", v2t_ranks)}
    return {**out, **summarize("v2c", v2c_ranks)} if per_caption else out


def test_retrieval_matches_loops_with_ties_and_several_captions():
    g = torch.Generator().manual_seed(0)
    nv, per_video = 13, 3
    t2v = torch.arange(nv).repeat_interleave(per_video)[: nv * per_video - 2]  # the last video has 1 caption
    sim = torch.randint(0, 6, (len(t2v), nv + 2), generator=g).float()  # many ties; 2 distractor videos
    got = retrieval_metrics(sim, t2v, per_caption=True)
    want = reference_retrieval(sim.tolist(), t2v.tolist(), per_caption=True)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert not any(k.startswith("dsl_") for k in got)


def test_video_to_text_ranks_caption_groups_not_captions():
    # 3 videos x 3 captions. Video 0 scores all captions of video 1 above its own best one: as a
    # group, video 1 is ahead and video 2 ties (rank 3); among captions, 4 are ahead or tied (rank 5).
    t2v = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    sim = torch.zeros(9, 3)
    sim[:, 0] = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.8, 0.7, 0.2, 0.2, 0.5])  # a tie with video 2's best
    sim[t2v == 1, 1] = torch.tensor([1.0, 0.9, 0.8])  # videos 1 and 2 rank their own best caption first
    sim[t2v == 2, 2] = torch.tensor([1.0, 0.9, 0.8])
    got = retrieval_metrics(sim, t2v, per_caption=True)
    assert (got["v2t_r1"], got["v2t_meanr"]) == pytest.approx((200 / 3, (3 + 1 + 1) / 3))  # tie: rank 3
    assert got["v2c_meanr"] == pytest.approx((5 + 1 + 1) / 3)  # 3 of video 1 + 1 tie of video 2 + itself
    assert got["v2t_r1"] == got["v2c_r1"]
    assert not any(k.startswith("v2c") for k in retrieval_metrics(sim, t2v))


def test_group_and_caption_conventions_differ_on_many_captions():
    g = torch.Generator().manual_seed(4)
    nv, per_video = 40, 20
    t2v = torch.arange(nv).repeat_interleave(per_video)
    sim = torch.randn(nv * per_video, nv, generator=g, dtype=torch.float64)
    sim[torch.arange(nv * per_video), t2v] += 1.0
    got = retrieval_metrics(sim, t2v, per_caption=True)
    want = reference_retrieval(sim.tolist(), t2v.tolist(), per_caption=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["v2t_meanr"] < got["v2c_meanr"]  # 20 captions per rival group vs 1


def test_numpy_input_and_random_scores():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(40, 20))
    t2v = rng.integers(0, 20, size=40)
    t2v[:20] = np.arange(20)
    got = retrieval_metrics(sim, t2v)
    for key, value in reference_retrieval(sim.tolist(), t2v.tolist()).items():
        assert got[key] == pytest.approx(value), key


def test_constant_matrix_scores_worst_and_perfect_diagonal_scores_best():
    n = 20
    worst = retrieval_metrics(torch.zeros(n, n), torch.arange(n))
    assert worst["t2v_r1"] == worst["t2v_r10"] == worst["v2t_r1"] == 0.0
    assert worst["t2v_medr"] == worst["t2v_meanr"] == worst["v2t_medr"] == n
    best = retrieval_metrics(torch.eye(n), torch.arange(n))
    assert best["t2v_r1"] == best["v2t_r1"] == 100.0
    assert best["t2v_medr"] == best["v2t_meanr"] == 1.0


def test_dsl_is_opt_in_reported_beside_plain_numbers_and_reweights():
    g = torch.Generator().manual_seed(2)
    sim = 0.1 * torch.rand(30, 30, generator=g, dtype=torch.float64)
    sim += 0.3 * torch.eye(30, dtype=torch.float64)  # true pairs score higher
    sim[:, 0] += 0.5  # a "hub" video that every text prefers: DSL should suppress it
    t2v = torch.arange(30)
    plain = retrieval_metrics(sim, t2v)
    both = retrieval_metrics(sim, t2v, dsl=True)
    assert {k: both[k] for k in plain} == plain
    for direction, dim in (("t2v", 0), ("v2t", 1)):
        reweighted = sim * torch.softmax(100 * sim, dim=dim)
        want = reference_retrieval(reweighted.tolist(), t2v.tolist())
        for stat in ("r1", "r5", "medr", "meanr"):
            assert both[f"dsl_{direction}_{stat}"] == pytest.approx(want[f"{direction}_{stat}"])
    assert plain["t2v_r1"] < 10.0
    assert both["dsl_t2v_r1"] == 100.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="indices"):
        retrieval_metrics(torch.zeros(3, 4), torch.tensor([0, 1, 4]))


def test_topk_mean_class_and_confusion_against_loops():
    g = torch.Generator().manual_seed(3)
    n, c = 64, 7
    logits = torch.randint(0, 4, (n, c), generator=g).float()  # ties
    labels = torch.randint(0, c, (n,), generator=g)
    labels[:c] = torch.arange(c)
    ranks = [sum(logits[i, j] >= logits[i, labels[i]] for j in range(c)) for i in range(n)]
    acc = topk_accuracy(logits, labels, ks=(1, 3))
    assert acc["top1"] == pytest.approx(100 * sum(r <= 1 for r in ranks) / n)
    assert acc["top3"] == pytest.approx(100 * sum(r <= 3 for r in ranks) / n)
    per_class = [np.mean([ranks[i] == 1 for i in range(n) if labels[i] == k]) for k in range(c)]
    assert mean_class_accuracy(logits, labels) == pytest.approx(100 * np.mean(per_class))
    cm = confusion_matrix(logits, labels)
    want = torch.zeros(c, c, dtype=torch.long)
    for i in range(n):
        want[labels[i], logits[i].argmax()] += 1
    assert torch.equal(cm, want)
    assert topk_accuracy(torch.zeros(5, 4), torch.arange(5) % 4)["top1"] == 0.0  # constant scores: all misses
