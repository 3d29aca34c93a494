"""Check every entry of an annotation list before training: malformed lines and missing, empty,
undecodable or too-short videos, each reported with its list file and line number."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image
from tqdm import tqdm

from .lists import ListKind, VideoRecord, parse_annotation_list
from .video import VideoReadError, count_frames, header_frame_count

ProblemKind = Literal["malformed", "missing", "empty", "undecodable", "too_short"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    line: int  # 1-based line of the list file
    path: str  # the video's path, or the list file for a malformed line
    reason: str


@dataclass
class DataReport:
    list_file: str
    data_root: str
    num_frames: int
    num_entries: int = 0  # well-formed entries
    num_ok: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong; a command-line check exits non-zero otherwise."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))


def _frame_count(record: VideoRecord, path: str, template: str, decode: bool) -> int:
    """Frames a video really has; raises ``VideoReadError`` for missing, empty or undecodable ones."""
    if record.num_frames is None:
        n = count_frames(path, decode=decode)
        header = header_frame_count(path) if decode else None
        if header is not None and n < header:
            reason = f"truncated: the header says {header} frames, {n} decode"
            raise VideoReadError(path, reason, "undecodable")
        return n
    if not os.path.isdir(path):
        raise VideoReadError(path, "missing frame folder", "missing")
    for i in range(1, record.num_frames + 1):
        file = os.path.join(path, template.format(i))
        if not os.path.isfile(file):
            raise VideoReadError(path, f"incomplete: missing frame {os.path.basename(file)}", "too_short")
        if decode:
            try:
                with Image.open(file) as img:
                    img.load()
            except OSError as e:
                raise VideoReadError(path, f"undecodable frame {os.path.basename(file)}: {e}") from e
    return record.num_frames


def check_data(
    list_file: str | os.PathLike,
    data_root: str | os.PathLike | None,
    num_frames: int,
    frames_template: str = "img_{:05d}.jpg",
    *,
    decode: bool = True,
    list_kind: ListKind = "auto",
    num_classes: int | None = None,
    progress: bool = False,
) -> DataReport:
    """Read every entry of ``list_file``; a video with fewer than ``num_frames`` frames is too short.

    ``decode`` decodes every frame (slow, thorough); without it, video files are only opened and their
    header's frame count used, and frame folders only checked for their files. With ``num_classes``, a
    label outside ``[0, num_classes)`` is a malformed line.
    """
    list_file, data_root = os.fspath(list_file), os.fspath(data_root) if data_root else ""
    records, errors = parse_annotation_list(list_file, list_kind, num_classes)
    report = DataReport(list_file, data_root, num_frames, num_entries=len(records))
    report.problems.extend(Problem("malformed", e.line, list_file, e.reason) for e in errors)
    for record in tqdm(records, desc=f"checking {os.path.basename(list_file)}", disable=not progress):
        path = os.path.join(data_root, record.path)
        try:
            n = _frame_count(record, path, frames_template, decode)
            if n == 0:
                raise VideoReadError(path, "empty: 0 frames", "empty")
            if n < num_frames:
                raise VideoReadError(path, f"too short: {n} frames, {num_frames} needed", "too_short")
            report.num_ok += 1
        except VideoReadError as e:
            report.problems.append(Problem(e.kind, record.line, path, e.reason))
    report.problems.sort(key=lambda p: p.line)
    return report


def format_report(report: DataReport, max_problems: int = 50) -> str:
    """Human-readable summary followed by one ``list:line: kind: reason`` row per problem."""
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(report.counts().items())) or "none"
    lines = [
        f"{report.list_file}: {report.num_entries} entries, {report.num_ok} ok, "
        f"{len(report.problems)} problem(s) ({counts}); {report.num_frames} frames needed",
    ]
    for p in report.problems[:max_problems]:
        where = p.reason if p.kind == "malformed" else f"{p.path}: {p.reason}"
        lines.append(f"  {report.list_file}:{p.line}: {p.kind}: {where}")
    if len(report.problems) > max_problems:
        lines.append(f"  ... {len(report.problems) - max_problems} more")
    return "\n".join(lines)
