"""``side4video serve``: a local web page to search a folder of videos by text and classify a clip
(see ``side4video.web``; needs the ``web`` extra)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page: search a video folder by text, classify a clip")
    p.add_argument("--checkpoint", action="append", required=True, metavar="CKPT",
                   help="training checkpoint or export folder; twice to serve a retrieval and a recognition model")
    p.add_argument("--videos", help="folder of videos to search and to pick from (recursively)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; the page has no login)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tokenizer", help="retrieval: CLIP tokenizer (default: the run's)")
    p.add_argument("--labels", help="recognition: class names file (default: the run's)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest video file accepted for upload")


def run(args: argparse.Namespace) -> int:
    try:
        from ..web import create_app, serve
    except ImportError as e:
        print(f"side4video serve: error: needs the web extra (pip install \"side4video[web]\"): {e}", file=sys.stderr)
        return 1
    from ..engine.distributed import resolve_device

    app = create_app(args.checkpoint, args.videos, device=resolve_device(args.device), tokenizer=args.tokenizer,
                     labels=args.labels, max_upload_mb=args.max_upload_mb)
    serve(app, args.host, args.port)
    return 0
