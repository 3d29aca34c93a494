"""Check every entry of an annotation list before training: malformed lines, duplicated entries and
missing, empty, undecodable or too-short videos, each reported with its list file and line number.

Every entry (line that is not blank or a comment) is either ok or has exactly one problem, so the
summary's counts add up: entries = ok + problems.

Videos that are read correctly but whose metadata cannot be trusted are reported as warnings: a header
frame count that differs from the frames the stream holds or decodes to, missing, repeated or
non-increasing timestamps, a variable frame rate, packets that disagree with a decode of the file."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import av
from PIL import Image
from tqdm import tqdm

from .frame_index import (
    Anomaly,
    AnomalyKind,
    VideoReadError,
    default_cache,
    frame_index,
    index_from_decode,
    open_video,
)
from .lists import ListKind, VideoRecord, parse_annotation_list

ProblemKind = Literal["malformed", "duplicate", "missing", "empty", "undecodable", "too_short"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    line: int  # 1-based line of the list file
    path: str  # the video's path, or the list file for a malformed line
    reason: str


@dataclass(frozen=True)
class DataWarning:
    kind: AnomalyKind
    line: int  # 1-based line of the list file
    path: str
    reason: str


@dataclass
class DataReport:
    list_file: str
    data_root: str
    num_frames: int
    num_entries: int = 0  # every entry of the list, malformed ones included
    num_ok: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[DataWarning] = field(default_factory=list)  # usable videos with untrustworthy metadata

    @property
    def ok(self) -> bool:
        """True when nothing is wrong; a command-line check exits non-zero otherwise."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))


def _video_frame_count(path: str, decode: bool) -> tuple[int, list[Anomaly]]:
    """Frames of a video file and its anomalies: from its frame index, or with ``decode`` from a full
    decode, compared with the index (a disagreeing index is replaced by the decode in the cache)."""
    cache = default_cache()
    index = frame_index(path, cache)
    if not decode or index.source == "decode":  # (a decode index comes from decoding every frame)
        return index.count, list(index.anomalies)
    try:
        with open_video(path) as container:
            decoded = index_from_decode(container)
    except av.error.FFmpegError as e:
        raise VideoReadError(path, f"undecodable: {e}") from e
    anomalies = list(decoded.anomalies)
    anomalies += [a for a in index.anomalies if a.kind == "timestamps" and a not in anomalies]
    if index.source == "packets" and index.count != decoded.count:
        reason = f"the packets announce {index.count} frames, decoding yields {decoded.count}"
        anomalies.append(Anomaly("frame_count", reason))
    if index.source == "packets" and (index.count, index.pts) != (decoded.count, decoded.pts):
        cache.put(cache.key(path), decoded)
    return decoded.count, anomalies


def _frame_count(record: VideoRecord, path: str, template: str, decode: bool) -> tuple[int, list[Anomaly]]:
    """Frames a video really has and its anomalies; raises ``VideoReadError`` for missing, empty or
    undecodable ones."""
    if record.num_frames is None:
        return _video_frame_count(path, decode)
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
    return record.num_frames, []


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

    ``decode`` decodes every frame (slow, thorough) and checks the decode against the frame index; without
    it, video files are only indexed from their packets, and frame folders only checked for their files.
    With ``num_classes``, a label outside ``[0, num_classes)`` is a malformed line.

    A video listed a second time (same path, after normalisation) is a ``duplicate`` problem on the later
    line and is not read again. A ``data_root`` that is not a directory raises ``FileNotFoundError``
    once, instead of one "missing" problem per video.
    """
    list_file, data_root = os.fspath(list_file), os.fspath(data_root) if data_root else ""
    records, errors = parse_annotation_list(list_file, list_kind, num_classes)
    if data_root and not os.path.isdir(data_root) and any(not os.path.isabs(r.path) for r in records):
        raise FileNotFoundError(f"data root {data_root}: no such directory (the paths of {list_file} are "
                                "relative to it)")
    report = DataReport(list_file, data_root, num_frames, num_entries=len(records) + len(errors))
    report.problems.extend(Problem("malformed", e.line, list_file, e.reason) for e in errors)
    seen: dict[str, VideoRecord] = {}  # normalised path -> its first entry
    for record in tqdm(records, desc=f"checking {os.path.basename(list_file)}", disable=not progress):
        path = os.path.join(data_root, record.path)
        first = seen.setdefault(os.path.normpath(path), record)
        if first is not record:
            clash = f"; label {first.label} there, {record.label} here" if first.label != record.label else ""
            report.problems.append(Problem("duplicate", record.line, path, f"also listed on line {first.line}{clash}"))
            continue
        try:
            n, anomalies = _frame_count(record, path, frames_template, decode)
            report.warnings.extend(DataWarning(a.kind, record.line, path, a.reason) for a in anomalies)
            if n == 0:
                raise VideoReadError(path, "empty: 0 frames", "empty")
            if n < num_frames:
                raise VideoReadError(path, f"too short: {n} frames, {num_frames} needed", "too_short")
            report.num_ok += 1
        except VideoReadError as e:
            report.problems.append(Problem(e.kind, record.line, path, e.reason))
    report.problems.sort(key=lambda p: p.line)
    report.warnings.sort(key=lambda w: w.line)
    return report


def format_report(report: DataReport, max_problems: int = 50) -> str:
    """Human-readable summary followed by one ``list:line: kind: reason`` row per problem, then one
    ``list:line: warning (kind): reason`` row per warning."""
    counts = report.counts()
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "none"
    lines = [
        f"{report.list_file}: {report.num_entries} entries, {report.num_ok} ok, "
        f"{len(report.problems)} problem(s) ({kinds}), {len(report.warnings)} warning(s); "
        f"{report.num_frames} frames needed",
    ]
    readable = report.num_entries - counts.get("malformed", 0) - counts.get("duplicate", 0)
    if readable > 1 and counts.get("missing", 0) == readable:
        root = f"under {report.data_root}" if report.data_root else "(no data root given)"
        lines.append(f"  none of the {readable} videos exists {root}: is the data root right?")
    for p in report.problems[:max_problems]:
        where = p.reason if p.kind == "malformed" else f"{p.path}: {p.reason}"
        lines.append(f"  {report.list_file}:{p.line}: {p.kind}: {where}")
    if len(report.problems) > max_problems:
        lines.append(f"  ... {len(report.problems) - max_problems} more")
    for w in report.warnings[:max_problems]:
        lines.append(f"  {report.list_file}:{w.line}: warning ({w.kind}): {w.path}: {w.reason}")
    if len(report.warnings) > max_problems:
        lines.append(f"  ... {len(report.warnings) - max_problems} more warnings")
    return "\n".join(lines)
