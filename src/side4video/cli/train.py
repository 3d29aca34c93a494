"""``side4video train``: a flag for each of the most used config keys, typed and documented from
``TrainConfig``'s fields; every other key through ``--set``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing

from ..engine.config import config_fields, config_types
from ..units import GB

# The config keys that get their own flag (``--train-list`` sets ``data.train_list``), with their help; the
# default is added from TrainConfig unless the text says what an unset key means.
FLAG_HELP = {
    "model.name": "preset, e.g. side4video-b16 (side4video models lists them all)",
    "model.task": "recognition or retrieval; must be the preset's task (default: the preset's)",
    "model.num_classes": "classes of the recognition head (default: the names in label_names, else the "
                         "largest label of the training list + 1)",
    "model.frames": "frames per clip (default: the preset's, 8; 12 for retrieval)",
    "model.image_size": "input size in pixels (default: the preset backbone's, 224; 112 for tiny)",
    "model.pretrained": "backbone weights: OpenAI / open_clip / EVA-CLIP file or Hugging Face folder "
                        "(default: none, a random backbone)",
    "data.train_list": "training list: 'path label' or 'dir num_frames label' lines; retrieval: captions",
    "data.val_list": "validation list or captions (default: none, no evaluation)",
    "data.data_root": "folder the list's paths are relative to (default: the current directory)",
    "data.num_workers": "data loading processes per training process (default: 4, at most the CPU cores)",
    "data.tokenizer": "retrieval: CLIP tokenizer, tokenizer.json, a vocab.json + merges.txt folder or "
                      "bpe_simple_vocab_16e6.txt.gz (default: none)",
    "optim.epochs": "training epochs",
    "optim.batch_size": "videos per process and step (default: 32, less when an epoch would have fewer "
                        "than 4 steps)",
    "optim.lr": "peak learning rate, after a linear warm-up, then cosine",
    "run.device": "auto, cpu, cuda or cuda:N",
    "run.seed": "seed of the initial weights, sampling and augmentation",
    "run.output_dir": "folder for checkpoints, config.yaml, log.jsonl, curves.png and TensorBoard events",
    "run.resume": "auto (OUTPUT_DIR/last.pt if present) or a checkpoint path (default: start afresh)",
}
FLAG_KEYS = tuple(FLAG_HELP)
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


def batch_size_flag(text: str) -> int | str:
    """``--batch-size``: a number, or ``auto`` (the planner's batch for this machine's GPU)."""
    return text if text == "auto" else int(text)


def auto_batch(cfg):
    """``--batch-size auto``: the largest per-GPU batch the planner (``side4video fit``) finds for this
    machine's GPU, with the accumulation that keeps the config's global batch (batch x grad_accum x GPUs)
    and side-network checkpointing where that saves accumulation steps."""
    import torch

    from ..planner import plan

    if not (cfg.run.device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError("--batch-size auto plans for a CUDA GPU; give a number on this device")
    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    from ..engine.defaults import BATCH_SIZE, inference_defaults

    cfg = inference_defaults(cfg)  # the preset's frames where unset
    repeats = cfg.data.repeated_aug
    o = cfg.optim
    p = plan(cfg.model.name, torch.cuda.get_device_properties(torch.device(cfg.run.device)).total_memory,
             frames=cfg.model.frames, global_batch=(o.batch_size or BATCH_SIZE) * o.grad_accum * gpus * repeats,
             num_gpus=gpus,
             precision=("bf16-mixed" if o.amp_dtype == "bfloat16" else "fp16-mixed") if o.amp else "fp32",
             num_classes=cfg.model.num_classes)
    optim = dataclasses.replace(o, batch_size=max(1, p.batch_size // repeats), grad_accum=p.grad_accum)
    model = cfg.model
    if p.checkpointing:
        model = dataclasses.replace(model, overrides={**model.overrides, "checkpoint_parts": True})
    print(f"--batch-size auto: {optim.batch_size} x {optim.grad_accum} accumulation step(s) per GPU, "
          f"checkpointing {'on' if p.checkpointing else 'off'}, {p.train_memory_bytes / GB:.1f} GB predicted")
    return dataclasses.replace(cfg, optim=optim, model=model)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (also under torchrun)")
    p.add_argument("config", nargs="?", help="YAML file of TrainConfig keys (configs/*.yaml)")
    fields, types = config_fields(), config_types()
    for path, text in FLAG_HELP.items():
        default = fields[path].default
        shown = "" if default in (None, "", dataclasses.MISSING) or "default:" in text else f" (default: {default})"
        kind = {"type": batch_size_flag} if path == "optim.batch_size" else arg_type(types[path])
        p.add_argument(f"--{flag_dest(path).replace('_', '-')}", dest=flag_dest(path),
                       help=f"{text}{shown}; config key {path}", **kind)
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run already in output-dir (else refused); config key run.overwrite")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, flat or dotted: lr=3e-4, optim.lr=3e-4, model_overrides.dropout=0.3")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, defaults chosen from the data included, and exit")


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..engine.config import resolve_config, to_dict
    from ..engine.train import train

    flags = {path: getattr(args, flag_dest(path)) for path in FLAG_KEYS}
    auto = flags["optim.batch_size"] == "auto"
    flags = {**flags, "run.overwrite": args.overwrite} | ({"optim.batch_size": None} if auto else {})
    cfg = resolve_config(args.config, flags, args.set)
    if auto:
        cfg = auto_batch(cfg)
    if args.print_config:
        from ..engine.defaults import resolve_defaults

        cfg, notes = resolve_defaults(cfg)
        if notes:
            print("# defaults: " + ", ".join(notes))
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    metrics = train(cfg)
    if os.environ.get("RANK", "0") == "0":
        from ..plots import plot_run

        print(f"wrote {plot_run(cfg.run.output_dir)} (training curves)")
        if "val" in metrics:
            print(json.dumps(metrics["val"]))
    return 0
