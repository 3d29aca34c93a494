"""ZeroI2V: STDHA, linear adapters, temporal embedding, exact re-parameterisation and merged export."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from helpers import fit_forward_vs_reversed
from side4video import create_model
from side4video.backbones.vit import Attention, VisionConfig, build_vit
from side4video.export import export_merged, load_exported
from side4video.methods.zeroi2v import (
    STDHA,
    LinearAdapter,
    TemporalEmbedding,
    ZeroI2V,
    ZeroI2VConfig,
    default_head_offsets,
)
from side4video.models import build_model

SIZE = 32  # tiny ViT, patch 16: a 2 x 2 grid
TWELVE_HEADS = VisionConfig(width=96, layers=2, heads=12, mlp_dim=192, patch_size=8, image_size=16, output_dim=32)


def clip(batch: int = 2, frames: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


def tiny(num_frames: int = 3, **overrides) -> ZeroI2V:
    torch.manual_seed(0)
    return create_model("zeroi2v-tiny", num_classes=4, num_frames=num_frames, image_size=SIZE, **overrides)


def adapter_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, LinearAdapter) for p in m.parameters())


def randomise(model: ZeroI2V) -> ZeroI2V:
    """Random adapters, temporal embedding, ln_post and head: nothing left at its identity init."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LinearAdapter):
                for p in m.parameters():
                    p.normal_(0, 0.05)
        model.backbone.embed_hook.embedding.normal_(0, 0.1)
        model.backbone.ln_post.weight.normal_(1, 0.1)
        model.backbone.ln_post.bias.normal_(0, 0.1)
        model.head.fc.weight.normal_(0, 0.1)
    return model


# ----------------------------------------------------------------------------- STDHA


