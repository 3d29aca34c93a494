"""``side4video eval`` and ``side4video predict``: metrics of a checkpoint, classes of video files."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import parse_views


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: multi-view accuracy or retrieval recalls")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--val-list", help="annotation list, or retrieval captions (default: the run's)")
    p.add_argument("--data-root", help="directory of the videos (default: the run's)")
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS (default: the training config's)")
    p.add_argument("--batch-size", type=int, help="videos per step")
    p.add_argument("--chunk", type=int, help="clips per forward pass")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--confusion", metavar="PNG", help="write the confusion matrix to this file")
    p.add_argument("--labels", help="class names file (for the confusion matrix)")
    p.add_argument("--caption-format", choices=["msrvtt", "msvd", "vatex", "tsv"], help="retrieval captions")
    p.add_argument("--val-split", choices=["val", "test"], help="retrieval split of msrvtt / msvd / vatex")
    p.add_argument("--tokenizer", help="retrieval tokenizer (default: the run's)")
    p.add_argument("--dsl", action="store_true", default=None, help="retrieval: add dual-softmax numbers")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run_eval(args: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate_checkpoint
    from ..engine.recognition import save_confusion
    from ..models import get_preset

    changes = {"val_list": args.val_list, "data_root": args.data_root, "eval_batch_size": args.batch_size,
               "eval_chunk": args.chunk, "num_workers": args.num_workers, "tokenizer": args.tokenizer,
               "caption_format": args.caption_format, "val_split": args.val_split, "dsl": args.dsl}
    if args.views is not None:
        changes["test_crops"], changes["test_clips"] = args.views
    if args.confusion:
        changes["confusion_matrix"] = True  # a retrieval model refuses it before evaluating
    metrics, preds, cfg = evaluate_checkpoint(args.checkpoint, args.device, progress=True, **changes)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    for sample in preds.bad:
        print(f"skipped bad sample {sample.path}: {sample.reason}", file=sys.stderr)
    task = get_preset(cfg.model.name).task
    if args.confusion:
        save_confusion(preds, args.confusion, args.labels or cfg.data.label_names)
    if args.json:
        print(json.dumps({**metrics, **task.eval_settings(cfg), "checkpoint": args.checkpoint}))
    else:
        print(f"{args.checkpoint}: {task.summary(metrics, cfg)}")
        print(task.describe(metrics))
    return 0


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify video files with a checkpoint")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--labels", help="class names file")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS (default: the training config's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object per video")


def run_predict(args: argparse.Namespace) -> int:
    from ..data import read_label_names
    from ..engine.checkpoint import load_model
    from ..engine.distributed import resolve_device
    from ..engine.predict import predict_videos
    from ..engine.recognition import RECOGNITION
    from ..models import get_preset

    model, cfg = load_model(args.checkpoint, resolve_device(args.device), with_config=True)
    task = get_preset(cfg.model.name).task
    if task is not RECOGNITION:
        raise ValueError(f"{args.checkpoint}: {cfg.model.name} is a {task.name} model; predict classifies "
                         "videos (use search or embed)")
    labels = args.labels or cfg.data.label_names
    names = read_label_names(labels, cfg.model.num_classes) if labels else None
    results = predict_videos(model, cfg, args.videos, topk=args.topk, views=args.views, label_names=names)
    failed = 0
    for r in results:
        failed += "error" in r
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"{r['path']}: error: {r['error']}", file=sys.stderr)
        else:
            print(r["path"])
            for c in r["top"]:
                print(f"  {c['prob']:.4f}  {c['label']}  {c.get('name', '')}".rstrip())
    return 1 if failed else 0
