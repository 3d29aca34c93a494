"""Side4Video retrieval and frozen CLIP4Clip: CLIP equivalence at init, matching, gradients, learning, DDP."""

import dataclasses
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from side4video.backbones.text import TEXT_TOWERS, TextConfig
from side4video.backbones.vit import VisionConfig, build_vit
from side4video.engine.optim import param_groups
from side4video.engine.retrieval import RETRIEVAL, all_gather_with_grad, contrastive_loss, symmetric_infonce
from side4video.methods.retrieval import (
    Clip4Clip,
    Clip4ClipConfig,
    RetrievalConfig,
    Side4VideoRetrieval,
    TokenWiseMatching,
)
from side4video.models import build_model, create_model, get_preset, list_models, make_config

VIT = VisionConfig(width=64, layers=4, heads=2, mlp_dim=128, patch_size=8, image_size=16, output_dim=32)
TEXT = TextConfig(vocab_size=100, context_length=16, width=32, heads=2, layers=1, output_dim=32, mlp_dim=64)
FRAMES = 3


def side_model(**overrides) -> Side4VideoRetrieval:
    torch.manual_seed(0)
    cfg = RetrievalConfig(
        "tiny", num_frames=FRAMES, side_layers=2, side_width=64, text=TEXT, text_length=8, **overrides
    )
    return Side4VideoRetrieval(cfg, build_vit(VIT))


def clip4clip_model() -> Clip4Clip:
    torch.manual_seed(0)
    cfg = Clip4ClipConfig("tiny", num_frames=FRAMES, text=TEXT, text_length=8)
    return Clip4Clip(cfg, build_vit(VIT))


def batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, 3, FRAMES, 16, 16, generator=g)
    ids = torch.randint(1, 98, (b, 8), generator=g)
    lengths = torch.randint(3, 9, (b,), generator=g)
    mask = (torch.arange(8)[None] < lengths[:, None]).long()
    ids[:, 0] = 98
    ids[torch.arange(b), lengths - 1] = 99  # EOT, the largest id
    return video, ids * mask, mask


