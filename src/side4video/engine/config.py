"""``TrainConfig``: every setting of a training run, resolved as defaults -> YAML -> CLI flags -> ``--set``.

Values are type-checked against the dataclass annotations, so ``--set lr=3e-4`` gives a float and
``--set betas=0.9,0.98`` a tuple. Dotted keys reach into the nested dictionaries
(``--set model_overrides.dropout=0.3``, ``--set augment.flip_prob=0``) and are typed by the field of
the dataclass they end up in: the model preset's config or the data pipeline's ``AugmentConfig``.
An unknown key, at any level, is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..models import get_preset


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the source and the key."""


@dataclass
class TrainConfig:
    # model
    model: str = "side4video-b16"
    num_classes: int = 400
    frames: int = 8
    image_size: int = 224
    pretrained: str | None = None  # backbone checkpoint (OpenAI / open_clip / EVA-CLIP / HF weights)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # fields of the preset's config
    task: Literal["recognition", "retrieval"] | None = None  # None: the preset's task; else it must match it
    # data
    train_list: str | None = None
    val_list: str | None = None
    data_root: str = ""
    label_names: str | None = None  # one class name per line, for the confusion matrix
    sampling: str = "segment"  # frame sampling of side4video.data (segment: TSN)
    frame_interval: int = 1
    frames_template: str = "img_{:05d}.jpg"
    augment: dict[str, Any] = field(default_factory=dict)  # fields of side4video.data.AugmentConfig
    repeated_aug: int = 1  # augmented copies of each training video in a batch
    bad_sample_policy: Literal["skip", "resample", "fail"] = "skip"
    num_workers: int = 4
    # retrieval data: train_list / val_list are the caption annotations, data_root the video folder
    caption_format: Literal["msrvtt", "msvd", "vatex", "tsv"] = "tsv"  # tsv: video<TAB>caption lines
    val_split: Literal["val", "test"] = "test"  # split of msrvtt / msvd / vatex evaluated (msrvtt: test)
    tokenizer: str | None = None  # CLIP BPE: tokenizer.json, a vocab.json + merges.txt folder, or .txt.gz
    # optimisation
    epochs: int = 30
    warmup_epochs: float = 4.0
    batch_size: int = 32  # videos per process and per step (before repeated augmentation)
    grad_accum: int = 1
    lr: float = 1e-3
    lr_clip: float = 1e-7  # retrieval: CLIP's trained parts (text tower, ln_post, proj); lr: new modules
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.15
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0  # 0: off
    clip_grad: float | None = None  # max global gradient norm; None: off
    amp: bool = True  # autocast on CUDA (ignored on CPU)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    # evaluation
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    test_crops: int = 3
    test_clips: int = 1
    test_resize: int | tuple[int, int] | None = None  # short side or [height, width]; None: short side image_size
    eval_batch_size: int | None = None  # videos per step; default batch_size
    eval_chunk: int = 8  # clips per forward pass when averaging views
    confusion_matrix: bool = False
    sim_chunk: int = 64  # retrieval: captions scored against all videos at a time
    dsl: bool = False  # retrieval: also report dual-softmax re-weighted numbers (dsl_*) beside the plain ones
    # run
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    output_dir: str = "runs/default"
    resume: str | None = None  # "auto": output_dir/last.pt if present; or a checkpoint path
    save_frozen: bool = True  # False: checkpoints hold trainable params and buffers only
    log_every: int = 20  # optimiser steps between log lines
    tensorboard: bool = True


NESTED_KEYS = ("model_overrides", "augment")  # dict fields whose keys are fields of another dataclass


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from YAML or a ``--set`` string) converted to type ``tp``; ``ConfigError`` if impossible."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(items, args, strict=True))
    if origin is list:
        items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, args[0], key) if args else v for v in items]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _augment_config_cls() -> type:
    from ..data import AugmentConfig

    return AugmentConfig


def _nested_schema(cfg: TrainConfig, name: str) -> tuple[type, set[str]]:
    """The dataclass typing the keys of nested dict ``name`` and the keys it may not hold."""
    if name == "model_overrides":
        # Set through the top-level fields (or chosen by the engine), never as overrides.
        return type(get_preset(cfg.model).config), {"num_classes", "num_frames", "backbone"}
    return _augment_config_cls(), set()


def _check_nested(cfg: TrainConfig, name: str, source: str) -> dict[str, Any]:
    schema, reserved = _nested_schema(cfg, name)
    types_ = _field_types(schema)
    valid = sorted(k for k in types_ if k not in reserved)
    out = {}
    for key, value in getattr(cfg, name).items():
        if key not in valid:
            raise ConfigError(f"{source}: unknown key {name}.{key!r}; valid keys: {valid}")
        out[key] = coerce(value, types_[key], f"{source}: {name}.{key}")
    return out


def apply(cfg: TrainConfig, values: Mapping[str, Any], source: str) -> TrainConfig:
    """``cfg`` with ``values`` (a nested mapping, e.g. parsed YAML) applied; ``source`` names them in errors."""
    types_ = _field_types(TrainConfig)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {config_keys()}")
        if key in NESTED_KEYS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
            value = {**getattr(cfg, key), **value}
        changes[key] = coerce(value, types_[key], f"{source}: {key}")
    return dataclasses.replace(cfg, **changes)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model_overrides.dropout=0.3"]`` -> ``{"lr": "1e-3", "model_overrides": {"dropout": 0.3}}``.

    Values of top-level keys stay strings (``coerce`` parses them by the field's type); values of
    nested keys are parsed as YAML scalars, then typed when the nested dict is checked.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        parts = key.strip().split(".")
        if len(parts) == 1:
            out[parts[0]] = raw
        elif len(parts) == 2 and parts[0] in NESTED_KEYS:
            out.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(raw) if raw else None
        else:
            raise ConfigError(f"--set {item!r}: dotted keys must start with one of {list(NESTED_KEYS)}")
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
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
        cfg = apply(cfg, load_yaml(path), str(path))
    if flags:
        cfg = apply(cfg, {k: v for k, v in flags.items() if v is not None}, "command line")
    cfg = apply(cfg, parse_set(sets), "--set")
    return validate(cfg, str(path) if path is not None else "config")


def validate(cfg: TrainConfig, source: str = "config") -> TrainConfig:
    """Cross-field checks and typing of the nested dicts (needs the model preset to exist)."""
    try:
        task = get_preset(cfg.model).task
    except KeyError as e:
        raise ConfigError(f"{source}: model: {e.args[0]}") from None
    if cfg.task is not None and cfg.task != task:
        raise ConfigError(f"{source}: task: {cfg.task!r} does not match model {cfg.model!r}, a {task} preset")
    if cfg.confusion_matrix and task != "recognition":
        raise ConfigError(f"{source}: confusion_matrix: recognition only; {cfg.model!r} is a {task} preset")
    positive = ("num_classes", "frames", "image_size", "epochs", "batch_size", "grad_accum", "repeated_aug",
                "eval_every", "test_crops", "test_clips", "eval_chunk", "frame_interval", "log_every",
                "sim_chunk")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.warmup_epochs < 0:
        raise ConfigError(f"{source}: warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    nested = {name: _check_nested(cfg, name, source) for name in NESTED_KEYS if getattr(cfg, name)}
    return dataclasses.replace(cfg, **nested)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain YAML/JSON-safe dict (tuples as lists) that ``apply`` turns back into the same config."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def from_dict(values: Mapping[str, Any], source: str = "checkpoint") -> TrainConfig:
    return validate(apply(TrainConfig(), values, source), source)


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
