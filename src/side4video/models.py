"""Named presets of every method and ``create_model``.

A preset is a method's model class plus its config dataclass; ``create_model`` applies the
caller's overrides to the config and builds the model around a (possibly pretrained) backbone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .backbones.vit import BACKBONES, VisionTransformer, build_vit
from .engine.recognition import RECOGNITION
from .engine.retrieval import RETRIEVAL
from .engine.tasks import Task
from .methods.baselines import FrozenMeanP, FrozenMeanPConfig, FullFinetune, FullFinetuneConfig
from .methods.retrieval import Clip4Clip, Clip4ClipConfig, RetrievalConfig, Side4VideoRetrieval
from .methods.side4video import Side4Video, Side4VideoConfig
from .methods.st_adapter import STAdapterConfig, STAdapterModel
from .methods.zeroi2v import ZeroI2V, ZeroI2VConfig


@dataclass(frozen=True)
class Preset:
    build: Callable[[Any, VisionTransformer | None], nn.Module]  # the method's model class
    config: Any  # the method's config dataclass, with this preset's values
    task: Task = RECOGNITION  # what the engine trains and evaluates it for
    description: str = ""


def _side4video(backbone: str, layers: int, width: int, description: str, **kw: Any) -> Preset:
    cfg = Side4VideoConfig(backbone=backbone, side_layers=layers, side_width=width, **kw)
    return Preset(Side4Video, cfg, description=description)


PRESETS: dict[str, Preset] = {
    "side4video-b32": _side4video("ViT-B-32", 12, 320, "Side4Video on CLIP ViT-B/32, 12 x 320"),
    "side4video-b16": _side4video("ViT-B-16", 12, 320, "Side4Video on CLIP ViT-B/16, 12 x 320 (paper: B/16)"),
    "side4video-b16-light": _side4video("ViT-B-16", 6, 192, "Side4Video light on ViT-B/16, 6 x 192 (paper: B/16 ♥)"),
    "side4video-l14": _side4video("ViT-L-14", 24, 512, "Side4Video on CLIP ViT-L/14, 24 x 512 (paper: L/14)"),
    "side4video-l14-light": _side4video("ViT-L-14", 12, 320, "Side4Video light on ViT-L/14, 12 x 320 (paper: L/14 ♥)"),
    "side4video-e14-light": _side4video(
        "EVA02-E-14", 32, 576, "Side4Video on EVA-CLIP ViT-E/14, 32 x 576, post-norm (paper: E/14 ♥)",
        post_norm=True, checkpoint_parts=True, down_norm="post", head_norm=False,
    ),
    "side4video-tiny": _side4video("tiny", 4, 128, "Side4Video on the tiny test ViT, 4 x 128"),
    "st-adapter-b16": Preset(
        STAdapterModel, STAdapterConfig("ViT-B-16", bottleneck=384),
        description="ST-Adapter on CLIP ViT-B/16, 12 x 384 before the MLP (released K400 model)",
    ),
    "st-adapter-b16-x2": Preset(
        STAdapterModel, STAdapterConfig("ViT-B-16", bottleneck=384, placement="attn+mlp"),
        description="ST-Adapter on CLIP ViT-B/16, 24 x 384 before MHSA and MLP (released SSv2 model)",
    ),
    "st-adapter-l14": Preset(
        STAdapterModel, STAdapterConfig("ViT-L-14", bottleneck=384),
        description="ST-Adapter on CLIP ViT-L/14, 24 x 384 before the MLP (paper Table 6 size, released layout)",
    ),
    "st-adapter-tiny": Preset(
        STAdapterModel, STAdapterConfig("tiny", bottleneck=64), description="ST-Adapter on the tiny test ViT"
    ),
    "zeroi2v-b16": Preset(
        ZeroI2V, ZeroI2VConfig("ViT-B-16"), description="ZeroI2V on CLIP ViT-B/16: STDHA + 4 x 12 linear adapters"
    ),
    "zeroi2v-l14": Preset(
        ZeroI2V, ZeroI2VConfig("ViT-L-14"), description="ZeroI2V on CLIP ViT-L/14: STDHA + 4 x 24 linear adapters"
    ),
    "zeroi2v-tiny": Preset(
        ZeroI2V, ZeroI2VConfig("tiny", shift_groups=((-1, 64), (1, 64))), description="ZeroI2V on the tiny test ViT"
    ),
    "frozen-meanp-b16": Preset(
        FrozenMeanP, FrozenMeanPConfig("ViT-B-16"), description="Linear probe: frozen ViT-B/16, mean of frame CLS"
    ),
    "frozen-meanp-l14": Preset(
        FrozenMeanP, FrozenMeanPConfig("ViT-L-14"), description="Linear probe: frozen ViT-L/14, mean of frame CLS"
    ),
    "frozen-meanp-tiny": Preset(
        FrozenMeanP, FrozenMeanPConfig("tiny"), description="Linear probe on the tiny test ViT"
    ),
    "full-finetune-b16": Preset(
        FullFinetune, FullFinetuneConfig("ViT-B-16"), description="Full fine-tuning of ViT-B/16, mean of frame CLS"
    ),
    "full-finetune-l14": Preset(
        FullFinetune, FullFinetuneConfig("ViT-L-14"), description="Full fine-tuning of ViT-L/14, mean of frame CLS"
    ),
    "full-finetune-tiny": Preset(
        FullFinetune, FullFinetuneConfig("tiny"), description="Full fine-tuning of the tiny test ViT"
    ),
    "side4video-retrieval-b32": Preset(
        Side4VideoRetrieval, RetrievalConfig("ViT-B-32", side_layers=12), RETRIEVAL,
        "Side4Video retrieval on CLIP ViT-B/32, 12 x 320, token-wise matching (paper Table 6)",
    ),
    "side4video-retrieval-b16": Preset(
        Side4VideoRetrieval, RetrievalConfig("ViT-B-16", side_layers=12), RETRIEVAL,
        "Side4Video retrieval on CLIP ViT-B/16, 12 x 320, token-wise matching",
    ),
    "side4video-retrieval-l14": Preset(
        Side4VideoRetrieval, RetrievalConfig("ViT-L-14", side_layers=24), RETRIEVAL,
        "Side4Video retrieval on CLIP ViT-L/14, 24 x 320, token-wise matching",
    ),
    "side4video-retrieval-e14": Preset(
        Side4VideoRetrieval,
        RetrievalConfig("EVA02-E-14", side_layers=32, post_norm=True, checkpoint_parts=True, train_projection=True),
        RETRIEVAL,
        "Side4Video retrieval on EVA-CLIP ViT-E/14, 32 x 320 post-norm, token-wise matching",
    ),
    "side4video-retrieval-tiny": Preset(
        Side4VideoRetrieval,
        RetrievalConfig("tiny", num_frames=4, side_layers=4, side_width=128, text_length=16),
        RETRIEVAL,
        "Side4Video retrieval on the tiny test ViT, 4 x 128",
    ),
    "clip4clip-b16": Preset(
        Clip4Clip, Clip4ClipConfig("ViT-B-16", train_backbone=True), RETRIEVAL,
        "CLIP4Clip meanP, both towers fine-tuned, ViT-B/16 (paper Table 3: CLIP4Clip)",
    ),
    "clip4clip-frozen-b32": Preset(
        Clip4Clip, Clip4ClipConfig("ViT-B-32"), RETRIEVAL,
        "CLIP4Clip meanP with a frozen ViT-B/32, trained text tower (paper: CLIP4Clip 🔒 ViT)",
    ),
    "clip4clip-frozen-b16": Preset(
        Clip4Clip, Clip4ClipConfig("ViT-B-16"), RETRIEVAL,
        "CLIP4Clip meanP with a frozen ViT-B/16, trained text tower",
    ),
    "clip4clip-frozen-l14": Preset(
        Clip4Clip, Clip4ClipConfig("ViT-L-14"), RETRIEVAL,
        "CLIP4Clip meanP with a frozen ViT-L/14, trained text tower",
    ),
    "clip4clip-frozen-tiny": Preset(
        Clip4Clip, Clip4ClipConfig("tiny", num_frames=4, text_length=16), RETRIEVAL,
        "CLIP4Clip meanP with the frozen tiny test ViT",
    ),
}


TASKS: dict[str, Task] = {task.name: task for task in (RECOGNITION, RETRIEVAL)}  # by the name users type


def list_models() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return PRESETS[name]


def make_config(name: str, **overrides: Any) -> Any:
    """The preset's config with ``overrides`` applied (unknown keys are an error listing the valid ones)."""
    cfg = get_preset(name).config
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise KeyError(f"{name}: unknown config keys {unknown}; valid keys: {sorted(fields)}")
    return dataclasses.replace(cfg, **overrides)


