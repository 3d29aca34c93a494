"""The main job: on generated MP4s Side4Video learns motion direction; a frame-averaging probe cannot.
And the demo that shows it, run once at a small size: its table, report, results and chart."""

import functools
import json
from pathlib import Path

import pytest

from fixtures import decoded_once
from side4video import demo
from side4video.data import make_motion_dataset
from side4video.demo import FRAMES, IMAGE_SIZE, METHODS, VAL_PER_CLASS, _train_config, run_demo
from side4video.engine.train import train


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    # 10 training videos per class (the demo has 20) and the demo's 8 held-out ones
    return make_motion_dataset(tmp_path_factory.mktemp("motion"), 10 + VAL_PER_CLASS, num_frames=FRAMES,
                               size=IMAGE_SIZE, seed=0, num_val_per_class=VAL_PER_CLASS)


@pytest.fixture
def decode_once():
    """Each video decoded once for the whole test, not once per epoch (``fixtures.decoded_once``)."""
    with decoded_once():
        yield


def _top1(model: str, motion, out: Path) -> float:
    method = next(m for m in METHODS if m.model == model)
    cfg = _train_config(method, motion, out, epochs=5, seed=0)  # 5 of the demo's 14: 100 % and 31.2 % here
    return train(cfg)["val"]["top1"]


def test_side4video_learns_direction_and_the_frame_mean_probe_cannot(motion, tmp_path, decode_once):
    side4video = _top1("side4video-tiny", motion, tmp_path)
    probe = _top1("frozen-meanp-tiny", motion, tmp_path)
    # 4 classes: chance 25 %; averaged frames show at most the axis of motion, so 50 % is the probe's ceiling
    # (+ 2 of the 32 held-out videos of slack for sampling noise).
    assert side4video >= 80.0
    assert probe <= 50.0 + 2 * 100 / (4 * VAL_PER_CLASS)
    assert side4video - probe >= 40.0


def test_demo_writes_report_chart_and_results(tmp_path, monkeypatch, capsys):
    # small: 2 training videos and 1 held-out video per class of 4 frames at 32 px, one epoch; the B/16 column
    # profiled at tiny size
    monkeypatch.setattr(demo, "FRAMES", 4)
    monkeypatch.setattr(demo, "IMAGE_SIZE", 32)
    monkeypatch.setattr(demo, "VIDEOS_PER_CLASS", 3)
    monkeypatch.setattr(demo, "VAL_PER_CLASS", 1)
    monkeypatch.setattr(demo, "B16_MEMORY", ("side4video-tiny",) * len(METHODS))
    monkeypatch.setattr(demo, "profile_model", functools.cache(demo.profile_model))  # that stand-in: once
    results = run_demo(tmp_path, epochs=1)

    rows = results["recognition"]
    assert [(r["method"], r["model"]) for r in rows] == [(m.label, m.model) for m in METHODS]
    assert all(r["epochs"] == 1 and r["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0) for r in rows)  # 4 videos
    retrieval = results["retrieval"]
    assert [r["model"] for r in retrieval] == [m.model for m in demo.RETRIEVAL_METHODS]
    assert all((r["num_videos"], r["num_texts"]) == (16, 48) for r in retrieval)  # 4 colours x 2 shapes x 2

    report = (tmp_path / "report.md").read_text()
    assert "2 training and 1 held-out videos per class" in report
    assert "Chance is 25 %" in report
    for r in rows:
        assert f"| {r['method']} | `{r['model']}` | {r['top1']:.1f} | {r['tunable_params']:,} |" in report
    for r in retrieval:
        assert f"| {r['method']} | `{r['model']}` | {r['t2v_r1']:.1f} | {r['t2v_r5']:.1f} |" in report
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # ZeroI2V is evaluated after its merge into the plain ViT, and the merge is verified
    zeroi2v = next(r for r in rows if r["model"] == "zeroi2v-tiny")
    assert zeroi2v["merge_max_abs_diff"] <= 1e-5
    # only what a user needs: no checkpoint and no merged copy is left behind, and the output is announced
    assert not [f for f in tmp_path.rglob("*") if f.suffix in (".pt", ".safetensors")]
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert f"demo output: {tmp_path.resolve()}, {size / 1e6:.0f} MB (checkpoints removed" in capsys.readouterr().out
