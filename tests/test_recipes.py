"""Recipe configs: every YAML in configs/ loads, validates, builds its model and runs it (on the meta device), the
built models carry the adapters / heads their recipes ask for, and the recipes without a released config
carry the values their papers state (the others: test_released_recipes.py)."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from side4video.data import AugmentConfig
from side4video.data.sampling import sample_indices
from side4video.engine.config import TrainConfig, resolve_config
from side4video.engine.recognition import RECOGNITION
from side4video.engine.train import make_model, make_optimizer
from side4video.methods.zeroi2v import LinearAdapter
from side4video.models import get_preset
from side4video.profiler import MetaNorms

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
GPUS = 8  # every config's batch_size is per process, for 8 processes
NUM_CLASSES = {"k400": 400, "ssv1": 174, "ssv2": 174, "ucf101": 101, "hmdb51": 51}
K400_TRAIN = 240_000  # training videos, as the ST-Adapter paper counts them ("~240k")
SSV2_TRAIN = 168_913


def load(stem: str) -> TrainConfig:
    return resolve_config(REPO / "configs" / f"{stem}.yaml")


@functools.cache
def build_on_meta(stem: str) -> torch.nn.Module:
    """The model the training engine builds from recipe ``stem``, without weights (no checkpoint is read);
    built once for all the tests below, which only read it."""
    with torch.device("meta"):
        return make_model(load(stem), pretrained=False)


def total_batch(cfg: TrainConfig) -> int:
    return cfg.optim.batch_size * GPUS * cfg.optim.grad_accum


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_schedule(cfg: TrainConfig, steps: int, videos: int) -> None:
    """``cfg.epochs`` covers the paper's ``steps`` optimiser steps to within one epoch."""
    steps_per_epoch = videos / total_batch(cfg)
    assert abs(cfg.optim.epochs * steps_per_epoch - steps) <= steps_per_epoch


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_validates_and_builds(path):
    cfg = resolve_config(path)
    dataset, model = path.stem.split("_", 1)
    assert cfg.model.name == model
    assert cfg.run.output_dir == f"runs/{path.stem}"
    preset = get_preset(cfg.model.name)
    AugmentConfig(**cfg.data.augment)  # the data pipeline accepts the policy string and the flip pairs
    net = build_on_meta(path.stem)
    assert isinstance(net, preset.build)
    assert net.cfg.num_frames == cfg.model.frames
    for key, value in cfg.model.overrides.items():
        assert getattr(net.cfg, key) == value
    if preset.task is RECOGNITION:
        assert net.cfg.num_classes == cfg.model.num_classes == NUM_CLASSES[dataset]
        classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]  # the last one built
        assert classifier.out_features == cfg.model.num_classes
        d = cfg.data
        frames = sample_indices(d.sampling, 300, cfg.model.frames, train=False, frame_interval=d.frame_interval)
        assert len(frames) == cfg.model.frames
        assert np.all(np.diff(frames) > 0)
        assert frames[-1] < 300
    else:
        assert cfg.data.caption_format == dataset
    optimizer = make_optimizer(net, cfg)
    assert all(g["betas"] == cfg.optim.betas for g in optimizer.param_groups)
    assert max(g["weight_decay"] for g in optimizer.param_groups) == cfg.optim.weight_decay
    optimized = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert optimized == trainable(net) > 0


def architecture(path: Path) -> tuple:
    m = resolve_config(path).model
    return m.name, m.frames, m.image_size, repr(sorted(m.overrides.items()))


# Recipes that differ only in their data (K400 and SSv2, the retrieval datasets) build the same network up
# to the classifier's size (checked for each recipe above): one forward pass each.
ARCHITECTURES = {architecture(p): p for p in reversed(CONFIGS)}


@pytest.mark.parametrize("path", sorted(ARCHITECTURES.values()), ids=lambda p: p.stem)
def test_every_recipe_model_runs_at_its_frames_and_size(path):
    cfg = resolve_config(path)
    net = build_on_meta(path.stem)
    size = cfg.model.image_size
    video = torch.empty(2, 3, cfg.model.frames, size, size, device="meta")
    with MetaNorms():  # LayerNorm's meta outputs without PyTorch's Python decomposition (test_profiler.py)
        if get_preset(cfg.model.name).task is RECOGNITION:
            assert net(video).shape == (2, cfg.model.num_classes)
        else:
            assert net.encode_video(video).shape[:1] == (2,)


# ---- ST-Adapter: paper Table 6 -----------------------------------------------------------------------


def st_adapter_params(width: int, bottleneck: int = 384, kernel_t: int = 3) -> int:
    down = width * bottleneck + bottleneck  # Linear
    conv = kernel_t * bottleneck + bottleneck  # depthwise Conv3d (kernel_t x 1 x 1)
    up = bottleneck * width + width  # Linear
    return down + conv + up


