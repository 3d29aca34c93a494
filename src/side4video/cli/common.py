"""Argument types shared by several commands."""

from __future__ import annotations

import argparse


def parse_views(text: str) -> tuple[int, int]:
    """``"3x2"`` -> (3 crops, 2 clips)."""
    try:
        crops, clips = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"views must look like CROPSxCLIPS, e.g. 3x2; got {text!r}") from None
    if crops < 1 or clips < 1:
        raise argparse.ArgumentTypeError(f"views must be positive, got {text!r}")
    return crops, clips
