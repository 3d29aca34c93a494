"""Frame-exact decoding of the frames a clip needs, from video files (PyAV) or frame folders.

Both readers take a list of 0-based frame indices (any order, repeats allowed) and return the frames in
that order as one ``uint8`` array ``(len(indices), H, W, 3)``, RGB.

Video files: frame ``i`` is the ``i``-th frame a sequential decode of the whole file outputs, and the
frame count is the number of frames that decode yields (see ``frame_index``). The reader locates frames
with the file's frame index: it seeks to the keyframe at or before a wanted frame, or keeps decoding when
that is cheaper, identifies every decoded frame by its pts, checks that the decode agrees with the index
(no frame missing, none out of order) and converts to RGB only the wanted frames, optionally already
resized to a short side. Where the decode and the index disagree, the file is decoded from its start
and indexed by that decode instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import av
import numpy as np
from PIL import Image

from .frame_index import (
    FrameIndex,
    FrameIndexCache,
    ReadErrorKind,
    VideoReadError,
    decode_frames,
    default_cache,
    frame_index,
    index_from_decode,
    open_video,
)

__all__ = [
    "ReadErrorKind",
    "VideoReadError",
    "check_decode_short_side",
    "count_frames",
    "header_frame_count",
    "read_all_frames",
    "read_frame_folder",
    "read_video_frames",
    "video_frame_source",
]

# Seek to a keyframe instead of decoding on when it skips more than this many frames (a seek flushes the
# decoder and re-reads the frames between the keyframe and its reordering delay).
SEEK_MARGIN = 4
# Codecs whose non-reference frames no other frame depends on: an unwanted one may be skipped undecoded
# (a packet that carries no frame is then indistinguishable from a skipped one: see FRAMELESS_PACKET_CODECS).
_SKIPPABLE_NONREF = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video"})


class _Disagreement(Exception):
    """A decode that contradicts the frame index."""


class _Overshoot(Exception):
    """A seek that landed after the keyframe it aimed at."""


# Container formats (by name) whose seeks compare timestamps with dts: a seek to a keyframe's pts can land
# on the next keyframe there (MPEG-TS). Learnt from overshooting seeks; elsewhere (MP4, Matroska, AVI) a
# seek to the pts lands on the keyframe, and one to the dts, earlier than the pts, on the keyframe before.
_SEEK_BY_DTS: set[str] = set()


def header_frame_count(path: str) -> int | None:
    """The frame count the container declares, or None when it gives none (e.g. WebM, Matroska)."""
    with open_video(path) as container:
        return container.streams.video[0].frames or None


def read_all_frames(path: str, *, short_side: int | None = None) -> np.ndarray:
    """Every frame of a video file, decoded sequentially: ``(N, H, W, 3)`` uint8 RGB."""
    frames: list[np.ndarray] = []
    with open_video(path) as container:
        try:
            index_from_decode(container, lambda _, frame: frames.append(_to_rgb(frame, short_side)))
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"undecodable: {e}") from e
    if not frames:
        raise VideoReadError(path, "empty: no decodable frame", "empty")
    return np.stack(frames)


def count_frames(path: str, *, decode: bool = False, cache: FrameIndexCache | None = None) -> int:
    """Number of frames of a video file: from its frame index (demuxed packets, no decoding), or with
    ``decode`` by decoding every frame (which also proves every frame decodes)."""
    if not decode:
        return frame_index(path, cache).count
    with open_video(path) as container:
        try:
            return index_from_decode(container).count
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"undecodable: {e}") from e


def _decode_from(
    container: av.container.InputContainer,
    index: FrameIndex,
    position: dict[int, int],
    start: int | None,
    wanted: set[int],
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(position, frame) of the frames decoded after a seek to keyframe ``start``, or from the first frame
    of a freshly opened container (``start`` None), checked against the index (``position``: pts -> frame).

    Frames before ``start`` (leading frames of an open GOP) are dropped. Unwanted non-reference frames
    may be skipped undecoded; any other frame the index promises but the decoder does not output, an
    unknown pts or a frame out of order raises ``_Disagreement``; a decode that starts past ``start`` (or
    never reaches it) raises ``_Overshoot``.
    """
    stream = container.streams.video[0]
    codec = stream.codec_context
    skippable = codec.name in _SKIPPABLE_NONREF
    target = 0 if start is None else start
    skipped: set[int] = set()
    last = None if start is not None else -1  # position of the last frame given; None: not started
    for packet in container.demux(stream):
        if skippable and packet.pts is not None:
            pos = position.get(packet.pts)
            skip = pos is not None and pos != target and pos not in wanted
            codec.skip_frame = "NONREF" if skip else "DEFAULT"
            if skip:
                skipped.add(pos)
        for frame in packet.decode():
            pos = position.get(frame.pts) if frame.pts is not None else None
            if pos is None:
                raise _Disagreement(f"a decoded frame has a pts ({frame.pts}) the index lacks")
            if last is None:  # after a seek: wait for the keyframe aimed at
                if pos > target:
                    raise _Overshoot
                if pos < target:
                    continue
                last = pos - 1
            if pos <= last:
                raise _Disagreement(f"frame {pos} decoded after frame {last}")
            if not skipped.issuperset(range(last + 1, pos)):
                raise _Disagreement(f"frame(s) {last + 1}..{pos - 1} not output by the decoder")
            last = pos
            yield pos, frame
    if last is None:  # the seek landed past the keyframe, where no frame decodes
        raise _Overshoot
    if not skipped.issuperset(range(last + 1, index.count)):
        raise _Disagreement(f"the decode ended after frame {last} of {index.count}")


