"""The main job: on generated MP4s Side4Video learns motion direction; a frame-averaging probe cannot."""

import json
from pathlib import Path

import pytest
import torch

from side4video.data import make_motion_dataset
from side4video.demo import FRAMES, IMAGE_SIZE, METHODS, VAL_PER_CLASS, VIDEOS_PER_CLASS, _train_config, run_demo
from side4video.engine.train import train


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    return make_motion_dataset(tmp_path_factory.mktemp("motion"), VIDEOS_PER_CLASS, num_frames=FRAMES,
                               size=IMAGE_SIZE, seed=0, num_val_per_class=VAL_PER_CLASS)


def _top1(model: str, motion, out: Path) -> float:
    method = next(m for m in METHODS if m.model == model)
    cfg = _train_config(method, motion, out, epochs=14, seed=0)
    return train(cfg)["val"]["top1"]


def test_side4video_learns_direction_and_the_frame_mean_probe_cannot(motion, tmp_path):
    torch.set_num_threads(2)
    side4video = _top1("side4video-tiny", motion, tmp_path)
    probe = _top1("frozen-meanp-tiny", motion, tmp_path)
    # 4 classes: chance 25 %; averaged frames show at most the axis of motion, so 50 % is the probe's ceiling
    # (+ 2 of the 32 held-out videos of slack for sampling noise).
    assert side4video >= 80.0
    assert probe <= 50.0 + 2 * 100 / (4 * VAL_PER_CLASS)
    assert side4video - probe >= 40.0


def test_demo_writes_report_chart_and_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("side4video.demo.B16_MEMORY", ("side4video-tiny",) * len(METHODS))
    results = run_demo(tmp_path, epochs=1)
    assert [r["model"] for r in results["recognition"]] == [m.model for m in METHODS]
    assert {r["model"] for r in results["retrieval"]} == {"side4video-retrieval-tiny", "clip4clip-frozen-tiny"}
    report = (tmp_path / "report.md").read_text()
    for r in results["recognition"]:
        assert f"`{r['model']}` | {r['top1']:.1f}" in report
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    zeroi2v = next(r for r in results["recognition"] if r["model"] == "zeroi2v-tiny")
    assert zeroi2v["merge_max_abs_diff"] <= 1e-5
    # only what a user needs: no checkpoint and no merged copy is left behind, and the output is announced
    assert not [f for f in tmp_path.rglob("*") if f.suffix in (".pt", ".safetensors")]
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert f"demo output: {tmp_path.resolve()}, {size / 1e6:.0f} MB (checkpoints removed" in capsys.readouterr().out
