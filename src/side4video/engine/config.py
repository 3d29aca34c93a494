"""``TrainConfig``: every setting of a training run, in five groups, resolved as defaults -> YAML -> CLI
flags -> ``--set``.

Groups: ``model`` (preset and its shape), ``data`` (lists, sampling, augmentation, loading),
``optim`` (schedule, optimiser, loss), ``eval`` (views, chunking, retrieval scoring) and ``run``
(device, seed, output, resume, logging). A key may be given in its group (``optim: {lr: 1e-3}``,
``--set optim.lr=1e-3``) or flat when its name is unique (``lr: 1e-3``, ``--set lr=1e-3``; the
recipes in ``configs/`` are flat); ``model`` and ``model_overrides`` are the flat names of
``model.name`` and ``model.overrides``. Values are converted by the field's type (see
``side4video.typed_config``). The keys of ``model.overrides`` are fields of the preset's config and
those of ``data.augment`` fields of ``side4video.data.AugmentConfig``; both are typed by those
dataclasses. An unknown key, at any level, is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..backbones.vit import BACKBONES
from ..models import get_preset
from ..typed_config import ConfigError, apply, coerce, field_types, parse_set, resolve_dict_keys, to_dict

__all__ = ["ConfigError", "TrainConfig", "from_dict", "load_yaml", "resolve_config", "save_yaml", "to_dict"]


@dataclass
class ModelConfig:
    name: str = "side4video-b16"  # preset (side4video.list_models())
    # None: chosen when training starts (side4video.engine.defaults): the classes counted from the data,
    # the preset's frames and its backbone's image size
    num_classes: int | None = None  # recognition only
    frames: int | None = None
    image_size: int | None = None
    pretrained: str | None = None  # backbone checkpoint (OpenAI / open_clip / EVA-CLIP / HF weights)
    overrides: dict[str, Any] = field(default_factory=dict)  # fields of the preset's config
    task: Literal["recognition", "retrieval"] | None = None  # None: the preset's task; else it must match it


@dataclass
class DataConfig:
    train_list: str | None = None
    val_list: str | None = None
    data_root: str = ""
    label_names: str | None = None  # one class name per line, for the confusion matrix
    sampling: str = "segment"  # frame sampling of side4video.data (segment: TSN)
    frame_interval: int = 1
    frames_template: str = "img_{:05d}.jpg"
    # video files: frames resized while decoding so that their short side is this (swscale bilinear,
    # before augmentation; a 4K source then never exists at full size); None: full size
    decode_short_side: int | None = None
    augment: dict[str, Any] = field(default_factory=dict)  # fields of side4video.data.AugmentConfig
    repeated_aug: int = 1  # augmented copies of each training video in a batch
    bad_sample_policy: Literal["skip", "resample", "fail"] = "skip"
    num_workers: int | None = None  # None: 4, at most the CPU cores of each process
    # retrieval: train_list / val_list are the caption annotations, data_root the video folder
    caption_format: Literal["msrvtt", "msvd", "vatex", "tsv"] = "tsv"  # tsv: video<TAB>caption lines
    val_split: Literal["val", "test"] = "test"  # split of msrvtt / msvd / vatex evaluated (msrvtt: test)
    tokenizer: str | None = None  # CLIP BPE: tokenizer.json, a vocab.json + merges.txt folder, or .txt.gz


@dataclass
class OptimConfig:
    epochs: int = 30
    warmup_epochs: float | None = None  # None: 4, at most a fifth of the epochs
    batch_size: int | None = None  # videos per process and step (before repeated augmentation); None: 32, or
    # less so that an epoch has at least 4 steps
    grad_accum: int = 1
    lr: float = 1e-3
    lr_clip: float = 1e-7  # retrieval: CLIP's trained parts (text tower, ln_post, proj); lr: new modules
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    warmup_start: float = 0.0  # lr multiplier where the linear warm-up starts
    cosine: Literal["after_warmup", "whole_run"] = "after_warmup"  # whole_run: from step 0, times the warm-up
    backbone_lr_mult: float = 1.0  # lr multiplier of the trained parts inside the backbone (adapters, ...)
    weight_decay: float = 0.15
    no_decay: tuple[Literal["bias", "norm", "embedding", "1d"], ...] = ("bias", "norm", "embedding", "1d")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0  # 0: off
    clip_grad: float | None = None  # max global gradient norm; None: off
    amp: bool = True  # autocast on CUDA (ignored on CPU)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"


@dataclass
class EvalConfig:
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    test_crops: int = 3
    test_clips: int = 1
    test_resize: int | tuple[int, int] | None = None  # short side or [height, width]; None: short side image_size
    test_segment_position: float = 0.5  # where a test frame sits in its segment (segment sampling): centre; 0: start
    eval_batch_size: int | None = None  # videos per step; default batch_size
    eval_chunk: int = 8  # clips per forward pass when averaging views
    confusion_matrix: bool = False
    sim_chunk: int = 64  # retrieval: captions scored against all videos at a time
    dsl: bool = False  # retrieval: also report dual-softmax re-weighted numbers (dsl_*) beside the plain ones


@dataclass
class RunConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    output_dir: str = "runs/default"
    resume: str | None = None  # "auto": output_dir/last.pt if present; or a checkpoint path
    overwrite: bool = False  # replace the run already in output_dir (else training into it is refused)
    save_frozen: bool = True  # False: checkpoints hold trainable params and buffers only
    log_every: int = 20  # optimiser steps between log lines
    tensorboard: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


ALIASES = {"model": "model.name", "model_overrides": "model.overrides"}  # flat names of renamed fields
DICT_FIELDS = {"model_overrides": "model.overrides", "model.overrides": "model.overrides",
               "augment": "data.augment", "data.augment": "data.augment"}


def make_config(values: Mapping[str, Any] | None = None, source: str = "arguments", **flat: Any) -> TrainConfig:
    """A validated ``TrainConfig`` from grouped and/or flat keys, e.g. ``make_config(model="side4video-tiny",
    lr=1e-3, data={"data_root": "videos"})``."""
    return validate(apply(TrainConfig(), {**(values or {}), **flat}, source, ALIASES), source)


def replace(cfg: TrainConfig, source: str = "arguments", **values: Any) -> TrainConfig:
    """``cfg`` with grouped or flat keys changed (``None`` values are ignored), validated."""
    values = {k: v for k, v in values.items() if v is not None}
    return validate(apply(cfg, values, source, ALIASES), source)


def _check_nested(cfg: TrainConfig, source: str) -> TrainConfig:
    """Type the keys of ``model.overrides`` by the preset's config and ``data.augment`` by ``AugmentConfig``."""
    from ..data import AugmentConfig

    checked = {}
    for path, schema, reserved in (
        ("model.overrides", type(get_preset(cfg.model.name).config), {"num_classes", "num_frames", "backbone"}),
        ("data.augment", AugmentConfig, set()),
    ):
        group, name = path.split(".")
        types_ = field_types(schema)
        valid = sorted(k for k in types_ if k not in reserved)
        out = {}
        for key, value in getattr(getattr(cfg, group), name).items():
            if key not in valid:
                raise ConfigError(f"{source}: unknown key {path}.{key!r}; valid keys: {valid}")
            out[key] = coerce(value, types_[key], f"{source}: {path}.{key}")
        checked[group] = dataclasses.replace(getattr(cfg, group), **{name: out})
    return dataclasses.replace(cfg, **checked)


