"""``side4video check-data``: decode every video of a list, report problems and warn about untrustworthy
metadata."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="decode every video of a list and report problems")
    p.add_argument("--list", required=True, dest="list_file", help="annotation list to check")
    p.add_argument("--data-root", required=True, help="folder the list's paths are relative to ('' for absolute paths)")
    p.add_argument("--frames", type=int, default=8, help="frames a clip needs (default: %(default)s)")
    p.add_argument("--num-classes", type=int, help="labels must lie in [0, N) (default: not checked)")
    p.add_argument("--frames-template", default="img_{:05d}.jpg",
                   help="file names in frame folders (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="index the demuxed packets only, do not decode every frame")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..data import check_data, format_report
    from ..typed_config import ConfigError

    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, got {args.num_classes}")
    report = check_data(args.list_file, args.data_root, args.frames, args.frames_template,
                        decode=not args.quick, num_classes=args.num_classes, progress=not args.json)
    print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}) if args.json else format_report(report))
    return 0 if report.ok else 1
