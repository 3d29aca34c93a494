"""Frame-accurate decoding of the frames a clip needs, from video files (PyAV) or frame folders.

Both readers take a list of 0-based frame indices (any order, repeats allowed) and return the frames in
that order as one ``uint8`` array ``(len(indices), H, W, 3)``, RGB.

Video files: the frame count comes from the stream header, or from decoding when the container gives
none. Frames are located by their presentation timestamp (pts), not by counting decoded frames, so a seek
lands on the right frame: for each run of nearby indices the reader seeks to the keyframe at or before the
first one and decodes forward, converting only the frames that are asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import partial
from typing import Literal

import av
import numpy as np
from PIL import Image

# A needed frame further than this past the last decoded one is reached by a new seek, not by decoding
# every frame in between.
SEEK_GAP = 48


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


def _open(path: str) -> av.container.InputContainer:
    if not os.path.isfile(path):
        raise VideoReadError(path, "missing file", "missing")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)", "empty")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoReadError(path, f"undecodable: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "undecodable: no video stream")
    return container


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def header_frame_count(path: str) -> int | None:
    """The frame count the container declares, or None when it gives none (e.g. WebM, Matroska)."""
    with _open(path) as container:
        return container.streams.video[0].frames or None


def read_all_frames(path: str) -> np.ndarray:
    """Every frame of a video file, in presentation order: ``(N, H, W, 3)`` uint8 RGB."""
    with _open(path) as container:
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"undecodable: {e}") from e
    if not frames:
        raise VideoReadError(path, "empty: no decodable frame", "empty")
    return np.stack(frames)


def count_frames(path: str, *, decode: bool = False) -> int:
    """Number of frames of a video file: the stream header's count, or by decoding every frame when the
    header gives none (or when ``decode`` is set, which also proves every frame decodes)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0 and not decode:
            return stream.frames
        try:
            return sum(1 for _ in container.decode(stream))
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"undecodable: {e}") from e


def _runs(wanted: np.ndarray, gap: int) -> list[np.ndarray]:
    """Split sorted unique indices where consecutive ones are more than ``gap`` frames apart."""
    cuts = np.flatnonzero(np.diff(wanted) > gap) + 1
    return np.split(wanted, cuts)


def _timed(stream: av.video.stream.VideoStream) -> bool:
    """Whether frames can be located by pts (raw elementary streams, for one, have no timing)."""
    return _frame_rate(stream) is not None and stream.time_base is not None and stream.start_time is not None


def _decode_run(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    run: np.ndarray,
    found: dict[int, np.ndarray],
    *,
    start_from: Literal["keyframe", "here"],
) -> bool:
    """Decode forward until every index of ``run`` (sorted) is in ``found``.

    ``start_from``: seek to the keyframe at or before ``run[0]``, or go on from where the container is
    (a freshly opened one: its first frame). Frames are placed by pts when the stream is timed (a frame
    without pts is skipped, never guessed), else by counting from the first frame. Returns False when a
    seek overshot ``run[0]``.
    """
    timed, start = _timed(stream), stream.start_time or 0
    if start_from == "keyframe":
        pts = start + int(Fraction(int(run[0])) / _frame_rate(stream) / stream.time_base)
        container.seek(pts, stream=stream, backward=True)
    todo, last, first = set(run.tolist()) - found.keys(), int(run[-1]), True
    for count, frame in enumerate(container.decode(stream)):
        if not timed:
            index = count
        elif frame.pts is None:
            continue
        else:
            index = round((frame.pts - start) * stream.time_base * _frame_rate(stream))
        if first and start_from == "keyframe" and index > run[0]:
            return False
        first = False
        if index in todo:
            found[index] = frame.to_ndarray(format="rgb24")
            todo.discard(index)
        if index >= last or not todo:
            break
    return True


def read_video_frames(path: str, indices: Sequence[int], *, seek_gap: int = SEEK_GAP) -> np.ndarray:
    """Decode the frames ``indices`` (0-based) of a video file -> ``(len(indices), H, W, 3)`` uint8 RGB.

    Raises ``VideoReadError`` when the file is missing, empty or undecodable, or when a requested frame
    is past the last decodable frame (too short or truncated).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0 or indices.min() < 0:
        raise ValueError(f"frame indices must be a non-empty list of non-negative ints, got {indices}")
    wanted = np.unique(indices)  # sorted
    found: dict[int, np.ndarray] = {}
    try:
        with _open(path) as container:
            stream = container.streams.video[0]
            if stream.frames > 0 and wanted[-1] >= stream.frames:
                reason = f"too short: frame {wanted[-1]} requested, video has {stream.frames}"
                raise VideoReadError(path, reason, "too_short")
            timed = _timed(stream)
            if timed:
                runs = _runs(wanted, seek_gap)
                seeks_ok = all(_decode_run(container, stream, r, found, start_from="keyframe") for r in runs)
            else:  # without timing, counting from the first frame is the only way
                _decode_run(container, stream, wanted, found, start_from="here")
        if timed and not seeks_ok:  # an imprecise seek (e.g. MPEG-TS) overshot: decode from a fresh start
            with _open(path) as container:
                _decode_run(container, container.streams.video[0], wanted, found, start_from="here")
    except av.error.FFmpegError as e:
        raise VideoReadError(path, f"undecodable: {e}") from e
    missing = [int(i) for i in wanted if int(i) not in found]
    if missing:
        have = f"{len(found)} of {wanted.size} found"
        reason = f"too short or truncated: frame(s) {missing[:5]} not decodable ({have})"
        raise VideoReadError(path, reason, "too_short")
    return np.stack([found[int(i)] for i in indices])


def read_frame_folder(
    path: str, indices: Sequence[int], *, template: str = "img_{:05d}.jpg", start_index: int = 1
) -> np.ndarray:
    """Read frames ``indices`` (0-based) of a folder of images named ``template.format(i + start_index)``.

    Returns ``(len(indices), H, W, 3)`` uint8 RGB. Raises ``VideoReadError`` on a missing folder, a missing
    or undecodable image, or frames of different sizes.
    """
    if not os.path.isdir(path):
        raise VideoReadError(path, "missing frame folder", "missing")
    frames: dict[int, np.ndarray] = {}
    for i in sorted(set(int(i) for i in indices)):
        file = os.path.join(path, template.format(i + start_index))
        if not os.path.isfile(file):
            reason = f"too short or incomplete: missing frame {os.path.basename(file)}"
            raise VideoReadError(path, reason, "too_short")
        try:
            with Image.open(file) as img:
                frames[i] = np.asarray(img.convert("RGB"))
        except OSError as e:
            raise VideoReadError(path, f"undecodable frame {os.path.basename(file)}: {e}") from e
    shapes = {f.shape for f in frames.values()}
    if len(shapes) > 1:
        raise VideoReadError(path, f"frames of different sizes {sorted(shapes)}")
    return np.stack([frames[int(i)] for i in indices])


def video_frame_source(path: str) -> tuple[int, Callable[[Sequence[int]], np.ndarray]]:
    """Frame count of a video file and a function reading frames by index. A container that gives no
    count (WebM, Matroska, ...) is decoded once, whole."""
    n = header_frame_count(path)
    if n is not None:
        return n, partial(read_video_frames, path)
    frames = read_all_frames(path)
    return len(frames), frames.__getitem__