def test_zero_init_up_projection_gives_clip_frame_embeddings():
    model = side_model().eval()
    video, _, _ = batch()
    frames = video.transpose(1, 2).reshape(-1, 3, 16, 16)
    with torch.no_grad():
        want = model.backbone.encode_image(frames).view(4, FRAMES, -1)  # ln_post(CLS) @ proj per frame
        got = model.encode_video(video)
    assert got.shape == (4, FRAMES, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():
        model.up.weight.normal_()
        assert not torch.allclose(model.encode_video(video), want)


def reference_matching(text, mask, frames, w_text, w_frame, pads_score_zero=True):
    """DRL-style token-wise similarity by loops over texts, videos, tokens and frames. With
    ``pads_score_zero`` (the authors' code: similarities times the text mask) a padded position scores 0
    and takes part in each frame's max over tokens; otherwise it is left out."""
    out = torch.zeros(text.shape[0], frames.shape[0])
    for a in range(text.shape[0]):
        valid = [i for i in range(text.shape[1]) if mask[a, i]]
        wt = torch.softmax(w_text[a, valid], 0)
        for v in range(frames.shape[0]):
            cos = [[F.cosine_similarity(text[a, i], frames[v, j], dim=0) for j in range(frames.shape[1])]
                   for i in valid]
            t2v = sum(wt[k] * max(row) for k, row in enumerate(cos))
            wf = torch.softmax(w_frame[v], 0)
            pads = [torch.tensor(0.0)] if pads_score_zero and len(valid) < text.shape[1] else []
            v2t = sum(wf[j] * max([cos[k][j] for k in range(len(valid))] + pads) for j in range(frames.shape[1]))
            out[a, v] = (t2v + v2t) / 2
    return out


@pytest.mark.parametrize("pad_tokens", ["zero", "exclude"])
def test_token_wise_matching_equals_loops_and_ignores_padded_content(pad_tokens):
    torch.manual_seed(0)
    match = TokenWiseMatching(16, pad_tokens=pad_tokens)
    assert match.text_weight[0].out_features == 16  # hidden width E
    assert 0.017 < float(match.text_weight[0].weight.detach().std()) < 0.023  # N(0, 0.02), as released
    text, frames = torch.randn(3, 6, 16), torch.randn(5, 4, 16)
    frames[:, :, 0] += 3.0  # every frame far from every token: real similarities mostly negative
    text[:, :, 0] -= 3.0
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        got = match(text, mask, frames)
        want = reference_matching(text, mask, frames, match.text_weight(text).squeeze(-1),
                                  match.frame_weight(frames).squeeze(-1), pad_tokens == "zero")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        noisy = text.clone()
        noisy[~mask.bool()] = 100 * torch.randn(int((mask == 0).sum()), 16)
        torch.testing.assert_close(match(noisy, mask, frames), got, rtol=0, atol=0)
    other = reference_matching(text, mask, frames, match.text_weight(text).squeeze(-1),
                               match.frame_weight(frames).squeeze(-1), pad_tokens != "zero")
    assert not torch.allclose(got, other)  # the two conventions differ on padded captions
    assert torch.allclose(got[1], other[1])  # ... and agree on one without padding
    # "uniform" initialisation: plain means over tokens / frames at the start
    fresh = TokenWiseMatching(16, init="uniform", pad_tokens="exclude")
    sim = F.normalize(text, dim=-1)[0, :3] @ F.normalize(frames, dim=-1)[1].t()  # (tokens, frames)
    expected = 0.5 * (sim.amax(1).mean() + sim.amax(0).mean())
    torch.testing.assert_close(fresh(text, mask, frames)[0, 1], expected)


def test_loss_is_symmetric_infonce_of_scaled_similarity():
    model = side_model().eval()
    video, ids, mask = batch()
    with torch.no_grad():
        sim = model.similarity(model.encode_video(video), model.encode_text(ids, mask), mask)
        logits = sim * model.text.logit_scale.exp()
        labels = torch.arange(4)
        want = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        torch.testing.assert_close(contrastive_loss(model, video, ids, mask), want)
        video_emb, text_emb = model(video, ids, mask)  # the model itself only embeds
        torch.testing.assert_close(model.similarity(video_emb, text_emb, mask), sim)
        torch.testing.assert_close(symmetric_infonce(logits), want)
        assert sim.shape == (4, 4)
        torch.testing.assert_close(
            model.similarity(model.encode_video(video), model.encode_text(ids, mask), mask, chunk_size=3), sim
        )
    assert math.isclose(model.text.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)


@pytest.mark.parametrize("train_projection", [False, True])
def test_gradients_reach_side_network_and_text_but_not_the_frozen_vit(train_projection):
    model = side_model(train_projection=train_projection).train()
    video, ids, mask = batch()
    contrastive_loss(model, video, ids, mask).backward()
    # U_p starts at zero: only U_p itself is reached through it
    assert model.up.weight.grad.abs().sum() > 0
    assert model.side.stem.weight.grad is None or model.side.stem.weight.grad.abs().sum() == 0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.up.weight.normal_(std=0.1)
    contrastive_loss(model, video, ids, mask).backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    projection = ("backbone.ln_post", "backbone.proj") if train_projection else ()  # released: frozen (OpenAI)
    for name, p in model.named_parameters():
        if name.startswith("backbone.") and not name.startswith(projection):
            assert not p.requires_grad, name
            assert p.grad is None, name
        else:
            assert name in trained, name
    reached = ["side.stem.weight", "side.blocks.0.attn.in_proj_weight", "side.down.1.proj.weight", "up.weight",
               "post_bn.weight", "matching.text_weight.2.weight", "matching.frame_weight.2.weight",
               "text.token_embedding.weight", "text.text_projection", "text.logit_scale",
               "text.transformer.resblocks.0.attn.in_proj_weight"]
    reached += ["backbone.ln_post.weight", "backbone.proj"] if train_projection else []
    params = dict(model.named_parameters())
    for name in reached:
        assert params[name].grad.abs().sum() > 0, name


def test_side_output_is_batch_normalised_before_the_frame_mean():
    """The authors' retrieval model: ``side_post_bn`` (BN3d over B, T, H, W) on the side output, then the
    per-frame mean, ``U_p``, the [CLS] sum, ``ln_post`` and ``proj``."""
    model = side_model().train()
    with torch.no_grad():
        model.up.weight.normal_(std=0.1)
        model.post_bn.weight.uniform_(0.5, 1.5)
        model.post_bn.bias.normal_()
    video, _, _ = batch()
    with torch.no_grad():
        feats = model.backbone_features(video)
        side = model.side(video, feats)  # (B, T, N, d)
        mean, var = side.mean(dim=(0, 1, 2)), side.var(dim=(0, 1, 2), unbiased=False)
        normed = (side - mean) / torch.sqrt(var + model.post_bn.eps) * model.post_bn.weight + model.post_bn.bias
        cls = feats[-1][:, 0].view(4, FRAMES, -1)
        want = model.backbone.project(model.backbone.ln_post(model.up(normed.mean(dim=2)) + cls))
        torch.testing.assert_close(model.encode_video(video), want, rtol=1e-4, atol=1e-5)
    plain = side_model(post_bn=False)
    assert not any("post_bn" in n for n, _ in plain.named_parameters())


def test_param_groups_split_clip_parts_and_new_modules():
    model = side_model()
    groups = param_groups(model, 0.2, 1e-4, {"clip": 1e-7})
    by_id = {id(p): g for g in groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(by_id) == len(trainable) == sum(len(g["params"]) for g in groups)
    for name, p in trainable.items():
        clip_part = name.startswith(("text.", "backbone.ln_post", "backbone.proj"))
        assert by_id[id(p)]["lr"] == (1e-7 if clip_part else 1e-4), name
        if p.ndim < 2:
            assert by_id[id(p)]["weight_decay"] == 0.0, name
    torch.optim.Adam(groups, betas=(0.9, 0.98))  # accepted by a torch optimizer


def test_clip4clip_frozen_is_mean_of_normalised_clip_frames_and_trains_only_text():
    model = clip4clip_model().train()
    video, ids, mask = batch()
    frames = video.transpose(1, 2).reshape(-1, 3, 16, 16)
    with torch.no_grad():
        want = F.normalize(model.backbone.encode_image(frames).view(4, FRAMES, -1), dim=-1).mean(1)
        emb = model.encode_video(video)
        torch.testing.assert_close(emb, want)
        text = model.encode_text(ids, mask)
        cosine = F.cosine_similarity(text[:, None], emb[None], dim=-1)  # (texts, videos)
        torch.testing.assert_close(model.similarity(emb, text), cosine)
    contrastive_loss(model, video, ids, mask).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.text.parameters())
    assert {g["lr"] for g in param_groups(model, 0.0, 1.0, {"clip": 2.0})} == {2.0}
    assert not model.backbone.training


@pytest.mark.parametrize("build", [side_model, clip4clip_model])
def test_tiny_retrieval_model_learns_fixed_pairs(build):
    model = build().train()
    video, ids, mask = batch(b=8, seed=1)
    opt = torch.optim.Adam(param_groups(model, 0.0, 3e-3, {"clip": 3e-3}))
    losses = []
    for _ in range(30):
        loss = contrastive_loss(model, video, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_presets_configs_and_checkpoint_round_trip():
    names = [n for n in list_models() if get_preset(n).task is RETRIEVAL]
    assert {"side4video-retrieval-b32", "side4video-retrieval-b16", "side4video-retrieval-l14",
            "side4video-retrieval-e14", "side4video-retrieval-tiny", "clip4clip-frozen-b32",
            "clip4clip-frozen-b16", "clip4clip-frozen-l14", "clip4clip-frozen-tiny"} <= set(names)
    layers = {"b32": 12, "b16": 12, "l14": 24, "e14": 32}
    for key, n in layers.items():
        cfg = make_config(f"side4video-retrieval-{key}")
        assert (cfg.side_layers, cfg.side_width, cfg.num_frames, cfg.text_length) == (n, 320, 12, 32)
        assert cfg.text == TEXT_TOWERS[cfg.backbone]
    assert make_config("side4video-retrieval-e14").text.width == 1280
    assert make_config("clip4clip-frozen-l14").text.output_dim == 768
    model = create_model("side4video-retrieval-tiny", image_size=32)
    saved = {"model_name": "side4video-retrieval-tiny", "model_config": dataclasses.asdict(model.cfg),
             "model": model.state_dict()}
    rebuilt = build_model(saved["model_name"], saved["model_config"], image_size=32)
    rebuilt.load_state_dict(saved["model"])
    assert rebuilt.cfg == model.cfg
    narrow = dataclasses.replace(TEXT, output_dim=8)
    with pytest.raises(ValueError, match="embeds"):
        Side4VideoRetrieval(make_config("side4video-retrieval-tiny", text=narrow))


def _gather_worker(rank: int, world: int, init_file: str, results: dict) -> None:
    torch.set_num_threads(1)  # a forked child, as DataLoader workers are
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    full = torch.randn(world * 2, 5)
    local = full[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
    gathered = all_gather_with_grad(local)
    (gathered.sin() * torch.arange(gathered.numel()).view_as(gathered)).sum().backward()
    results[rank] = (gathered.detach().clone(), local.grad.clone())
    dist.destroy_process_group()


def test_all_gather_with_grad_two_processes():
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        mp.start_processes(_gather_worker, args=(world, os.path.join(tmp, "init"), results), nprocs=world,
                           start_method="fork")
        results = dict(results)
    torch.manual_seed(0)
    full = torch.randn(world * 2, 5).requires_grad_(True)
    (full.sin() * torch.arange(full.numel()).view_as(full)).sum().backward()
    for rank in range(world):
        gathered, grad = results[rank]
        torch.testing.assert_close(gathered, full.detach())
        torch.testing.assert_close(grad, full.grad[2 * rank : 2 * rank + 2])  # the local slice's gradient
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x  # no process group: unchanged
