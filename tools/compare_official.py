"""Check ``side4video.load_official`` against the authors' own model code.

For each released architecture this script builds the authors' model class from a checkout of
their repository at a small size (the ``tiny`` ViT: width 256, 4 blocks, at 32 px), gives every
weight and BatchNorm statistic a random value, saves a checkpoint in the authors' layout,
loads it with :func:`side4video.load_official` and compares the logits on random clips::

    git clone https://github.com/HJYao00/Side4Video && git clone https://github.com/linziyi96/st-adapter
    git clone https://github.com/MCG-NJU/ZeroI2V
    pip install einops        # the authors' code uses it
    python tools/compare_official.py --side4video Side4Video --st-adapter st-adapter --zeroi2v ZeroI2V

Only imports that serve training or logging are stubbed (mmcv / mmengine registries and
loggers, timm helpers, apex ``FusedLayerNorm`` -> ``nn.LayerNorm``, xformers' memory-efficient
attention and torch 1.x's private ``F._scaled_dot_product_attention`` -> their documented math).
Nothing of the authors' code is copied here: it is imported from the checkout at run time.
``--fixture FILE`` writes, per case, the authors' key layout (names, shapes), seed and logits: the
project's tests rebuild each checkpoint from it and pin the logits without the authors' code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import math
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from side4video import load_official
from side4video.official import random_state

TOL = 1e-4
SIZE, PATCH, WIDTH, LAYERS, HEADS, EMBED = 32, 16, 256, 4, 4, 128  # the ``tiny`` backbones at 32 px
SIDE_WIDTH, BOTTLENECK, CLASSES, BATCH = 128, 64, 5, 2


# ----------------------------------------------------------------------------- stubs


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """A package whose ``__init__`` is not run; submodules load from ``path``."""
    return _module(name, __path__=[str(path)] if path else [])


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(mod)
    return mod


def _sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0):
    """torch 1.x ``F._scaled_dot_product_attention``: softmax(q k^T / sqrt(d) + mask) v, and the weights."""
    attn = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    return attn @ v, attn


def _memory_efficient_attention(q, k, v, p=0.0, scale=None):
    """xformers' ``memory_efficient_attention`` on ``(B, N, H, C)`` tensors, as documented."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


class _Logger:
    def info(self, *args, **kwargs) -> None:
        pass


class _Registry:
    def register_module(self, *args, **kwargs):
        return (lambda cls: cls) if not args or not isinstance(args[0], type) else args[0]


def install_stubs() -> None:
    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return nn.init.trunc_normal_(tensor, mean, std, a, b)

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    class DropPath(nn.Identity):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

    class FusedLayerNorm(nn.LayerNorm):  # apex: the same function, fused
        pass

    _package("timm")
    _package("timm.models")
    _module("timm.models.layers", trunc_normal_=trunc_normal_, to_2tuple=to_2tuple, drop_path=lambda x, *a, **k: x)
    _package("apex")
    _module("apex.normalization", FusedLayerNorm=FusedLayerNorm)
    _package("xformers")
    _module("xformers.ops", memory_efficient_attention=_memory_efficient_attention)
    _package("mmcv")
    _package("mmcv.cnn")
    _module("mmcv.cnn.bricks", DropPath=DropPath)
    _package("mmengine")
    _module("mmengine.logging", MMLogger=types.SimpleNamespace(get_current_instance=_Logger))
    _package("mmengine.model")
    _module("mmengine.model.weight_init", trunc_normal_=trunc_normal_)
    _module("clip")  # CLIP weights are loaded only by init_weights(), never called here
    _module("configs", CLIP_VIT_B16_PATH=None, CLIP_VIT_L14_PATH=None, DWCONV3D_DISABLE_CUDNN=True)
    if not hasattr(F, "_scaled_dot_product_attention"):  # removed in torch 2
        F._scaled_dot_product_attention = _sdpa_math


# ----------------------------------------------------------------------------- the authors' checkpoint layouts


def write_side4video(path: Path, state: dict, prefix: str = "") -> dict:
    """train_vision.py's ``epoch_saving``: ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}``."""
    torch.save({"epoch": 3, "model_state_dict": {prefix + k: v for k, v in state.items()},
                "optimizer_state_dict": {}}, path)
    return {}