def naive_stdha(attn: STDHA, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Loop over clips, frames and heads; head h at frame t attends with K/V of frame src(t, h)."""
    bt, n, d = x.shape
    hd = d // attn.heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)
    x = x.view(bt // frames, frames, n, d)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(frames):
            heads = []
            for h, dt in enumerate(attn.offsets):
                src = t + dt if 0 <= t + dt < frames else t
                rows = slice(h * hd, (h + 1) * hd)
                q = x[b, t] @ wq[rows].T + bq[rows]
                k = x[b, src] @ wk[rows].T + bk[rows]
                v = x[b, src] @ wv[rows].T + bv[rows]
                heads.append(torch.softmax(q @ k.T / math.sqrt(hd), dim=-1) @ v)
            out[b, t] = attn.out_proj(torch.cat(heads, dim=-1))
    return out.view(bt, n, d)


@pytest.mark.parametrize(("frames", "offsets"), [(4, (1, -1, 0, 0)), (5, (2, -3, 1, 0)), (1, (1, -1, 2, -2))])
def test_stdha_matches_naive_reference(frames, offsets):
    torch.manual_seed(0)
    attn = STDHA(16, 4, offsets)
    x = torch.randn(2 * frames, 5, 16)
    torch.testing.assert_close(attn(x, frames), naive_stdha(attn, x, frames), rtol=1e-5, atol=1e-5)


def test_stdha_reads_neighbour_frames_and_keeps_its_own_at_the_ends():
    frames, heads = 4, 4
    attn = STDHA(8, heads, (1, -1, 2))
    # every token of frame t carries the value t, in every head and channel
    kv = torch.arange(frames, dtype=torch.float32).repeat(2).view(2 * frames, 1, 1, 1).expand(-1, heads, 3, 2)
    shifted = attn.shift(kv, frames)[:, :, 0, 0].view(2, frames, heads)  # source frame per (clip, t, head)
    expected = torch.tensor([[1, 0, 2, 0], [2, 0, 3, 1], [3, 1, 2, 2], [3, 2, 3, 3]], dtype=torch.float32)
    assert torch.equal(shifted, expected.expand(2, -1, -1))


def test_stdha_adds_no_parameters_and_zero_offsets_are_plain_attention():
    torch.manual_seed(0)
    plain = Attention(16, 4)
    stdha = STDHA.from_attention(plain, (0, 0, 0, 0))
    assert stdha.state_dict().keys() == plain.state_dict().keys()
    assert sum(p.numel() for p in stdha.parameters()) == sum(p.numel() for p in plain.parameters())
    assert stdha.in_proj_weight is plain.in_proj_weight  # shares the pretrained weights
    x = torch.randn(6, 5, 16)
    assert torch.equal(stdha(x, 3), plain(x, 3))
    with pytest.raises(ValueError, match="5 STDHA head offsets"):
        STDHA(16, 4, (1, 1, 1, 1, 1))


def test_default_offsets_follow_paper_table6():
    assert default_head_offsets(12, 8) == (1, -1) + (0,) * 10
    assert default_head_offsets(16, 8) == (1, 1, -1, -1) + (0,) * 12
    assert default_head_offsets(12, 16) == (1, -1, 2) + (0,) * 9
    assert default_head_offsets(12, 16, "ssv2") == (1, -1, 2, -2) + (0,) * 8
    assert default_head_offsets(16, 32) == (1, 1, -1, -1, 2, -2, 3) + (0,) * 9
    assert default_head_offsets(12, 4) == default_head_offsets(12, 8)  # below the table: its 8-frame row
    assert default_head_offsets(12, 24) == default_head_offsets(12, 16)
    with pytest.raises(ValueError, match="head_offsets"):
        default_head_offsets(4, 8)
    with torch.device("meta"):
        assert create_model("zeroi2v-l14").head_offsets == (1, 1, -1, -1) + (0,) * 12
        assert create_model("zeroi2v-b16", num_frames=32).head_offsets == (1, -1, 2, -2, 3) + (0,) * 7


# ----------------------------------------------------------------------------- adapters and training


def test_temporal_embedding_adds_one_vector_per_frame():
    emb = TemporalEmbedding(3, 4)
    with torch.no_grad():
        emb.embedding.copy_(torch.arange(12.0).view(3, 4))
    x = torch.zeros(2 * 3, 5, 4)
    out = emb(x, 3).view(2, 3, 5, 4)
    assert torch.equal(out, emb.embedding[None, :, None].expand(2, 3, 5, 4))
    with pytest.raises(ValueError, match="3 frames"):
        emb(torch.zeros(4, 5, 4), 4)


def test_identity_at_init_equals_frozen_baseline():
    torch.manual_seed(0)
    baseline = create_model("frozen-meanp-tiny", num_classes=4, num_frames=3, image_size=SIZE).eval()
    cfg = ZeroI2VConfig("tiny", num_classes=4, num_frames=3, head_offsets=(0, 0, 0, 0))
    model = ZeroI2V(cfg, copy.deepcopy(baseline.backbone)).eval()
    video = clip()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(video), baseline.forward_features(video), rtol=0, atol=1e-6)
        shifted = ZeroI2V(dataclasses.replace(cfg, head_offsets=(1, -1)), copy.deepcopy(baseline.backbone)).eval()
        assert not torch.allclose(shifted.forward_features(video), baseline.forward_features(video), atol=1e-4)


def test_gradients_reach_adapters_embedding_ln_post_and_head_only():
    model = tiny()
    model(clip()).sum().backward()
    vit = model.backbone
    trainable = {id(p) for m in model.modules() if isinstance(m, LinearAdapter) for p in m.up.parameters()}
    trainable |= {id(p) for m in (vit.embed_hook, vit.ln_post, model.head) for p in m.parameters()}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
        elif ".down." not in name:  # down gets a gradient once up is non-zero
            assert not p.requires_grad, name
            assert p.grad is None, name
    randomise(model).zero_grad()
    model(clip()).sum().backward()
    for m in model.modules():
        if isinstance(m, LinearAdapter):
            assert m.down.weight.grad.abs().sum() > 0


def test_zeroi2v_learns_temporal_order():
    """The same frames forward and reversed: mean pooling alone cannot tell them apart."""
    model = tiny(dropout=0.0)
    assert fit_forward_vs_reversed(model, clip(batch=1)) < 0.3


# ----------------------------------------------------------------------------- re-parameterisation


@pytest.mark.parametrize(
    ("frames", "offsets", "scale"),
    [(1, (1, -1), 0.5), (3, (1, -1, 0, 2), 1.0), (4, (2, -1, -3, 1), 0.5), (8, None, 1.0)],
)
def test_reparameterisation_is_exact(frames, offsets, scale):
    torch.manual_seed(0)
    if offsets is None:  # paper Table 6 offsets on a 12-head ViT
        cfg = ZeroI2VConfig("tiny", num_classes=4, num_frames=frames, adapter_scale=scale)
        model = ZeroI2V(cfg, build_vit(TWELVE_HEADS))
        assert model.head_offsets == (1, -1) + (0,) * 10
        size = TWELVE_HEADS.image_size
    else:
        model = tiny(frames, head_offsets=offsets, adapter_scale=scale)
        size = SIZE
    model = randomise(model).eval()
    merged = model.reparameterize()
    assert isinstance(merged, ZeroI2V)
    assert merged.cfg.merged
    assert not merged.training
    assert not any(isinstance(m, LinearAdapter) for m in merged.modules())
    assert merged.head_offsets == model.head_offsets
    count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in merged.parameters()) == count - adapter_params(model)
    video = clip(frames=frames, size=size)
    with torch.no_grad():
        assert (merged.forward_features(video) - model.forward_features(video)).abs().max() <= 1e-5
        assert (merged(video) - model(video)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="already merged"):
        merged.reparameterize()


def test_merged_model_rebuilds_from_name_and_config():
    model = randomise(tiny()).eval()
    merged = model.reparameterize()
    rebuilt = build_model("zeroi2v-tiny", dataclasses.asdict(merged.cfg), image_size=SIZE)
    rebuilt.load_state_dict(merged.state_dict(), strict=True)
    video = clip()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(video), model(video), rtol=0, atol=1e-5)
    trainable = {n for n, p in rebuilt.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in merged.named_parameters() if p.requires_grad}
    assert all(n.startswith(("backbone.embed_hook", "backbone.ln_post", "head")) for n in trainable)


def test_parameter_counts_on_meta():
    with torch.device("meta"):
        model = create_model("zeroi2v-b16")
        merged = model.reparameterize()
    adapters = adapter_params(model)
    assert adapters == 4 * 12 * 295_872
    assert abs(adapters - 14.2e6) <= 0.01 * 14.2e6
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in model.parameters()) - adapters


# ----------------------------------------------------------------------------- export


def save_checkpoint(path, model: ZeroI2V, name: str = "zeroi2v-tiny") -> None:
    torch.save({"model_name": name, "model_config": dataclasses.asdict(model.cfg), "model": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 7}, path)


def test_export_writes_a_verified_merged_model_that_loads_back(tmp_path):
    model = randomise(tiny(head_offsets=(1, -1, 2))).eval()
    save_checkpoint(tmp_path / "last.pt", model)
    out = export_merged(tmp_path / "last.pt", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "zeroi2v-tiny"
    assert config["num_classes"] == 4
    assert config["image_size"] == SIZE
    assert config["model_config"]["merged"]
    assert config["merge_max_abs_diff"] <= 1e-5
    loaded = load_exported(out)
    assert isinstance(loaded, ZeroI2V)
    assert loaded.cfg.merged
    assert loaded.head_offsets == model.head_offsets
    assert not loaded.training
    assert adapter_params(loaded) == 0
    video = clip()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=1e-5)


def test_export_of_a_trainable_only_checkpoint_takes_frozen_weights_from_pretrained(tmp_path):
    torch.manual_seed(0)
    vit = build_vit("tiny", image_size=SIZE)
    torch.save(vit.state_dict(), tmp_path / "clip.pt")
    model = randomise(ZeroI2V(ZeroI2VConfig("tiny", num_classes=4, num_frames=3, head_offsets=(1, -1)),
                              copy.deepcopy(vit))).eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    ckpt = {"model_name": "zeroi2v-tiny", "model_config": dataclasses.asdict(model.cfg),
            "model": {k: v for k, v in model.state_dict().items() if k in trainable},
            "train_config": {"pretrained": str(tmp_path / "clip.pt"), "image_size": SIZE}}
    torch.save(ckpt, tmp_path / "last.pt")
    out = export_merged(tmp_path / "last.pt", tmp_path / "export")
    video = clip()
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out)(video), model(video), rtol=0, atol=1e-5)
    del ckpt["train_config"]
    torch.save(ckpt, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="no pretrained backbone"):
        export_merged(tmp_path / "bare.pt", tmp_path / "export2")


def test_export_refuses_a_merge_that_fails_the_check(tmp_path, monkeypatch):
    model = randomise(tiny())
    save_checkpoint(tmp_path / "last.pt", model)
    merge = ZeroI2V.reparameterize

    def corrupted(self):
        merged = merge(self)
        with torch.no_grad():
            merged.backbone.blocks[1].mlp.c_fc.bias[0] += 1e-2
        return merged

    monkeypatch.setattr(ZeroI2V, "reparameterize", corrupted)
    with pytest.raises(ValueError, match=r"differs from the unmerged model by \d"):
        export_merged(tmp_path / "last.pt", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_rejects_models_without_a_merge(tmp_path):
    torch.manual_seed(0)
    probe = create_model("frozen-meanp-tiny", num_classes=4, num_frames=3, image_size=SIZE)
    save_checkpoint(tmp_path / "probe.pt", probe, name="frozen-meanp-tiny")
    with pytest.raises(ValueError, match="no adapters to merge"):
        export_merged(tmp_path / "probe.pt", tmp_path / "export")
    torch.save({"model": probe.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="model_name"):
        export_merged(tmp_path / "bare.pt", tmp_path / "export")
