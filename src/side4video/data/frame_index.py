"""Where every frame of a video file is: a per-file frame index read from the demuxed packets.

Frame ``i`` of a video file is the ``i``-th frame that a sequential decode of the whole file outputs (what
``ffmpeg`` or OpenCV frame extraction produces), and the frame count is the number of frames that decode
yields. The index predicts that sequence without decoding: every video packet that carries data gives one
frame, and the decoder outputs frames in presentation order, so frame ``i`` is the packet with the
``i``-th smallest presentation timestamp (pts). The index stores those sorted pts (to identify a decoded
frame by its pts) and the positions of the keyframes (to start decoding in the middle of the file).

Streams whose packets do not identify frames (pts missing or repeated, or a codec whose packets may
decode to no frame) are indexed by one full decode instead, which records the pts the decoder outputs (or,
without usable pts, only the count: such files are read by decoding from the start). A reader that finds
a decode disagreeing with the index replaces it by a decode index (``index_from_decode``), so nothing is
ever guessed.

Indices are cached per file, keyed by (path, size, mtime): in memory per process (each DataLoader worker
keeps its own) and, optionally, as small JSON files in a directory shared by all processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import av
import numpy as np

# Anomalies worth a warning: the file is still read correctly, but its metadata cannot be trusted.
AnomalyKind = Literal["frame_count", "timestamps", "frame_rate", "corrupt_packets"]
INDEX_CACHE_ENV = "SIDE4VIDEO_INDEX_CACHE"  # directory of the on-disk index cache, when set
_FORMAT_VERSION = 1
# Codecs whose packets may carry data yet decode to no frame: MPEG-4 Part 2 "not coded" VOPs (the
# placeholders of packed-B-frame AVIs, frames an encoder dropped). Their files are indexed by a decode.
FRAMELESS_PACKET_CODECS = frozenset({"mpeg4"})


ReadErrorKind = Literal["missing", "empty", "undecodable", "too_short"]


class VideoReadError(RuntimeError):
    """A video (file or frame folder) that cannot give the frames asked for; ``kind`` classifies why."""

    def __init__(self, path: str, reason: str, kind: ReadErrorKind = "undecodable"):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind

    def __reduce__(self):  # picklable across DataLoader workers
        return type(self), (self.path, self.reason, self.kind)


@dataclass(frozen=True)
class Anomaly:
    kind: AnomalyKind
    reason: str


@dataclass(frozen=True)
class FrameIndex:
    """The frames of one video file, in the order a sequential decode outputs them."""

    count: int  # frames a sequential decode yields
    source: Literal["packets", "decode"]  # read from the demuxed packets, or from a full decode
    pts: array | None = None  # (count,) int64 pts of frame i, increasing; None: frames known by count only
    keyframes: tuple[int, ...] = ()  # sorted frame positions a decode can start from (after a seek)
    key_dts: tuple[int, ...] = ()  # per keyframe, its dts (its pts where the packet has none)
    header_count: int | None = None  # the frame count the container declares, if any
    truncated: bool = False  # the last packet is incomplete: the file was cut
    anomalies: tuple[Anomaly, ...] = field(default=())

    @property
    def seekable(self) -> bool:
        """Whether frames can be reached by seeking and identified by pts (else: decode from the start)."""
        return self.pts is not None and bool(self.keyframes)

    def positions(self) -> dict[int, int]:
        """pts -> frame position (built on demand: an index in the cache stays a compact array)."""
        return {p: i for i, p in enumerate(self.pts or ())}

    def to_json(self) -> dict:
        data = asdict(self)
        data["pts"] = None if self.pts is None else self.pts.tolist()
        return {"version": _FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> FrameIndex:
        if data.pop("version", None) != _FORMAT_VERSION:
            raise ValueError("frame index of another format version")
        pts = data.pop("pts")
        return cls(
            pts=None if pts is None else array("q", pts),
            keyframes=tuple(data.pop("keyframes")),
            key_dts=tuple(data.pop("key_dts")),
            anomalies=tuple(Anomaly(**a) for a in data.pop("anomalies")),
            **data,
        )


def _stat(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError:
        raise VideoReadError(path, "missing file", "missing") from None
    if not os.path.isfile(path):
        raise VideoReadError(path, "missing file", "missing")
    if st.st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)", "empty")
    return st


def open_video(path: str) -> av.container.InputContainer:
    """Open a video file for decoding its first video stream; raises ``VideoReadError``."""
    _stat(path)
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoReadError(path, f"undecodable: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "undecodable: no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # one core per reader: DataLoader workers supply the parallelism
    return container


def _frame_rate_anomaly(pts: np.ndarray, time_base) -> Anomaly | None:
    """Variable frame rate: frame durations differing by more than a tick and 5 % of the median."""
    if len(pts) < 3:
        return None
    steps = np.diff(pts)
    median = float(np.median(steps))
    if steps.max() - steps.min() <= max(1.0, 0.05 * median):
        return None
    ms = [round(float(s * time_base) * 1000, 1) for s in (steps.min(), steps.max())]
    return Anomaly("frame_rate", f"variable frame rate: frame durations from {ms[0]} to {ms[1]} ms")


def _count_anomaly(header: int | None, count: int, what: str) -> Anomaly | None:
    if header is None or header == count:
        return None
    return Anomaly("frame_count", f"the header says {header} frames, {what} {count}")


def index_from_packets(container: av.container.InputContainer) -> FrameIndex | None:
    """Index a freshly opened container from its demuxed video packets (no decoding), or None when the
    packets cannot identify frames (a timestamp missing or repeated) or may decode to no frame."""
    stream = container.streams.video[0]
    if stream.codec_context.name in FRAMELESS_PACKET_CODECS:
        return None
    pts, dts, key, corrupt = [], [], [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # end-of-stream marker / outside the edit list: no frame
            continue
        pts.append(packet.pts)
        dts.append(packet.dts)
        key.append(packet.is_keyframe)
        corrupt.append(packet.is_corrupt)
    if any(p is None for p in pts) or len(set(pts)) < len(pts):
        return None
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    sorted_pts = np.asarray(pts, dtype=np.int64)[order]
    keyframes = np.flatnonzero(np.asarray(key, dtype=bool)[order])
    key_dts = [pts[i] if dts[i] is None else dts[i] for i in order[keyframes].tolist()]
    header = stream.frames or None
    anomalies = [
        _count_anomaly(header, len(pts), "the stream holds"),
        _frame_rate_anomaly(sorted_pts, stream.time_base),
    ]
    known_dts = [d for d in dts if d is not None]
    if any(b <= a for a, b in zip(known_dts, known_dts[1:], strict=False)):
        anomalies.append(Anomaly("timestamps", "decoding timestamps are not increasing"))
    if any(corrupt[:-1]):
        anomalies.append(Anomaly("corrupt_packets", f"{sum(corrupt[:-1])} packet(s) flagged corrupt by the demuxer"))
    return FrameIndex(
        count=len(pts),
        source="packets",
        pts=array("q", sorted_pts.tolist()),
        keyframes=tuple(keyframes.tolist()),
        key_dts=tuple(key_dts),
        header_count=header,
        truncated=bool(corrupt and corrupt[-1]),
        anomalies=tuple(a for a in anomalies if a is not None),
    )


def decode_frames(
    container: av.container.InputContainer, on_packet: Callable[[av.Packet], None] | None = None
) -> Iterator[av.VideoFrame]:
    """Every frame of a freshly opened container, decoded sequentially: the definition of frame order."""
    stream = container.streams.video[0]
    for packet in container.demux(stream):
        if on_packet is not None:
            on_packet(packet)
        yield from packet.decode()


def index_from_decode(
    container: av.container.InputContainer,
    visit: Callable[[int, av.VideoFrame], None] | None = None,
    *,
    seekable: bool = True,
) -> FrameIndex:
    """Index a freshly opened container by decoding it whole, calling ``visit(position, frame)`` on every
    frame. With ``seekable``, and when the decoded frames carry unique increasing pts, the index keeps them
    and the keyframes (frames of keyframe packets) for seeking; else frames are known by count only."""
    stream = container.streams.video[0]
    key_dts: dict[int, int] = {}  # keyframe packets: pts -> dts

    def note_keyframe(packet: av.Packet) -> None:
        if packet.is_keyframe and packet.pts is not None:
            key_dts[packet.pts] = packet.pts if packet.dts is None else packet.dts

    pts = []
    for frame in decode_frames(container, note_keyframe):
        if visit is not None:
            visit(len(pts), frame)
        pts.append(frame.pts)
    count, header = len(pts), stream.frames or None
    anomalies = [_count_anomaly(header, count, "decoding yields")]
    timed = None not in pts and all(b > a for a, b in zip(pts, pts[1:], strict=False))
    if None in pts:
        anomalies.append(Anomaly("timestamps", f"{pts.count(None)} of {count} frames have no timestamp"))
    elif not timed:
        anomalies.append(Anomaly("timestamps", "timestamps of the decoded frames are repeated or not increasing"))
    else:
        anomalies.append(_frame_rate_anomaly(np.asarray(pts, dtype=np.int64), stream.time_base))
    keep = seekable and timed
    keyframes = [i for i, p in enumerate(pts) if p in key_dts] if keep else []
    return FrameIndex(
        count=count,
        source="decode",
        pts=array("q", pts) if keep else None,
        keyframes=tuple(keyframes),
        key_dts=tuple(key_dts[pts[i]] for i in keyframes),
        header_count=header,
        anomalies=tuple(a for a in anomalies if a is not None),
    )


class FrameIndexCache:
    """Frame indices keyed by (path, size, mtime): an LRU in memory and, with ``directory``, JSON files."""

    def __init__(self, directory: str | os.PathLike | None = None, capacity: int = 4096):
        self.directory = os.fspath(directory) if directory else None
        self.capacity = capacity
        self._memory: OrderedDict[tuple, FrameIndex] = OrderedDict()

    @staticmethod
    def key(path: str) -> tuple[str, int, int]:
        """(absolute path, size, mtime); raises ``VideoReadError`` for a missing or empty file."""
        st = _stat(path)
        return os.path.abspath(path), st.st_size, st.st_mtime_ns

    def _file(self, key: tuple) -> str:
        digest = hashlib.sha1("\0".join(map(str, key)).encode()).hexdigest()
        return os.path.join(self.directory, digest[:2], f"{digest}.json")

    def get(self, key: tuple) -> FrameIndex | None:
        index = self._memory.get(key)
        if index is not None:
            self._memory.move_to_end(key)
            return index
        if self.directory is None:
            return None
        try:
            with open(self._file(key), encoding="utf-8") as f:
                index = FrameIndex.from_json(json.load(f))
        except (OSError, ValueError, TypeError, KeyError):
            return None  # absent, or written by another version: rebuilt
        self._remember(key, index)
        return index

    def put(self, key: tuple, index: FrameIndex) -> None:
        self._remember(key, index)
        if self.directory is None:
            return
        file = self._file(key)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        tmp = f"{file}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index.to_json(), f)
        os.replace(tmp, file)  # atomic: concurrent workers never read half a file

    def _remember(self, key: tuple, index: FrameIndex) -> None:
        self._memory[key] = index
        self._memory.move_to_end(key)
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)

    def clear(self) -> None:
        """Forget the in-memory indices (files on disk stay)."""
        self._memory.clear()


_default_cache = FrameIndexCache(os.environ.get(INDEX_CACHE_ENV) or None)


def default_cache() -> FrameIndexCache:
    """The process-wide cache; on disk when the environment variable ``SIDE4VIDEO_INDEX_CACHE`` names a
    directory."""
    return _default_cache


def frame_index(
    path: str, cache: FrameIndexCache | None = None, *, container: av.container.InputContainer | None = None
) -> FrameIndex:
    """The frame index of a video file, from ``cache`` (default: the process-wide one) or built: from the
    packets, or by a full decode when they lack timestamps. ``container``: the file, freshly opened, to
    demux on a cache miss (it is then left at its end). Raises ``VideoReadError``."""
    cache = default_cache() if cache is None else cache
    key = cache.key(path)
    index = cache.get(key)
    if index is None:
        try:
            if container is not None:
                index = index_from_packets(container)
            else:
                with open_video(path) as own:
                    index = index_from_packets(own)
            if index is None:
                with open_video(path) as own:
                    index = index_from_decode(own)
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"undecodable: {e}") from e
        cache.put(key, index)
    if index.truncated:
        header = f" (the header says {index.header_count} frames)" if index.header_count else ""
        raise VideoReadError(path, f"undecodable: truncated, the last of {index.count} packets is incomplete{header}")
    return index
