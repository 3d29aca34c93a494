"""``side4video import`` (an authors' released checkpoint -> an export directory) and ``side4video zoo``."""

from __future__ import annotations

import argparse
import json


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a released Side4Video / ST-Adapter / ZeroI2V checkpoint")
    p.add_argument("checkpoint", help="the authors' file (layout detected from its keys)")
    p.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    p.add_argument("--pretrained", help="ST-Adapter: the OpenAI CLIP file its frozen ViT was trained from")
    p.add_argument("--frames", type=int, help="Side4Video: frames per clip (not stored; default 8)")
    p.add_argument("--config", help="ZeroI2V: an mmaction2 config file instead of the checkpoint's config text")


def run_import(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import CONFIG_FILE
    from ..official import import_official

    out = import_official(args.checkpoint, args.out, num_frames=args.frames, pretrained=args.pretrained,
                          config=args.config)
    config = json.loads((out / CONFIG_FILE).read_text())
    print(f"wrote {out}: {config['official_layout']} checkpoint as {config['model_name']} "
          f"({config['num_classes']} classes, {config['num_frames']} frames, {config['image_size']} px)")
    return 0


def add_zoo_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("zoo", help="the authors' released checkpoints: where they are, accuracy, import and eval commands")


def run_zoo(args: argparse.Namespace) -> int:
    from ..zoo import zoo_table

    print(zoo_table())
    return 0