# (key, check, rule as the error states it) of the numeric settings with a meaningful range; None passes
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("optim.warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.lr_clip", lambda v: v >= 0, ">= 0"),
    ("optim.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    ("optim.eps", lambda v: v > 0, "> 0"),
    ("optim.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.mixup_alpha", lambda v: v >= 0, ">= 0 (0: off)"),
    ("optim.clip_grad", lambda v: v > 0, "> 0 (or null: off)"),
    ("run.seed", lambda v: 0 <= v < 2**63, "in [0, 2**63)"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("eval.test_segment_position", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.warmup_start", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("optim.backbone_lr_mult", lambda v: v >= 0, ">= 0"),
    ("eval.eval_batch_size", lambda v: v >= 1, ">= 1"),
)


def validate(cfg: TrainConfig, source: str = "config") -> TrainConfig:
    """Cross-field checks and typing of the nested dicts (needs the model preset to exist)."""
    try:
        task = get_preset(cfg.model.name).task
    except KeyError as e:
        raise ConfigError(f"{source}: model: {e.args[0]}") from None
    task.check_config(cfg, source)
    positive = {"model": ("num_classes", "frames", "image_size"),
                "data": ("repeated_aug", "frame_interval"),
                "optim": ("epochs", "batch_size", "grad_accum"),
                "eval": ("eval_every", "test_crops", "test_clips", "eval_chunk", "sim_chunk"),
                "run": ("log_every",)}
    for group, keys in positive.items():
        for key in keys:
            value = getattr(getattr(cfg, group), key)
            if value is not None and value < 1:  # None: chosen when training starts (engine.defaults)
                raise ConfigError(f"{source}: {group}.{key} must be >= 1, got {value}")
    for path, ok, rule in RANGES:
        group, key = path.split(".")
        value = getattr(getattr(cfg, group), key)
        if value is not None and not ok(value):
            raise ConfigError(f"{source}: {path} must be {rule}, got {value}")
    patch = BACKBONES[get_preset(cfg.model.name).config.backbone].patch_size
    if cfg.model.image_size is not None and cfg.model.image_size % patch:
        raise ConfigError(f"{source}: model.image_size must be a multiple of {cfg.model.name}'s patch size "
                          f"{patch}, got {cfg.model.image_size}")
    return _check_nested(cfg, source)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML file (``safe_load``: plain data only, no Python tags)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def resolve_config(
    path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``) -> YAML file ``path`` -> ``flags`` (None values ignored) -> ``--set`` items."""
    cfg = base if base is not None else TrainConfig()
    if path is not None:
        cfg = apply(cfg, load_yaml(path), str(path), ALIASES)
    if flags:
        cfg = apply(cfg, {k: v for k, v in flags.items() if v is not None}, "command line", ALIASES)
    cfg = apply(cfg, resolve_dict_keys(parse_set(sets), DICT_FIELDS), "--set", ALIASES)
    return validate(cfg, str(path) if path is not None else "config")


def from_dict(values: Mapping[str, Any], source: str = "checkpoint") -> TrainConfig:
    """The config saved by ``to_dict`` (grouped) or by an older, flat layout."""
    return validate(apply(TrainConfig(), values, source, ALIASES), source)


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def config_fields(cls: type = TrainConfig) -> dict[str, dataclasses.Field]:
    """Every leaf field of ``TrainConfig`` by its dotted path (for building CLI flags from the config)."""
    out = {}
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.update({f"{f.name}.{k}": v for k, v in config_fields(tp).items()})
        else:
            out[f.name] = f
    return out


def config_types(cls: type = TrainConfig) -> dict[str, Any]:
    """The annotation of every leaf field of ``TrainConfig`` by its dotted path."""
    out = {}
    for name, tp in field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update({f"{name}.{k}": v for k, v in config_types(tp).items()})
        else:
            out[name] = tp
    return out
