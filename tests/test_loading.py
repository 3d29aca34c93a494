"""Loading CLIP / EVA-CLIP image towers: equivalence with transformers, every format's round trip, errors."""

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from side4video.backbones.loading import (
    CheckpointError,
    convert_state_dict,
    detect_layout,
    load_backbone,
    read_state_dict,
    vision_config_from_state_dict,
)
from side4video.backbones.vit import BACKBONES, VisionConfig, VisionTransformer, resize_pos_embed

StateDict = dict[str, torch.Tensor]

# OpenAI-style tower: 128 wide so that OpenAI's rule (width // 64) gives its 2 heads.
OPENAI_CFG = VisionConfig(
    width=128, layers=2, heads=2, mlp_dim=256, patch_size=8, image_size=32, output_dim=32
)
# EVA-style tower: post-norm, GELU, biased patch embedding and head, no ln_pre.
EVA_CFG = VisionConfig(
    width=128, layers=2, heads=2, mlp_dim=192, patch_size=8, image_size=32, output_dim=24,
    post_norm=True, act="gelu", ln_eps=1e-6, patch_bias=True, ln_pre=False, proj_bias=True,
)
HF_VISION = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
    patch_size=8, image_size=32,
)
HF_TEXT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
    max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2,
)


def randomized(cfg: VisionConfig) -> VisionTransformer:
    model = VisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms and biases too, so no wrongly placed term hides
    return model


def perturb(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# --- writers: our weights in each published layout ----------------------------------------------

TEXT_KEYS = {  # an OpenAI CLIP's text tower keys, which must be ignored (some share names with the ViT)
    "positional_embedding": (16, 32),
    "token_embedding.weight": (64, 32),
    "transformer.resblocks.0.attn.in_proj_weight": (96, 32),
    "ln_final.weight": (32,),
    "text_projection": (32, 32),
    "logit_scale": (),
}


def to_openai(sd: StateDict) -> StateDict:
    text = {k: torch.randn(shape) for k, shape in TEXT_KEYS.items()}
    return {**{f"visual.{k}": v for k, v in sd.items()}, **text}


def to_hf(sd: StateDict) -> StateDict:
    out = {
        "vision_model.embeddings.class_embedding": sd["class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["ln_post.bias"],
        "visual_projection.weight": sd["proj"].t().contiguous(),
    }
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        ours, theirs = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", sd[f"{ours}attn.in_proj_{kind}"].chunk(3), strict=True):
                out[f"{theirs}self_attn.{name}_proj.{kind}"] = part.contiguous()
            for a, b in names.items():
                out[f"{theirs}{b}.{kind}"] = sd[f"{ours}{a}.{kind}"]
    return out


def to_eva(sd: StateDict) -> StateDict:
    """EVA-CLIP layout; the key bias is dropped, as EVA-CLIP has none."""
    out = {
        "visual.patch_embed.proj.weight": sd["conv1.weight"],
        "visual.patch_embed.proj.bias": sd["conv1.bias"],
        "visual.cls_token": sd["class_embedding"].reshape(1, 1, -1),
        "visual.pos_embed": sd["positional_embedding"].unsqueeze(0),
        "visual.norm.weight": sd["ln_post.weight"],
        "visual.norm.bias": sd["ln_post.bias"],
        "visual.head.weight": sd["proj"].t().contiguous(),
        "visual.head.bias": sd["proj_bias"],
        "text.token_embedding.weight": torch.randn(64, 32),
        "logit_scale": torch.tensor(4.6),
    }
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
             "mlp.c_proj": "mlp.fc2"}
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        ours, theirs = f"transformer.resblocks.{i}.", f"visual.blocks.{i}."
        out[f"{theirs}attn.qkv.weight"] = sd[f"{ours}attn.in_proj_weight"]
        q, _, v = sd[f"{ours}attn.in_proj_bias"].chunk(3)
        out[f"{theirs}attn.q_bias"], out[f"{theirs}attn.v_bias"] = q.contiguous(), v.contiguous()
        for kind in ("weight", "bias"):
            for a, b in names.items():
                out[f"{theirs}{b}.{kind}"] = sd[f"{ours}{a}.{kind}"]
    return out


def hf_vision_model(model: VisionTransformer) -> CLIPVisionModelWithProjection:
    c = model.cfg
    config = CLIPVisionConfig(
        hidden_size=c.width, num_hidden_layers=c.layers, num_attention_heads=c.heads,
        intermediate_size=c.mlp_dim, patch_size=c.patch_size, image_size=c.image_size,
        projection_dim=c.output_dim,
    )
    hf = CLIPVisionModelWithProjection(config)
    hf.load_state_dict(to_hf(model.state_dict()))  # strict: our writer produces exactly HF's keys
    return hf.eval()


class ClipLike(nn.Module):
    """A whole-CLIP stand-in with a ``visual`` tower and text parameters, for TorchScript archives."""

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual
        self.token_embedding = nn.Embedding(64, 32)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images) * self.logit_scale.exp()