def _read_indexed(
    path: str,
    container: av.container.InputContainer,
    index: FrameIndex,
    wanted: np.ndarray,
    convert: Callable[[av.VideoFrame], np.ndarray],
) -> dict[int, np.ndarray]:
    """Decode the sorted unique positions ``wanted`` with a seekable index from ``container`` (wherever it
    stands): per wanted frame, seek to the keyframe at or before it, or decode on when that keyframe is not
    far enough ahead of the decoder."""
    found: dict[int, np.ndarray] = {}
    keyframes = np.asarray(index.keyframes)
    todo, position = set(wanted.tolist()), index.positions()
    stream, by_dts = container.streams.video[0], container.format.name in _SEEK_BY_DTS
    fresh = None  # a new container, for frames before the first keyframe
    frames, cursor = None, -1  # the decode under way; the position it last gave
    try:
        for w in wanted.tolist():
            k = int(np.searchsorted(keyframes, w, side="right")) - 1  # keyframe at or before w
            while w not in found:
                if frames is None or w <= cursor or (k >= 0 and keyframes[k] > cursor + SEEK_MARGIN):
                    if k < 0:  # only a decode from the very start reaches w
                        if fresh is not None:
                            fresh.close()
                        container = fresh = open_video(path)
                        stream = container.streams.video[0]
                        frames, cursor = _decode_from(container, index, position, None, todo), -1
                    else:
                        ts = index.key_dts[k] if by_dts else index.pts[keyframes[k]]
                        container.seek(ts, stream=stream, backward=True)
                        frames, cursor = _decode_from(container, index, position, int(keyframes[k]), todo), -1
                try:
                    for pos, frame in frames:
                        cursor = pos
                        if pos in todo:
                            found[pos] = convert(frame)
                            todo.discard(pos)
                        if pos >= w:
                            break
                    else:
                        raise _Disagreement(f"frame {w} never decoded")
                except _Overshoot:  # aim by dts, then at the keyframe before
                    if by_dts:
                        k -= 1
                    by_dts, cursor = True, w
                    _SEEK_BY_DTS.add(container.format.name)
    finally:
        if fresh is not None:
            fresh.close()
    return found


def _read_sequential(path: str, wanted: np.ndarray, convert) -> dict[int, np.ndarray]:
    """Decode from the start up to the last of the sorted positions ``wanted``, counting frames."""
    found: dict[int, np.ndarray] = {}
    todo, last = set(wanted.tolist()), int(wanted[-1])
    with open_video(path) as container:
        for pos, frame in enumerate(decode_frames(container)):
            if pos in todo:
                found[pos] = convert(frame)
            if pos >= last:
                break
    return found


