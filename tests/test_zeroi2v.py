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
    released_shift_groups,
)
from side4video.models import build_model

SIZE = 32  # tiny ViT, patch 16: a 2 x 2 grid
TWELVE_HEADS = VisionConfig(width=96, layers=2, heads=12, mlp_dim=192, patch_size=8, image_size=16, output_dim=32)


def clip(batch: int = 2, frames: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size)


def tiny(num_frames: int = 3, **overrides) -> ZeroI2V:
    torch.manual_seed(0)
    if "head_offsets" in overrides:
        overrides["shift_groups"] = None
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
    """Loops over clips, frames, channels and heads: K/V channel c at frame t come from frame src(t, c)."""
    bt, n, d = x.shape
    hd = d // attn.heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)
    offsets = [o for o, c in attn.groups for _ in range(c)] + [0] * (d - sum(c for _, c in attn.groups))
    x = x.view(bt // frames, frames, n, d)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        k_all, v_all = x[b] @ wk.T + bk, x[b] @ wv.T + bv  # (T, N, D)
        for t in range(frames):
            k, v = torch.empty(n, d), torch.empty(n, d)
            for c, dt in enumerate(offsets):
                src = t + dt if 0 <= t + dt < frames else t
                k[:, c], v[:, c] = k_all[src, :, c], v_all[src, :, c]
            q = x[b, t] @ wq.T + bq
            heads = []
            for h in range(attn.heads):
                rows = slice(h * hd, (h + 1) * hd)
                heads.append(torch.softmax(q[:, rows] @ k[:, rows].T / math.sqrt(hd), dim=-1) @ v[:, rows])
            out[b, t] = attn.out_proj(torch.cat(heads, dim=-1))
    return out.view(bt, n, d)


@pytest.mark.parametrize(
    ("frames", "groups"),
    [(4, ((-1, 4), (1, 4))), (5, ((2, 3), (-3, 6), (1, 2))), (1, ((1, 8), (-1, 8))), (4, ((-4, 16),))],
)
def test_stdha_matches_naive_reference(frames, groups):
    torch.manual_seed(0)
    attn = STDHA(16, 4, groups)
    x = torch.randn(2 * frames, 5, 16)
    torch.testing.assert_close(attn(x, frames), naive_stdha(attn, x, frames), rtol=1e-5, atol=1e-5)


def test_stdha_shifts_channel_groups_and_keeps_own_frames_at_the_ends():
    frames, width = 4, 8
    attn = STDHA(width, 2, ((-1, 3), (1, 2), (2, 1)))  # groups need not align with heads (4 channels each)
    # every K/V channel of frame t carries the value t; Q carries -1
    qkv = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1, 1).repeat(2, 1, 5, 3, width)
    qkv[:, :, :, 0] = -1
    shifted = attn.shift(qkv)
    assert torch.equal(shifted[:, :, :, 0], qkv[:, :, :, 0])  # queries never move
    assert torch.equal(shifted[:, :, :, 1], shifted[:, :, :, 2])  # keys and values move alike
    source = shifted[0, :, 0, 1]  # (T, C): the frame each channel reads
    expected = torch.tensor([[0, 0, 0, 1, 1, 2, 0, 0], [0, 0, 0, 2, 2, 3, 1, 1],
                             [1, 1, 1, 3, 3, 2, 2, 2], [2, 2, 2, 3, 3, 3, 3, 3]], dtype=torch.float32)
    assert torch.equal(source, expected)