def save_pt(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def save_st(sd: StateDict, path: Path) -> Path:
    save_file(sd, path)
    return path


def write_torchscript(model: VisionTransformer, path: Path) -> Path:
    images = torch.randn(1, 3, model.cfg.image_size, model.cfg.image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of torch.jit, tracer notes on shape checks
        traced = torch.jit.trace(ClipLike(model), images, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def write_open_clip(sd: StateDict, path: Path) -> Path:
    wrapped = {f"module.{k}": v for k, v in to_openai(sd).items()}
    return save_pt({"epoch": 3, "name": "run", "state_dict": wrapped}, path)


def write_hf(model: VisionTransformer, path: Path, shards: bool = False) -> Path:
    hf_vision_model(model).save_pretrained(path, max_shard_size="100KB" if shards else "50GB")
    return path


WRITERS: dict[str, tuple[VisionConfig, Callable[[VisionTransformer, Path], Path]]] = {
    "openai_pt": (OPENAI_CFG, lambda m, d: save_pt(to_openai(m.state_dict()), d / "a.pt")),
    "openai_safetensors": (OPENAI_CFG, lambda m, d: save_st(to_openai(m.state_dict()), d / "a.safetensors")),
    "torchscript": (OPENAI_CFG, lambda m, d: write_torchscript(m, d / "ViT-B-16.pt")),
    "open_clip": (OPENAI_CFG, lambda m, d: write_open_clip(m.state_dict(), d / "open_clip.pt")),
    "hf_dir": (OPENAI_CFG, lambda m, d: write_hf(m, d / "hf")),
    "hf_sharded": (OPENAI_CFG, lambda m, d: write_hf(m, d / "hf", shards=True)),
    "hf_file": (OPENAI_CFG, lambda m, d: write_hf(m, d / "hf") / "model.safetensors"),
    "native_pt": (OPENAI_CFG, lambda m, d: save_pt(m.state_dict(), d / "vit.pt")),
    "eva_pt": (EVA_CFG, lambda m, d: save_pt(to_eva(m.state_dict()), d / "eva.pt")),
    "eva_safetensors": (EVA_CFG, lambda m, d: save_st(to_eva(m.state_dict()), d / "eva.safetensors")),
}


@pytest.fixture(scope="module")
def openai_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[VisionTransformer, Path]:
    model = randomized(OPENAI_CFG)
    path = tmp_path_factory.mktemp("openai") / "clip.pt"
    torch.save(to_openai(model.state_dict()), path)
    return model, path


# --- equivalence with transformers ----------------------------------------------------------------


def image_features(clip: CLIPModel, images: torch.Tensor) -> torch.Tensor:
    out = clip.get_image_features(pixel_values=images)  # a tensor in transformers 4.x, an output in 5.x
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize(("act", "eps"), [("quick_gelu", 1e-5), ("gelu", 1e-6)])
def test_matches_transformers_clip_model(tmp_path: Path, act: str, eps: float) -> None:
    config = CLIPConfig(
        vision_config={**HF_VISION, "hidden_act": act, "layer_norm_eps": eps},
        text_config=HF_TEXT,
        projection_dim=32,
    )
    clip = perturb(CLIPModel(config))
    clip.save_pretrained(tmp_path)
    model = load_backbone(tmp_path).eval()
    assert (model.cfg.heads, model.cfg.act, model.cfg.ln_eps, model.cfg.output_dim) == (4, act, eps, 32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = image_features(clip, images)
        hidden = clip.vision_model(pixel_values=images, output_hidden_states=True).hidden_states[1:]
        tokens = model.forward_intermediates(images)
        emb = model.encode_image(images)
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-4)
    assert len(tokens) == len(hidden) == 3
    for ours, theirs in zip(tokens, hidden, strict=True):  # block outputs, before post_layernorm
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_matches_transformers_vision_model_without_projection(tmp_path: Path) -> None:
    hf = perturb(CLIPVisionModel(CLIPVisionConfig(**HF_VISION)))
    hf.save_pretrained(tmp_path)
    model = load_backbone(tmp_path).eval()
    assert model.cfg.output_dim is None
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=images).pooler_output  # post_layernorm of [CLS]
        torch.testing.assert_close(model.encode_image(images), expected, atol=1e-4, rtol=1e-4)


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    cfg, write = WRITERS[fmt]
    model = randomized(cfg)
    path = write(model, tmp_path)
    loaded = load_backbone(path, post_norm=cfg.post_norm).eval()
    assert loaded.cfg == cfg
    theirs = loaded.state_dict()
    ours = model.state_dict()
    if fmt.startswith("eva"):  # no key bias in EVA-CLIP: zeros, which leave the output unchanged
        d = cfg.width
        for i in range(cfg.layers):
            key = f"transformer.resblocks.{i}.attn.in_proj_bias"
            assert torch.count_nonzero(theirs[key][d : 2 * d]) == 0
            ours[key] = torch.cat([ours[key][:d], torch.zeros(d), ours[key][2 * d :]])
    assert theirs.keys() == ours.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], atol=0, rtol=0, msg=k)
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        expected = model.encode_image(images)
        torch.testing.assert_close(loaded.encode_image(images), expected, atol=1e-5, rtol=1e-5)


