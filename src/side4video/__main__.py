"""``python -m side4video`` and ``torchrun -m side4video``: the command line of ``side4video.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