def test_stdha_adds_no_parameters_and_no_groups_are_plain_attention():
    torch.manual_seed(0)
    plain = Attention(16, 4)
    stdha = STDHA.from_attention(plain, ())
    assert stdha.state_dict().keys() == plain.state_dict().keys()
    assert sum(p.numel() for p in stdha.parameters()) == sum(p.numel() for p in plain.parameters())
    assert stdha.in_proj_weight is plain.in_proj_weight  # shares the pretrained weights
    x = torch.randn(6, 5, 16)
    torch.testing.assert_close(stdha(x, 3), plain(x, 3), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cover 20 channels of 16"):
        STDHA(16, 4, ((1, 12), (-1, 8)))


def test_released_channel_patterns():
    # released stdha_cfg: first C/shift_div channels read t-1, the next t+1, then the long shifts
    assert released_shift_groups(768, 12) == ((-1, 64), (1, 64))
    assert released_shift_groups(1024, 8, long_shift_div=8) == ((-1, 128), (1, 128), (-2, 128))
    assert released_shift_groups(768, 12, 12, long_shift_right=True) == ((-1, 64), (1, 64), (-2, 64), (2, 64))
    long = released_shift_groups(1024, 8, shifts=((2, 16, True), (3, 16, False), (4, -1, False)))
    assert long == ((-1, 128), (1, 128), (-2, 64), (2, 64), (-3, 64))


def test_default_offsets_follow_the_released_configs_then_paper_table6():
    assert default_head_offsets(12, 8) == (-1, 1) + (0,) * 10
    assert default_head_offsets(16, 8) == (-1, -1, 1, 1) + (0,) * 12
    assert default_head_offsets(16, 32) == (-1, -1, 1, 1, -2, -2) + (0,) * 10  # CLIP-L_k400_32x4x1
    assert default_head_offsets(16, 32, "ssv2") == (-1, -1, 1, 1, -2, 2, -3) + (0,) * 9  # CLIP-L_sthv2_u32
    assert default_head_offsets(12, 16) == (-1, 1, -2) + (0,) * 9  # no released config: Table 6, released sign
    assert default_head_offsets(12, 4) == default_head_offsets(12, 8)  # below the table: its 8-frame row
    with pytest.raises(ValueError, match="head_offsets"):
        default_head_offsets(4, 8)
    with torch.device("meta"):
        assert create_model("zeroi2v-l14").shift_groups == ((-1, 64),) * 2 + ((1, 64),) * 2 + ((0, 64),) * 12
        assert create_model("zeroi2v-b16", num_frames=32).shift_groups[:5] == (
            (-1, 64), (1, 64), (-2, 64), (2, 64), (-3, 64))


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
    model = tiny(dropout=0.0, adapter_dropout=0.0)
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
        assert model.shift_groups == ((-1, 8), (1, 8)) + ((0, 8),) * 10
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
    assert merged.shift_groups == model.shift_groups
    count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in merged.parameters()) == count - adapter_params(model)
    video = clip(frames=frames, size=size)
    with torch.no_grad():
        assert (merged.forward_features(video) - model.forward_features(video)).abs().max() <= 1e-5
        assert (merged(video) - model(video)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="already merged"):
        merged.reparameterize()


def test_reparameterisation_is_exact_for_qkv_adapters_three_adapters_and_any_channel_groups():
    """The paper's 6-adapter variant (separate q/k/v adapters) and num_tadapter=1, with groups across heads."""
    for overrides in ({"qkv_adapters": True}, {"adapter_points": ("attn_in", "attn_out", "mlp_in")}):
        model = tiny(4, shift_groups=((-1, 40), (1, 40), (-2, 24), (3, 8)), adapter_scale=0.5, **overrides)
        model = randomise(model).eval()
        merged = model.reparameterize()
        assert not any(isinstance(m, LinearAdapter) for m in merged.modules())
        video = clip(frames=4)
        with torch.no_grad():
            assert (merged(video) - model(video)).abs().max() <= 1e-5


def test_adapter_dropout_between_down_and_up_in_training_only():
    """Released adapters: ``x + s * up(dropout_0.1(down(x)))``; at inference the adapter is affine (mergeable)."""
    model = randomise(tiny())
    adapter = model.backbone.blocks[0].attn_in
    assert adapter.dropout.p == 0.1  # the preset default, as released
    x = torch.randn(6, 5, adapter.down.in_features)
    torch.manual_seed(1)
    got = adapter.train()(x)
    torch.manual_seed(1)
    want = x + adapter.scale * adapter.up(torch.nn.functional.dropout(adapter.down(x), 0.1, training=True))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, x + adapter.scale * adapter.up(adapter.down(x)))
    wa, ba = adapter.affine()
    torch.testing.assert_close(adapter.eval()(x).double(), x.double() @ wa.T + ba, atol=1e-5, rtol=1e-5)
    assert tiny(adapter_dropout=0.0).backbone.blocks[0].mlp_out.dropout.p == 0.0


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
    assert loaded.shift_groups == model.shift_groups
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