def test_our_hf_writer_matches_transformers(tmp_path: Path) -> None:
    model = randomized(OPENAI_CFG)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = hf_vision_model(model)(pixel_values=images).image_embeds
        torch.testing.assert_close(model.encode_image(images), theirs, atol=1e-4, rtol=1e-4)


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    model = randomized(OPENAI_CFG)
    half = {k: v.half() for k, v in to_openai(model.state_dict()).items()}
    torch.save(half, tmp_path / "fp16.pt")
    loaded = load_backbone(tmp_path / "fp16.pt")
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, model.state_dict()[k].half().float(), atol=0, rtol=0)


def test_read_and_convert_are_separate_steps(openai_ckpt: tuple[VisionTransformer, Path]) -> None:
    model, path = openai_ckpt
    sd = read_state_dict(path)
    assert "logit_scale" in sd
    assert detect_layout(sd) == "openai"
    assert convert_state_dict(sd).keys() == model.state_dict().keys()
    assert vision_config_from_state_dict(sd) == OPENAI_CFG


# --- architecture inference on the real presets (meta tensors: shapes only) ---------------------


def hf_config_of(cfg: VisionConfig) -> dict:
    return dict(
        hidden_size=cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim, patch_size=cfg.patch_size, image_size=cfg.image_size,
        hidden_act=cfg.act, layer_norm_eps=cfg.ln_eps,
    )


CLIP_PRESETS = [n for n, c in sorted(BACKBONES.items()) if not c.post_norm]
INFERENCE_CASES = [(n, "openai") for n in CLIP_PRESETS] + [(n, "hf") for n in CLIP_PRESETS]
INFERENCE_CASES += [(n, "native") for n in sorted(BACKBONES)] + [("EVA02-E-14", "eva")]


@pytest.mark.parametrize(("name", "layout"), INFERENCE_CASES)
def test_config_inferred_for_every_preset(name: str, layout: str) -> None:
    cfg = BACKBONES[name]
    with torch.device("meta"):
        sd = VisionTransformer(cfg).state_dict()
    hf_config = None
    if layout == "openai":
        sd = to_openai(sd)
    elif layout == "hf":
        sd, hf_config = to_hf(sd), hf_config_of(cfg)
    elif layout == "eva":
        sd = to_eva(sd)
    assert detect_layout(sd) == layout
    # A bare state dict carries no activation / eps: those of the OpenAI family are assumed.
    heads = cfg.heads if layout == "native" and cfg.post_norm else None
    inferred = vision_config_from_state_dict(sd, heads=heads, post_norm=cfg.post_norm, hf_config=hf_config)
    if layout == "native" and cfg.post_norm:
        inferred = VisionConfig(**{**inferred.__dict__, "act": cfg.act, "ln_eps": cfg.ln_eps})
    assert inferred == cfg
    if layout == "eva":  # bigE's post-norm and 112-wide heads follow from the weights alone
        assert vision_config_from_state_dict(sd) == cfg


