"""``side4video train``: a flag for each of the most used config keys, typed and documented from
``TrainConfig``'s fields; every other key through ``--set``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing

from ..engine.config import config_fields, config_types

# The config keys that get their own flag (``--train-list`` sets ``data.train_list``).
FLAG_KEYS = (
    "model.name", "model.task", "model.num_classes", "model.frames", "model.image_size", "model.pretrained",
    "data.train_list", "data.val_list", "data.data_root", "data.num_workers", "data.tokenizer",
    "optim.epochs", "optim.batch_size", "optim.lr",
    "run.device", "run.seed", "run.output_dir", "run.resume",
)
FLAG_NAMES = {"model.name": "model"}  # flags not named after their field


def flag_dest(path: str) -> str:
    return FLAG_NAMES.get(path, path.rsplit(".", 1)[1])


def arg_type(tp: typing.Any) -> dict[str, typing.Any]:
    """argparse ``type`` / ``choices`` for a field's annotation (the config converts the value again)."""
    options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    inner = options[0] if typing.get_origin(tp) is not typing.Literal else tp
    if len(options) == 1 or typing.get_origin(tp) is typing.Literal:
        if typing.get_origin(inner) is typing.Literal:
            return {"choices": list(typing.get_args(inner))}
        if inner in (int, float):
            return {"type": inner}
    return {}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (also under torchrun)")
    p.add_argument("config", nargs="?", help="YAML file of TrainConfig keys (configs/*.yaml)")
    fields, types = config_fields(), config_types()
    for path in FLAG_KEYS:
        default = fields[path].default
        shown = "" if default is dataclasses.MISSING else f" (default: {default})"
        p.add_argument(f"--{flag_dest(path).replace('_', '-')}", dest=flag_dest(path),
                       help=f"config key {path}{shown}", **arg_type(types[path]))
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="config key run.overwrite: replace the run already in output-dir (else refused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, flat or dotted: lr=3e-4, optim.lr=3e-4, model_overrides.dropout=0.3")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..engine.config import resolve_config, to_dict
    from ..engine.train import train

    flags = {path: getattr(args, flag_dest(path)) for path in FLAG_KEYS}
    cfg = resolve_config(args.config, {**flags, "run.overwrite": args.overwrite}, args.set)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    metrics = train(cfg)
    if "val" in metrics and os.environ.get("RANK", "0") == "0":
        print(json.dumps(metrics["val"]))
    return 0