@pytest.mark.parametrize(
    ("stem", "adapters", "width"),
    [
        ("k400_st-adapter-b16", 12, 768),
        ("k400_st-adapter-l14", 24, 1024),
        ("ssv2_st-adapter-b16-x2", 24, 768),  # 2 adapters per block on SSv2, ViT-B
        ("ssv2_st-adapter-l14", 24, 1024),  # 1 adapter per block on SSv2, ViT-L
    ],
)
def test_st_adapter_parameter_counts(stem, adapters, width):
    net = build_on_meta(stem)
    head = width * net.cfg.num_classes + net.cfg.num_classes
    assert trainable(net) == adapters * st_adapter_params(width) + head
    if stem == "k400_st-adapter-b16":  # paper: 12 x 384 adapters add 7.11 M parameters
        assert trainable(net) - head == 7_110_144


@pytest.mark.parametrize(("stem", "steps"), [("k400_st-adapter-l14", 40_000), ("ssv2_st-adapter-l14", 50_000)])
def test_st_adapter_l14_follows_the_paper(stem, steps):
    """No ViT-L script was released: paper Table 6 (128 clips per step, lr 5e-4, the paper's step count)."""
    cfg = load(stem)
    kinetics = stem.startswith("k400")
    assert (total_batch(cfg), cfg.optim.lr, cfg.optim.weight_decay) == (128, 5e-4, 0.01)
    check_schedule(cfg, steps, K400_TRAIN if kinetics else SSV2_TRAIN)
    aug = AugmentConfig(**cfg.data.augment)
    d, e = cfg.data, cfg.eval
    if kinetics:  # 8 frames 16 apart, short-side jitter 224-256, mirror, no RandAugment; 3 temporal x 1 spatial
        assert (d.sampling, d.frame_interval, e.test_crops, e.test_clips) == ("dense", 16, 1, 3)
        assert (aug.short_side_jitter, aug.flip, aug.rand_augment) == ((224, 256), 0.5, None)
    else:  # TSN sampling, no mirror, RandAugment; 1 temporal x 3 spatial views
        assert (d.sampling, e.test_crops, e.test_clips) == ("segment", 3, 1)
        assert aug.flip == 0.0
        assert aug.rand_augment_op is not None


# ---- ZeroI2V: the built models carry the released adapters and STDHA heads -----------------------------


ZEROI2V = ["k400_zeroi2v-b16", "k400_zeroi2v-l14", "ssv2_zeroi2v-b16", "ssv2_zeroi2v-l14", "ucf101_zeroi2v-b16",
           "hmdb51_zeroi2v-b16"]


@pytest.mark.parametrize("stem", ZEROI2V)
def test_zeroi2v_models(stem):
    cfg = load(stem)
    policy = AugmentConfig(**cfg.data.augment).rand_augment_op
    assert (policy.magnitude, policy.num_ops) == (7, 4)
    net = build_on_meta(stem)
    adapters = [m for m in net.modules() if isinstance(m, LinearAdapter)]
    assert {m.scale for m in adapters} == {1.0 if stem.startswith("ssv2") else 0.5}
    assert len(adapters) == 4 * len(net.backbone.blocks)
    head = net.backbone.width // net.backbone.cfg.heads
    temporal = cfg.model.overrides["head_offsets"]  # the released config's heads, t - 1 first
    assert net.shift_groups[: len(temporal)] == tuple((o, head) for o in temporal)
    assert all(o == 0 for o, _ in net.shift_groups[len(temporal):])
    assert len(net.shift_groups) == (12 if stem.endswith("b16") else 16)


# ---- text-video retrieval: Side4Video appendix E and method notes section 2 ---------------------------

RETRIEVAL = [
    "msrvtt_side4video-retrieval-b32", "msrvtt_side4video-retrieval-b16", "msrvtt_side4video-retrieval-l14",
    "msvd_side4video-retrieval-b16", "msvd_side4video-retrieval-b32", "vatex_side4video-retrieval-b16",
    "msrvtt_clip4clip-frozen-b16",
]


@pytest.mark.parametrize("stem", RETRIEVAL)
def test_retrieval_recipe(stem):
    cfg = load(stem)
    o = cfg.optim
    assert (cfg.model.task, cfg.data.val_split, cfg.model.frames) == ("retrieval", "test", 12)
    assert (total_batch(cfg), o.epochs) == (128, 5)
    assert o.warmup_epochs / o.epochs == pytest.approx(0.1)
    assert (o.lr, o.lr_clip, o.betas) == (1e-4, 1e-7, (0.9, 0.98))
    assert cfg.data.tokenizer is not None
    net = build_on_meta(stem)
    assert net.cfg.text_length == 32
    optimizer = make_optimizer(net, cfg)
    lrs = {g["name"].split("_", 1)[0]: g["lr"] for g in optimizer.param_groups}
    if "clip4clip-frozen" in stem:  # only CLIP's text tower trains
        assert lrs == {"clip": 1e-7}
        assert not any(p.requires_grad for p in net.backbone.parameters())
    else:  # the side network is new; the OpenAI ViT stays frozen, ln_post / proj included (released)
        assert lrs == {"clip": 1e-7, "default": 1e-4}
        assert not any(p.requires_grad for p in net.backbone.parameters())