def write_st_adapter(path: Path, state: dict, trainable: set[str]) -> dict:
    """utils.py's ``save_model`` (trainable tensors only) and the CLIP image tower it was trained from.

    The tower is written in OpenAI's key layout (``visual.*``), without ``proj``: the model never uses it.
    """
    torch.save({"model": {k: v for k, v in state.items() if k in trainable}, "optimizer": {}, "lr_sched": {},
                "loss_scaler": {}, "next_epoch": 12}, path)
    clip_file = path.with_name(path.stem + "_clip.pt")
    torch.save({f"visual.{k}": v for k, v in state.items() if k not in trainable}, clip_file)
    return {"pretrained": clip_file}


def write_zeroi2v(path: Path, state: dict, config_text: str, config_file: bool = False) -> dict:
    """mmengine's CheckpointHook: ``{'meta': {..., 'cfg': config text}, 'state_dict', ...}``, or a config file."""
    meta = {"epoch": 40, "iter": 1000}
    if config_file:
        config = path.with_suffix(".py")
        config.write_text("_base_ = ['../../_base_/default_runtime.py']\n" + config_text)
        kwargs = {"config": config}
    else:
        meta["cfg"] = config_text
        kwargs = {}
    torch.save({"meta": meta, "state_dict": state, "message_hub": {}, "optimizer": {}}, path)
    return kwargs


WRITERS = {"side4video": write_side4video, "st-adapter": write_st_adapter, "zeroi2v": write_zeroi2v}


def write_checkpoint(path: Path, writer: str, state: dict, trainable: set[str], args: dict) -> dict:
    """Write ``state`` in the layout ``writer``; returns the keyword arguments ``load_official`` needs."""
    if writer == "st-adapter":
        return write_st_adapter(path, state, trainable)
    return WRITERS[writer](path, state, **args)


# ----------------------------------------------------------------------------- the authors' models