def _reindex(
    path: str, wanted: np.ndarray, convert, cache: FrameIndexCache, *, seekable: bool
) -> tuple[FrameIndex, dict]:
    """Index a file by decoding it whole (replacing its cached index) and keep the ``wanted`` frames."""
    found: dict[int, np.ndarray] = {}
    todo = set(wanted.tolist())

    def keep(pos: int, frame: av.VideoFrame) -> None:
        if pos in todo:
            found[pos] = convert(frame)

    with open_video(path) as container:
        index = index_from_decode(container, keep, seekable=seekable)
    cache.put(cache.key(path), index)
    return index, found


def _to_rgb(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, resized by swscale (bilinear) so that its short side is ``short_side``."""
    h, w = frame.height, frame.width
    if short_side is None or min(h, w) == short_side:
        return frame.to_ndarray(format="rgb24", threads=1)
    scale = short_side / min(h, w)
    size = dict(height=max(1, round(h * scale)), width=max(1, round(w * scale)))
    return frame.to_ndarray(format="rgb24", interpolation="BILINEAR", threads=1, **size)


def read_video_frames(
    path: str,
    indices: Sequence[int],
    *,
    short_side: int | None = None,
    cache: FrameIndexCache | None = None,
    container: av.container.InputContainer | None = None,
) -> np.ndarray:
    """Decode the frames ``indices`` (0-based) of a video file -> ``(len(indices), H, W, 3)`` uint8 RGB.

    ``short_side``: resize each wanted frame at conversion so that its short side has this many pixels
    (the full-size RGB frame never exists). ``container``: the file already opened, wherever it stands (it
    is closed after the read). Raises ``VideoReadError`` when the file is missing, empty or undecodable, or
    when a requested frame is past the last decodable frame (too short or truncated).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0 or indices.min() < 0:
        raise ValueError(f"frame indices must be a non-empty list of non-negative ints, got {indices}")
    wanted = np.unique(indices)  # sorted
    cache = default_cache() if cache is None else cache
    convert = partial(_to_rgb, short_side=short_side)
    found = None
    fresh = container is None
    with open_video(path) if fresh else container as container:
        index = frame_index(path, cache, container=container if fresh else None)  # a fresh one also indexes
        _check_length(path, index, wanted)
        try:
            if index.seekable:
                found = _read_indexed(path, container, index, wanted, convert)
            else:
                found = _read_sequential(path, wanted, convert)
        except (_Disagreement, av.error.FFmpegError):  # decode the file whole: what it yields is the truth
            pass
    if found is None or len(found) < wanted.size:
        try:  # a decode index that disagrees with a decode after a seek is replaced by one read from the start
            index, found = _reindex(path, wanted, convert, cache, seekable=index.source == "packets")
        except av.error.FFmpegError as e:
            raise VideoReadError(path, f"undecodable: {e}") from e
        _check_length(path, index, wanted)
    return np.stack([found[int(i)] for i in indices])


def _check_length(path: str, index: FrameIndex, wanted: np.ndarray) -> None:
    if wanted[-1] >= index.count:
        reason = f"too short: frame {wanted[-1]} requested, video has {index.count}"
        raise VideoReadError(path, reason, "too_short")


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


def check_decode_short_side(short_side: int | None, image_size: int) -> int | None:
    """A decode-time short side for clips cropped to ``image_size``: not below it (views would be upscaled)."""
    if short_side is not None and short_side < image_size:
        raise ValueError(f"decode_short_side {short_side} is smaller than the image size {image_size}")
    return short_side


class _FileReader:
    """``indices -> frames`` of one video file; the first read goes on with the container that indexed it."""

    def __init__(self, path: str, container: av.container.InputContainer, **kwargs):
        self.path, self.container, self.kwargs = path, container, kwargs

    def __call__(self, indices: Sequence[int]) -> np.ndarray:
        container, self.container = self.container, None
        return read_video_frames(self.path, indices, container=container, **self.kwargs)


def video_frame_source(
    path: str, *, short_side: int | None = None, cache: FrameIndexCache | None = None
) -> tuple[int, Callable[[Sequence[int]], np.ndarray]]:
    """Frame count of a video file (from its frame index) and a function reading frames by index, resized
    to ``short_side`` when given."""
    container = open_video(path)
    try:
        n = frame_index(path, cache, container=container).count
    except BaseException:
        container.close()
        raise
    return n, _FileReader(path, container, short_side=short_side, cache=cache)
