"""``side4video`` command line: one small function per subcommand.

    side4video train [CONFIG] [--model NAME ...] [--set key=value ...]
    side4video eval --checkpoint CKPT [--val-list F --data-root DIR] [--views 3x2] [--json]
    side4video predict --checkpoint CKPT VIDEO... [--labels FILE] [--topk 5] [--json]
    side4video check-data --list F --data-root DIR
    side4video profile MODEL [--num-classes N --frames T --batch-size B --device meta|cpu|cuda --merged --json]
    side4video export CKPT --out DIR
    side4video import CKPT [--pretrained CLIP] [--frames T] [--config CFG] --out DIR
    side4video zoo
    side4video demo [--output-dir DIR]
    side4video search --checkpoint CKPT --videos DIR "a sentence" [--topk 5] [--json] [--cache FILE]
    side4video embed --checkpoint CKPT (--videos DIR | --texts FILE) --out FILE.pt
    side4video serve --checkpoint CKPT [--checkpoint CKPT] [--videos DIR] [--port 8000]

Each command is a pair of functions in a module of this package: one registers its flags, one runs it
with the parsed arguments and returns the exit code; ``COMMANDS`` lists the pairs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import data, evaluate, official, search, serve, tools, train

Command = tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "train": (train.add_parser, train.run),
    "eval": (evaluate.add_eval_parser, evaluate.run_eval),
    "predict": (evaluate.add_predict_parser, evaluate.run_predict),
    "check-data": (data.add_parser, data.run),
    "profile": (tools.add_profile_parser, tools.run_profile),
    "export": (tools.add_export_parser, tools.run_export),
    "import": (official.add_import_parser, official.run_import),
    "zoo": (official.add_zoo_parser, official.run_zoo),
    "demo": (tools.add_demo_parser, tools.run_demo),
    "search": (search.add_search_parser, search.run_search),
    "embed": (search.add_embed_parser, search.run_embed),
    "serve": (serve.add_parser, serve.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="side4video", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand. Every error is one line on stderr and a non-zero exit: 2 for a bad setting, 1 for
    bad input or a diverged model, 3 for anything unexpected (``--debug`` shows its traceback)."""
    args = build_parser().parse_args(argv)
    from ..data.video import VideoReadError
    from ..engine.tasks import NonFiniteError
    from ..typed_config import ConfigError

    try:
        return COMMANDS[args.command][1](args)
    except (ConfigError, NonFiniteError, OSError, NotImplementedError, ValueError, KeyError, VideoReadError) as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            message = f"{e.filename}: {e.strerror}"
        print(f"side4video {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except Exception as e:
        if args.debug:
            raise
        print(f"side4video {args.command}: unexpected error: {type(e).__name__}: {_one_line(e)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 3