def clips(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class VideoClassifier(nn.Module):
    """train_vision.py's ``VideoCLIP`` in eval mode: ``fc(visual(frames))`` (drop_fc is 0 in every config)."""

    def __init__(self, visual: nn.Module, width: int) -> None:
        super().__init__()
        self.visual = visual
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        return self.fc(self.visual(video.transpose(1, 2).reshape(b * t, c, h, w)))


@dataclass
class Case:
    method: str
    layout: str
    frames: int
    build: Callable[[int], nn.Module]  # frames -> the authors' model
    writer: str  # key of WRITERS
    args: dict = field(default_factory=dict)  # the writer's extra arguments

    @property
    def name(self) -> str:
        return f"{self.method} {self.layout} {self.frames}f"


def side4video_cases(repo: Path, frames: int) -> list[Case]:
    root = repo / "Recognition"
    clip_model = _load("s4v_clip_model", root / "clip" / "model.py")
    _package("s4v_eva_clip", root / "eva_clip")
    _module("s4v_eva_clip.transformer", PatchDropout=nn.Identity)  # used only with patch_dropout > 0
    eva = _load("s4v_eva_clip.eva_vit_model", root / "eva_clip" / "eva_vit_model.py")

    def build_clip(t: int) -> nn.Module:
        with contextlib.redirect_stdout(io.StringIO()):
            visual = clip_model.VisualTransformer(SIZE, PATCH, WIDTH, LAYERS, HEADS, EMBED, T=t, side_dim=SIDE_WIDTH)
        return VideoClassifier(visual, SIDE_WIDTH)

    def build_eva(t: int) -> nn.Module:
        visual = eva.EVAVisionTransformer(
            img_size=SIZE, patch_size=PATCH, num_classes=EMBED, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS,
            mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(eva.FusedLayerNorm, eps=1e-6), use_mean_pooling=False,
            xattn=True, postnorm=True, T=t, side_dim=SIDE_WIDTH,
        )
        return VideoClassifier(visual, SIDE_WIDTH)

    return [
        Case("side4video", "B/16-style (OpenAI CLIP)", frames, build_clip, "side4video"),
        Case("side4video", "B/16-style, DDP 'module.' keys", frames, build_clip, "side4video", {"prefix": "module."}),
        Case("side4video", "E/14-style (EVA-CLIP, post-norm)", frames, build_eva, "side4video"),
    ]


def st_adapter_cases(repo: Path, frames: int) -> list[Case]:
    models = _load("st_adapter_models", repo / "models_adapter.py")

    def builder(pre_attn: bool, pre_mlp: bool):
        def build(t: int) -> nn.Module:
            model = models.VisionTransformer(
                input_resolution=SIZE, patch_size=PATCH, width=WIDTH, layers=LAYERS, heads=HEADS,
                num_classes=CLASSES, adapter_width=BOTTLENECK, adapter_layers=LAYERS,
                adapter_kernel_size=(3, 1, 1), adapter_pre_attn=pre_attn, adapter_pre_mlp=pre_mlp,
            )
            return model.float()  # the frozen weights are cast to fp16 for the GPU; compare in fp32
        return build

    return [
        Case("st-adapter", "K400 12x (before MLP)", frames, builder(False, True), "st-adapter"),
        Case("st-adapter", "SSv2 24x (before MHSA and MLP)", frames, builder(True, True), "st-adapter"),
    ]


ZEROI2V_MODELS = {
    "ViT_Zero_CLIP": ("vit_zero_clip", "stdha", "STDHA"),
    "ViT_Zero_CLIP_long": ("vit_zero_clip_long", "stdha_long", "STDHA_long"),
    "ViT_Zero_CLIP_ablation": ("vit_zero_clip_ablation", "stdha_ablation", "STDHA_ablation"),
}


def zeroi2v_cases(repo: Path, frames: int) -> list[Case]:
    models = repo / "mmaction" / "models"
    _package("mmaction")
    _module("mmaction.registry", MODELS=_Registry())
    _package("mmaction.models", models)
    common = _package("mmaction.models.common", models / "common")
    _package("mmaction.models.backbones", models / "backbones")
    backbones = {}
    for kind, (file, stdha_file, stdha_name) in ZEROI2V_MODELS.items():
        stdha = _load(f"mmaction.models.common.{stdha_file}", models / "common" / f"{stdha_file}.py")
        setattr(common, stdha_name, getattr(stdha, stdha_name))
        backbones[kind] = getattr(_load(f"mmaction.models.backbones.{file}", models / "backbones" / f"{file}.py"), kind)

    class Recognizer(nn.Module):
        """mmaction2's Recognizer3D + I3DHead at test time: fc_cls(mean over T, H, W of the backbone output)."""

        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            self.cls_head = nn.Module()
            self.cls_head.fc_cls = nn.Linear(WIDTH, CLASSES)

        def forward(self, video: torch.Tensor) -> torch.Tensor:
            return self.cls_head.fc_cls(self.backbone(video).mean(dim=(2, 3, 4)))

    def case(layout: str, kind: str, config_file: bool = False, **backbone_cfg) -> Case:
        def build(t: int) -> nn.Module:
            cfg = dict(input_resolution=SIZE, num_frames=t, patch_size=PATCH, width=WIDTH, layers=LAYERS,
                       heads=HEADS, **backbone_cfg)
            return Recognizer(backbones[kind](**cfg))

        cfg = dict(type=kind, pretrained="your_clip_path", input_resolution=SIZE, patch_size=PATCH,
                   num_frames=frames, width=WIDTH, layers=LAYERS, heads=HEADS, **backbone_cfg)
        text = (
            "default_scope = 'mmaction'\n"
            f"model = dict(type='Recognizer3D', backbone=dict({_kwargs(cfg)}), cls_head=dict(type='I3DHead', "
            f"in_channels={WIDTH}, num_classes={CLASSES}, spatial_type='avg', dropout_ratio=0.5, "
            "average_clips='prob'))\n"
            "work_dir = '.work_dirs/recognition/vit_zero_clip'\n"
        )
        return Case("zeroi2v", layout, frames, build, "zeroi2v", {"config_text": text, "config_file": config_file})

    return [
        case("K400 B/16-style: shift_div, 4 adapters", "ViT_Zero_CLIP", adapter_scale=0.5, num_tadapter=2,
             stdha_cfg=dict(shift_div=4, divide_head=False)),
        case("K400 L/14-32f-style: + long_shift_div, 3 adapters", "ViT_Zero_CLIP", adapter_scale=1.0,
             num_tadapter=1, stdha_cfg=dict(shift_div=8, divide_head=False, long_shift_div=8)),
        case("config file (config=)", "ViT_Zero_CLIP", config_file=True, adapter_scale=0.5, num_tadapter=2,
             stdha_cfg=dict(shift_div=8, divide_head=False)),
        case("SSv2 L/14-32f-style _long: shift1-3", "ViT_Zero_CLIP_long", adapter_scale=1, num_tadapter=2,
             stdha_cfg=dict(divide_head=False, shift1_div=8, shift2_div=16, shift3_div=16, shift3_right=False,
                            shift4_div=-1, shift4_right=False)),
        case("_long: shift1-4 with right shifts", "ViT_Zero_CLIP_long", adapter_scale=0.5, num_tadapter=2,
             stdha_cfg=dict(divide_head=False, shift1_div=16, shift2_div=16, shift3_div=32, shift3_right=True,
                            shift4_div=32, shift4_right=True)),
        case("6 adapters (separate q/k/v), long_shift_right", "ViT_Zero_CLIP_ablation", adapter_scale=0.5,
             num_tadapter=2, attn_adapter_type="qkv",
             stdha_cfg=dict(shift_div=8, ops_type="stdha", long_shift_div=8, long_shift_right=True)),
    ]


def _kwargs(cfg: dict) -> str:
    return ", ".join(f"{k}={v!r}" if not isinstance(v, dict) else f"{k}=dict({_kwargs(v)})" for k, v in cfg.items())


# ----------------------------------------------------------------------------- comparison


@torch.no_grad()
def run_case(case: Case, seed: int, tmp: Path) -> tuple[float, dict]:
    """The max |difference| of our logits from the authors', and the case's fixture entry."""
    torch.manual_seed(seed)
    theirs = case.build(case.frames).eval()
    state = random_state(theirs.state_dict(), seed)
    theirs.load_state_dict(dict(state))
    trainable = {n for n, p in theirs.named_parameters() if p.requires_grad}
    video = clips(case.frames, seed)
    expected = theirs(video)
    path = tmp / f"case{seed}.pth"
    kwargs = write_checkpoint(path, case.writer, state, trainable, case.args)
    ours = load_official(path, num_frames=case.frames, **kwargs)
    diff = (ours(video) - expected).abs().max().item()
    entry = {
        "seed": seed, "frames": case.frames, "writer": case.writer, "args": case.args,
        "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch."), k in trainable] for k, v in state.items()],
        "logits": expected.tolist(),
    }
    return diff, entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side4video", type=Path, help="checkout of github.com/HJYao00/Side4Video")
    parser.add_argument("--st-adapter", type=Path, help="checkout of github.com/linziyi96/st-adapter")
    parser.add_argument("--zeroi2v", type=Path, help="checkout of github.com/MCG-NJU/ZeroI2V")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--fixture", type=Path, help="write the authors' logits per case to this JSON file")
    args = parser.parse_args(argv)
    if not (args.side4video or args.st_adapter or args.zeroi2v):
        parser.error("give at least one of --side4video, --st-adapter, --zeroi2v")
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)  # the authors' checkpoint() calls, no grad here
    install_stubs()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cases: list[Case] = []
    for frames in args.frames:
        if args.side4video:
            cases += side4video_cases(args.side4video, frames)
        if args.st_adapter:
            cases += st_adapter_cases(args.st_adapter, frames)
        if args.zeroi2v:
            cases += zeroi2v_cases(args.zeroi2v, frames)
    print(f"{'case':<72} {'max |diff|':>10}  result")
    failed, fixture = 0, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, case in enumerate(cases):
            diff, entry = run_case(case, seed, Path(tmp))
            ok = diff <= TOL
            failed += not ok
            fixture[case.name] = entry
            print(f"{case.name:<72} {diff:10.2e}  {'ok' if ok else 'FAIL'}")
    print(f"{len(cases) - failed} of {len(cases)} cases within {TOL:.0e}")
    if args.fixture:
        args.fixture.write_text(json.dumps(fixture, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
