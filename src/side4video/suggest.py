""""Did you mean ...?" for a mistyped name: the closest valid name by edit similarity."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` that looks most like ``name`` (case-insensitive), or None if none is close."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to ``name``, or ``""`` if none is close."""
    match = closest(name, choices)
    return f" (did you mean {match!r}?)" if match else ""
