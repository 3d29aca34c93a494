"""Annotation lists (mmaction2 style) and label-name files.

Video list, one entry per line:          ``path label``
Frame-folder list, one entry per line:   ``dir num_frames label``

Blank lines and lines starting with ``#`` are ignored. Fields are separated by whitespace, so paths cannot
contain spaces. A list holds one kind of entry; with ``kind="auto"`` the first entry decides which.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

ListKind = Literal["auto", "video", "frames"]


class ListFormatError(ValueError):
    """A malformed line of an annotation or label-name file."""

    def __init__(self, file: str, line: int, reason: str):
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.file, self.line, self.reason)


@dataclass(frozen=True)
class VideoRecord:
    path: str  # as written in the list, relative to the data root
    label: int
    num_frames: int | None  # given by frame-folder lists; None for video files
    line: int  # 1-based line number in the list file


MAX_INT = 2**63 - 1  # what a label or frame count must fit in (int64 tensors)


def _parse_int(text: str, what: str, file: str, line: int, limit: int = MAX_INT) -> int:
    """A non-negative integer ``<= limit``."""
    if not re.fullmatch(r"\d+", text):
        raise ListFormatError(file, line, f"{what} must be a non-negative integer, got {text!r}")
    if len(text) > 19 or int(text) > limit:
        bound = f"below num_classes = {limit + 1}" if limit < MAX_INT else f"at most {MAX_INT}"
        raise ListFormatError(file, line, f"{what} {text} out of range: must be {bound}")
    return int(text)


def parse_annotation_list(
    list_file: str, kind: ListKind = "auto", num_classes: int | None = None
) -> tuple[list[VideoRecord], list[ListFormatError]]:
    """Parse every line, collecting malformed ones instead of stopping at the first; labels must lie in
    ``[0, num_classes)`` when it is given. A missing or non-UTF-8 file raises, naming it."""
    records: list[VideoRecord] = []
    errors: list[ListFormatError] = []
    label_limit = MAX_INT if num_classes is None else num_classes - 1
    for lineno, raw in _numbered_lines(list_file):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if kind == "auto" and len(fields) in (2, 3):
            kind = "video" if len(fields) == 2 else "frames"
        want = {"video": 2, "frames": 3}.get(kind)
        if len(fields) != want:
            layout = {"video": "'path label'", "frames": "'dir num_frames label'"}.get(
                kind, "'path label' or 'dir num_frames label'"
            )
            errors.append(ListFormatError(list_file, lineno, f"expected {layout}, got {text!r}"))
            continue
        try:
            num_frames = _parse_int(fields[1], "num_frames", list_file, lineno) if want == 3 else None
            label = _parse_int(fields[-1], "label", list_file, lineno, label_limit)
        except ListFormatError as e:
            errors.append(e)
            continue
        records.append(VideoRecord(fields[0], label, num_frames, lineno))
    return records, errors


def _numbered_lines(path: str):
    """``(line number, text)`` of a UTF-8 text file; a missing or undecodable file names itself."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such list file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ListFormatError(path, lineno, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_annotation_list(list_file: str, kind: ListKind = "auto", num_classes: int | None = None) -> list[VideoRecord]:
    """Records of ``list_file``; raises ``ListFormatError`` (file and line) on the first malformed line or
    label outside ``[0, num_classes)``."""
    records, errors = parse_annotation_list(list_file, kind, num_classes)
    if errors:
        raise errors[0]
    return records


def read_label_names(path: str, num_classes: int | None = None) -> list[str]:
    """Class names indexed by label id; with ``num_classes``, there must be a name for every class.

    Accepts one name per line (line order gives the id), or ``id name`` / ``id,name`` per line (an
    ``id,name`` header is skipped); with ids, they must cover 0..N-1 exactly once.
    """
    lines = [(n, t.strip()) for n, t in _numbered_lines(path)]
    lines = [(n, t) for n, t in lines if t and not t.startswith("#")]
    if lines and lines[0][1].replace(" ", "").lower() == "id,name":
        lines = lines[1:]
    pattern = re.compile(r"(\d+)\s*[,\s]\s*(\S.*)")
    matches = [pattern.fullmatch(t) for _, t in lines]
    if not lines or not all(matches):
        return _enough([t for _, t in lines], path, num_classes)
    names: dict[int, str] = {}
    for (n, _), m in zip(lines, matches, strict=True):
        i = int(m.group(1))
        if i in names:
            raise ListFormatError(path, n, f"label id {i} given twice")
        names[i] = m.group(2).strip()
    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names) + 1)) - names.keys())[:5]
        raise ListFormatError(path, lines[-1][0], f"label ids must be 0..{len(names) - 1}; missing {gaps}")
    return _enough([names[i] for i in range(len(names))], path, num_classes)


def _enough(names: list[str], path: str, num_classes: int | None) -> list[str]:
    if num_classes is not None and len(names) < num_classes:
        raise ValueError(f"{path}: {len(names)} class names for a {num_classes}-class model")
    return names
