"""How sizes and counts are printed, everywhere: bytes in GB / MB (powers of ten, 1 GB = 10^9 bytes, as
the papers' tables), parameter counts exactly below a million and in millions with two decimals above."""

from __future__ import annotations

GB = 10**9
MB = 10**6


def format_bytes(n: float) -> str:
    """``7.38 GB`` from 1 GB up, ``93 MB`` below (``0 MB`` for nothing)."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / MB:.0f} MB"


def format_count(n: int) -> str:
    """``1,028`` below a million, ``4.53 M`` from a million up (``M`` = 10^6)."""
    return f"{n:,}" if n < MB else f"{n / MB:.2f} M"
