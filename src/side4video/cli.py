"""``side4video`` command line: one small function per subcommand.

    side4video train [CONFIG] [--model NAME ...] [--set key=value ...]
    side4video eval --checkpoint CKPT [--val-list F --data-root DIR] [--views 3x2] [--json]
    side4video predict --checkpoint CKPT VIDEO... [--labels FILE] [--topk 5] [--json]
    side4video check-data --list F --data-root DIR
    side4video profile MODEL [--frames T --batch-size B --device meta|cpu|cuda --precision P --merged --json]
    side4video export CKPT --out DIR
    side4video demo [--output-dir DIR]
    side4video search --checkpoint CKPT --videos DIR "a sentence" [--topk 5] [--json] [--cache FILE]
    side4video embed --checkpoint CKPT (--videos DIR | --texts FILE) --out FILE.pt

A new subcommand is a ``add_<name>_parser`` function registering its flags and a ``cmd_<name>``
function run with the parsed arguments; both go into ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

# Flags of ``train`` that map one-to-one onto TrainConfig fields (dest -> field).
TRAIN_FLAGS = {
    "model": "model", "train_list": "train_list", "val_list": "val_list", "data_root": "data_root",
    "num_classes": "num_classes", "frames": "frames", "image_size": "image_size", "epochs": "epochs",
    "batch_size": "batch_size", "lr": "lr", "device": "device", "seed": "seed", "output_dir": "output_dir",
    "resume": "resume", "pretrained": "pretrained", "num_workers": "num_workers", "task": "task",
    "tokenizer": "tokenizer",
}


def parse_views(text: str) -> tuple[int, int]:
    """``"3x2"`` -> (3 crops, 2 clips)."""
    try:
        crops, clips = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"views must look like CROPSxCLIPS, e.g. 3x2; got {text!r}") from None
    if crops < 1 or clips < 1:
        raise argparse.ArgumentTypeError(f"views must be positive, got {text!r}")
    return crops, clips


# ---- train -----------------------------------------------------------------------------------------


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (also under torchrun)")
    p.add_argument("config", nargs="?", help="YAML file of TrainConfig keys (configs/*.yaml)")
    p.add_argument("--model", help="preset name, e.g. side4video-b16")
    p.add_argument("--task", choices=["recognition", "retrieval"], help="must match the preset's (default)")
    p.add_argument("--train-list", help="training annotation list")
    p.add_argument("--val-list", help="validation annotation list")
    p.add_argument("--data-root", help="directory the list paths are relative to")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--frames", type=int, help="frames per clip")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="videos per process and step")
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--output-dir")
    p.add_argument("--resume", help="'auto' (output-dir/last.pt if present) or a checkpoint path")
    p.add_argument("--pretrained", help="backbone weights file")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--tokenizer", help="retrieval: tokenizer.json, vocab.json + merges.txt folder or .txt.gz")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig key; dotted for nested keys, e.g. model_overrides.dropout=0.3")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from .engine.config import resolve_config, to_dict
    from .engine.train import train

    cfg = resolve_config(args.config, {k: getattr(args, k) for k in TRAIN_FLAGS}, args.set)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    metrics = train(cfg)
    if "val" in metrics and os.environ.get("RANK", "0") == "0":
        print(json.dumps(metrics["val"]))
    return 0


# ---- eval ------------------------------------------------------------------------------------------


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


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import read_label_names
    from .engine.config import ConfigError
    from .engine.evaluate import confusion_matrix, evaluate_checkpoint, save_confusion_matrix
    from .engine.tasks import get_task
    from .models import get_preset

    changes = {"val_list": args.val_list, "data_root": args.data_root, "eval_batch_size": args.batch_size,
               "eval_chunk": args.chunk, "num_workers": args.num_workers, "tokenizer": args.tokenizer,
               "caption_format": args.caption_format, "val_split": args.val_split, "dsl": args.dsl}
    if args.views is not None:
        changes["test_crops"], changes["test_clips"] = args.views
    metrics, preds, cfg = evaluate_checkpoint(args.checkpoint, args.device, progress=True, **changes)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    for sample in preds.bad:
        print(f"skipped bad sample {sample.path}: {sample.reason}", file=sys.stderr)
    task = get_task(get_preset(cfg.model).task)
    if task.name == "retrieval":
        if args.confusion:
            raise ConfigError(f"--confusion: {cfg.model} is a {task.name} model, not a classifier")
        if args.json:
            print(json.dumps({**metrics, "checkpoint": args.checkpoint}))
        else:
            print(f"{args.checkpoint}: {metrics['num_texts']} captions, {metrics['num_videos']} videos")
            print(task.describe(metrics))
        return 0
    if args.confusion:
        names = read_label_names(args.labels) if args.labels else None
        save_confusion_matrix(confusion_matrix(preds.probs, preds.labels), args.confusion, names)
    views = f"{cfg.test_crops}x{cfg.test_clips}"
    if args.json:
        print(json.dumps({**metrics, "views": views, "checkpoint": args.checkpoint}))
    else:
        print(f"{args.checkpoint}: {metrics['num_samples']} videos, views {views} (crops x clips)")
        print(f"top1 {metrics['top1']:.2f}  top5 {metrics['top5']:.2f}  "
              f"mean class acc {metrics['mean_class_acc']:.2f}")
    return 0


# ---- predict ---------------------------------------------------------------------------------------


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify video files with a checkpoint")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--labels", help="class names file")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS (default: the training config's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object per video")


def cmd_predict(args: argparse.Namespace) -> int:
    from .data import read_label_names
    from .engine.checkpoint import load_model_for_inference
    from .engine.distributed import resolve_device
    from .engine.predict import predict_videos

    model, cfg = load_model_for_inference(args.checkpoint, resolve_device(args.device))
    names = read_label_names(args.labels or cfg.label_names) if (args.labels or cfg.label_names) else None
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


# ---- check-data ------------------------------------------------------------------------------------


def add_check_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="decode every video of a list and report problems")
    p.add_argument("--list", required=True, dest="list_file")
    p.add_argument("--data-root", required=True)
    p.add_argument("--frames", type=int, default=8, help="frames a clip needs")
    p.add_argument("--frames-template", default="img_{:05d}.jpg")
    p.add_argument("--quick", action="store_true", help="read headers only, do not decode every frame")
    p.add_argument("--json", action="store_true")


def cmd_check_data(args: argparse.Namespace) -> int:
    import dataclasses

    from .data import check_data, format_report

    report = check_data(args.list_file, args.data_root, args.frames, args.frames_template,
                        decode=not args.quick, progress=not args.json)
    print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}) if args.json else format_report(report))
    return 0 if report.ok else 1


# ---- profile ---------------------------------------------------------------------------------------


def add_profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, FLOPs, activation and training memory of a preset")
    p.add_argument("model")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int)
    p.add_argument("--device", default="meta", choices=["meta", "cpu", "cuda"])
    p.add_argument("--merged", action="store_true", help="profile ZeroI2V after re-parameterisation")
    p.add_argument("--precision", choices=["fp32", "bf16-mixed", "fp16-mixed"],
                   help="training precision (default: what training uses on --device: fp32 on CPU, else bf16-mixed)")
    p.add_argument("--checkpoint-parts", action="store_true",
                   help="Side4Video: activation checkpointing of every side-block part")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_profile(args: argparse.Namespace) -> int:
    from .profiler import profile_model

    overrides = {"checkpoint_parts": True} if args.checkpoint_parts else {}
    prof = profile_model(args.model, num_classes=args.num_classes, frames=args.frames, batch_size=args.batch_size,
                         image_size=args.image_size, device=args.device, merged=args.merged, precision=args.precision,
                         **overrides)
    if args.json:
        print(json.dumps(prof.to_dict()))
        return 0
    gib = 1024**3
    print(f"{prof.model} on {prof.backbone}, {prof.frames} frames at {prof.image_size}px, batch {prof.batch_size}, "
          f"{prof.precision}")
    print(f"  parameters        {prof.total_params / 1e6:10.2f} M total, {prof.tunable_params / 1e6:.2f} M tunable")
    print(f"  GFLOPs per view   {prof.gflops_per_view:10.2f}")
    print(f"  weights           {prof.weight_bytes / gib:10.2f} GiB (+ gradients {prof.grad_bytes / gib:.2f}, "
          f"AdamW {prof.optimizer_bytes / gib:.2f}, batch {prof.input_bytes / gib:.2f})")
    print(f"  activations       {prof.activation_bytes / gib:10.2f} GiB kept for backward")
    print(f"  training memory   {prof.train_memory_bytes / gib:10.2f} GiB predicted peak of a training step")
    if prof.measured_peak_bytes is not None:
        print(f"  measured peak     {prof.measured_peak_bytes / gib:10.2f} GiB on {args.device} "
              f"(prediction {100 * prof.prediction_error:+.1f} %), {prof.step_time_s:.3f} s per step")
    return 0


# ---- export ----------------------------------------------------------------------------------------


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a ZeroI2V checkpoint's adapters into the ViT (verified) and save it")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    p.add_argument("--atol", type=float, default=1e-5, help="largest allowed merged-vs-unmerged difference")
    p.add_argument("--pretrained", help="backbone weights, for checkpoints saved without the frozen weights")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_merged

    out = export_merged(args.checkpoint, args.out, atol=args.atol, pretrained=args.pretrained)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out} (merged; max |merged - unmerged| = {config['merge_max_abs_diff']:.2e})")
    return 0


# ---- demo ------------------------------------------------------------------------------------------


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and compare every method on a synthetic temporal task (CPU, minutes)")
    p.add_argument("--output-dir", default="demo_output")
    p.add_argument("--epochs", type=int, help="training epochs per method (default: the demo's)")
    p.add_argument("--seed", type=int, default=0)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, epochs=args.epochs, seed=args.seed)
    return 0


# ---- search / embed --------------------------------------------------------------------------------


def _add_retrieval_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="retrieval training checkpoint")
    p.add_argument("--tokenizer", help="CLIP tokenizer (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, help="videos or texts per forward pass")
    p.add_argument("--device", default="auto")


def _video_index(args: argparse.Namespace, model, cfg, cache_file: str | None):
    """Embeddings of every video under ``args.videos`` (through the cache, if any); reports the unreadable."""
    from .search import EmbeddingCache, encode_videos, find_videos, model_key

    cache = EmbeddingCache(cache_file, model_key(args.checkpoint, cfg)) if cache_file else None
    index = encode_videos(model, cfg, find_videos(args.videos), cache, args.batch_size, progress=True)
    for path, reason in index.errors.items():
        print(f"unreadable video {path}: {reason}", file=sys.stderr)
    total = len(index.paths) + len(index.errors)
    source = f", {total - index.encoded} from the cache {cache_file}" if cache else ""
    print(f"{total} videos: {index.encoded} encoded{source}, {len(index.errors)} unreadable", file=sys.stderr)
    return index


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="rank the videos of a folder for sentences with a retrieval checkpoint")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("--videos", required=True, help="folder searched recursively for video files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--cache", help="embedding cache file (default: VIDEOS/.side4video_embeddings.pt)")
    p.add_argument("--json", action="store_true", help="print one JSON object per query")
    _add_retrieval_model_flags(p)


def cmd_search(args: argparse.Namespace) -> int:
    from .engine.distributed import resolve_device
    from .search import CACHE_NAME, load_retrieval_model, search

    model, cfg, tokenizer = load_retrieval_model(args.checkpoint, resolve_device(args.device), args.tokenizer)
    index = _video_index(args, model, cfg, args.cache or os.path.join(args.videos, CACHE_NAME))
    for query in args.queries:
        hits = search(model, tokenizer, index, query, args.topk)
        if args.json:
            print(json.dumps({"query": query, "results": hits, "errors": index.errors}))
            continue
        print(query)
        for hit in hits:
            print(f"  {hit['rank']:3d}  {hit['score']:.4f}  {hit['path']}")
    return 0


def add_embed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="export the video or text embeddings of a retrieval checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="folder searched recursively for video files")
    source.add_argument("--texts", help="text file, one sentence per line")
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--cache", help="videos: read and update this embedding cache file")
    _add_retrieval_model_flags(p)


def cmd_embed(args: argparse.Namespace) -> int:
    """Videos: ``{"paths", "embeddings" (N, T, E) or (N, E), "errors"}``; texts: ``{"texts",
    "embeddings" (N, L, E) with "mask" (N, L), or (N, E)}``; both with "kind", "checkpoint", "model_name"."""
    import torch

    from .engine.distributed import resolve_device
    from .search import encode_texts, load_retrieval_model

    model, cfg, tokenizer = load_retrieval_model(args.checkpoint, resolve_device(args.device), args.tokenizer)
    out = {"checkpoint": args.checkpoint, "model_name": cfg.model}
    if args.videos:
        index = _video_index(args, model, cfg, args.cache)
        out.update(kind="video", paths=index.paths, embeddings=index.embeddings, errors=index.errors)
    else:
        with open(args.texts, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
        emb, mask = encode_texts(model, tokenizer, texts, args.batch_size)
        out.update(kind="text", texts=texts, embeddings=emb, **({"mask": mask} if emb.ndim == 3 else {}))
    torch.save(out, args.out)
    print(f"wrote {args.out}: {out['kind']} embeddings {tuple(out['embeddings'].shape)}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (add_train_parser, cmd_train),
    "eval": (add_eval_parser, cmd_eval),
    "predict": (add_predict_parser, cmd_predict),
    "check-data": (add_check_data_parser, cmd_check_data),
    "profile": (add_profile_parser, cmd_profile),
    "export": (add_export_parser, cmd_export),
    "demo": (add_demo_parser, cmd_demo),
    "search": (add_search_parser, cmd_search),
    "embed": (add_embed_parser, cmd_embed),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="side4video", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine.config import ConfigError
    from .engine.train import NonFiniteLossError

    try:
        return COMMANDS[args.command][1](args)
    except (ConfigError, NonFiniteLossError, FileNotFoundError, NotImplementedError, ValueError, KeyError) as e:
        print(f"side4video {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