def test_eva_heads_and_post_norm_overrides() -> None:
    with torch.device("meta"):
        sd = to_eva(VisionTransformer(EVA_CFG).state_dict())
    default = vision_config_from_state_dict(sd)
    assert (default.heads, default.post_norm, default.act, default.ln_eps) == (2, False, "gelu", 1e-6)
    assert vision_config_from_state_dict(sd, heads=4, post_norm=True).heads == 4


# --- image size ---------------------------------------------------------------------------------------


def test_positional_embedding_is_interpolated(openai_ckpt: tuple[VisionTransformer, Path]) -> None:
    model, path = openai_ckpt
    loaded = load_backbone(path, image_size=48)
    assert loaded.cfg == OPENAI_CFG.with_image_size(48)
    assert loaded.positional_embedding.shape == (1 + 36, OPENAI_CFG.width)
    torch.testing.assert_close(loaded.positional_embedding, resize_pos_embed(model.positional_embedding, 6))
    with torch.no_grad():
        assert loaded.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, OPENAI_CFG.output_dim)
    with pytest.raises(ValueError, match="is not a multiple of patch size 8"):
        load_backbone(path, image_size=50)


def test_create_model_uses_pretrained_backbone(tmp_path: Path) -> None:
    from side4video.models import create_model

    vit = randomized(BACKBONES["tiny"])
    torch.save(to_openai(vit.state_dict()), tmp_path / "tiny.pt")
    model = create_model("side4video-tiny", num_classes=5, num_frames=2, pretrained=tmp_path / "tiny.pt")
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v, atol=0, rtol=0)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["openai_pt", "openai_safetensors", "torchscript"])
def test_truncated_file_is_a_clear_error(tmp_path: Path, fmt: str) -> None:
    cfg, write = WRITERS[fmt]
    path = write(randomized(cfg), tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name}: cannot read checkpoint.*expected"):
        load_backbone(path)


def test_garbage_and_non_dict_files(tmp_path: Path) -> None:
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="noise.bin: cannot read checkpoint"):
        load_backbone(tmp_path / "noise.bin")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="tensor.pt: holds a Tensor"):
        load_backbone(tmp_path / "tensor.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_backbone(tmp_path / "absent.pt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="empty_dir: directory holds none of model.safetensors"):
        load_backbone(tmp_path / "empty_dir")


def test_unknown_layout_names_file_and_expected_keys(tmp_path: Path) -> None:
    torch.save({"encoder.layer.0.weight": torch.zeros(2)}, tmp_path / "bert.pt")
    with pytest.raises(CheckpointError, match=r"bert.pt: unknown key layout: none of \['visual.conv1"):
        load_backbone(tmp_path / "bert.pt")


def test_missing_keys_are_named(tmp_path: Path) -> None:
    sd = to_openai(randomized(OPENAI_CFG).state_dict())
    del sd["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(sd, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"cut.pt: .*missing 1 key \[transformer.resblocks.1.mlp.c_fc.bias"):
        load_backbone(tmp_path / "cut.pt")
    for k in [k for k in sd if ".resblocks.1." in k]:
        del sd[k]
    # Blocks 1-4 and all but one key of block 5 are now missing.
    sd["visual.transformer.resblocks.5.ln_1.weight"] = torch.ones(OPENAI_CFG.width)
    torch.save(sd, tmp_path / "gap.pt")
    with pytest.raises(ValueError, match=r"missing 59 keys \[.*, \.\.\. \(49 more\)\]"):
        load_backbone(tmp_path / "gap.pt")


def test_keys_without_a_place_are_named(tmp_path: Path) -> None:
    sd = to_eva(randomized(EVA_CFG).state_dict())
    sd["visual.rope.freqs_cos"] = torch.zeros(16, 32)
    sd["visual.blocks.0.gamma_1"] = torch.ones(EVA_CFG.width)
    save_file(sd, tmp_path / "eva02.safetensors")
    with pytest.raises(ValueError, match=r"eva02.safetensors: .*unexpected.*blocks.0.gamma_1, visual.rope"):
        load_backbone(tmp_path / "eva02.safetensors", post_norm=True)


def test_inconsistent_hf_config_and_bad_heads(
    tmp_path: Path, openai_ckpt: tuple[VisionTransformer, Path]
) -> None:
    write_hf(randomized(OPENAI_CFG), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "image_size": 64}))
    with pytest.raises(ValueError, match="config.json disagrees with the weights: image_size=64"):
        load_backbone(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"clip.pt: width 128 is not divisible into 3 heads; pass heads="):
        load_backbone(openai_ckpt[1], heads=3)