def create_model(
    name: str,
    num_classes: int | None = None,
    num_frames: int | None = None,
    pretrained: str | Path | None = None,
    image_size: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build preset ``name``. ``pretrained`` is a backbone checkpoint for ``load_backbone``."""
    given = {"num_classes": num_classes, "num_frames": num_frames}
    cfg = make_config(name, **{k: v for k, v in given.items() if v is not None}, **overrides)
    return build_model(name, cfg, pretrained=pretrained, image_size=image_size)


def build_model(
    name: str, cfg: Any, pretrained: str | Path | None = None, image_size: int | None = None
) -> nn.Module:
    """Build preset ``name`` from a full config (a dataclass or the dict saved in a checkpoint)."""
    preset = get_preset(name)
    if isinstance(cfg, dict):
        cfg = make_config(name, **cfg)
    backbone, towers = None, {}
    if pretrained is not None:
        from .backbones.loading import load_clip

        wants_text = "text" in {f.name for f in dataclasses.fields(cfg)}  # retrieval: the same file holds it
        backbone, text = load_clip(pretrained, image_size=image_size, text=wants_text)
        expected = BACKBONES[cfg.backbone].with_image_size(backbone.cfg.image_size)
        if backbone.cfg != expected:
            raise ValueError(
                f"{pretrained} holds a backbone {backbone.cfg} but {name} expects {cfg.backbone}: {expected}"
            )
        if text is not None:
            shape = ("vocab_size", "context_length", "width", "heads", "layers", "output_dim", "mlp_dim")
            got, want = ({k: getattr(c, k) for k in shape} for c in (text.cfg, cfg.text))
            if got != want:
                raise ValueError(f"{pretrained} holds a text tower {got} but {name} expects {want}")
            towers["text"] = text
    elif image_size is not None:
        backbone = build_vit(cfg.backbone, image_size=image_size)
    return preset.build(cfg, backbone, **towers)
