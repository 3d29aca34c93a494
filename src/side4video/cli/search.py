"""``side4video search`` and ``side4video embed`` with a retrieval checkpoint (see ``side4video.search``)."""

from __future__ import annotations

import argparse
import json
import sys


def _add_retrieval_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="retrieval training checkpoint")
    p.add_argument("--tokenizer", help="CLIP tokenizer (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, help="videos or texts per forward pass")
    p.add_argument("--device", default="auto")


def _video_index(args: argparse.Namespace, model, cfg, cache_file: str | None):
    """Embeddings of every video under ``args.videos`` (through the cache, if any); reports the unreadable."""
    from ..search import EmbeddingCache, encode_videos, find_videos, model_key

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
    p.add_argument("--cache", help="embedding cache file (default: VIDEOS/.side4video_embeddings.pt, or the user "
                   "cache directory when VIDEOS is not writable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per query")
    _add_retrieval_model_flags(p)


def run_search(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from ..search import default_cache_path, load_retrieval_model, search

    model, cfg, tokenizer = load_retrieval_model(args.checkpoint, resolve_device(args.device), args.tokenizer)
    index = _video_index(args, model, cfg, args.cache or default_cache_path(args.videos))
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


def run_embed(args: argparse.Namespace) -> int:
    """Videos: ``{"paths", "embeddings" (N, T, E) or (N, E), "errors"}``; texts: ``{"texts",
    "embeddings" (N, L, E) with "mask" (N, L), or (N, E)}``; both with "kind", "checkpoint", "model_name"."""
    import torch

    from ..engine.distributed import resolve_device
    from ..search import encode_texts, load_retrieval_model

    model, cfg, tokenizer = load_retrieval_model(args.checkpoint, resolve_device(args.device), args.tokenizer)
    out = {"checkpoint": args.checkpoint, "model_name": cfg.model.name}
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
