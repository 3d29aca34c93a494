"""``side4video`` command line: train / eval / predict / check-data on small synthetic MP4s."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fixtures import make_corrupt_video
from helpers import official_case, official_harness
from side4video import load_model
from side4video.cli import main
from side4video.data import make_motion_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion")
    return make_motion_dataset(root, num_videos_per_class=3, num_frames=6, size=32, num_val_per_class=1)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_data_exit_codes(motion, tmp_path, capsys):
    code, out, _ = run(capsys, "check-data", "--list", motion.train_list, "--data-root", motion.root,
                       "--frames", "6")
    assert code == 0
    assert "8 entries, 8 ok, 0 problem(s)" in out

    make_corrupt_video(tmp_path / "broken.mp4", "garbage")
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text(f"{motion.root}/videos/left_0001.mp4 0\n{tmp_path}/missing.mp4 1\n"
                        f"{tmp_path}/broken.mp4 2\nnot-a-valid-line\n")
    code, out, _ = run(capsys, "check-data", "--list", str(bad_list), "--data-root", "", "--frames", "6", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    assert report["num_ok"] == 1
    assert sorted(p["kind"] for p in report["problems"]) == ["malformed", "missing", "undecodable"]

    code, out, _ = run(capsys, "check-data", "--list", motion.val_list, "--data-root", motion.root,
                       "--frames", "7")
    assert code == 1  # every video is too short for 7 frames
    assert "too_short 4" in out


def test_train_eval_predict_round_trip(motion, tmp_path, capsys, monkeypatch):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    # paths relative to where training runs; eval and predict below run from another directory
    monkeypatch.chdir(motion.root)
    code, stdout, _ = run(
        capsys, "train", "--model", "side4video-tiny", "--train-list", "train_list.txt", "--val-list",
        "val_list.txt", "--data-root", ".", "--frames", "2", "--image-size", "32",
        "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--seed", "0", "--output-dir",
        str(out), "--num-workers", "0", "--set", "test_crops=3", "--set", "test_clips=2",
        "--set", "augment.rand_augment=rand-m7-n4-mstd0.5-inc1", "--set", "label_names=label_names.txt",
        "--set", "confusion_matrix=true",
    )
    assert code == 0
    # no --num-classes: counted from the label names, and said so; so is the random backbone
    assert "defaults: 4 classes (label_names.txt's names), warm-up 0.2 epochs (20% of 1 epochs)" in stdout
    assert "warning: optim.batch_size 4 x grad_accum 1 covers all 8 training samples" not in stdout
    assert "warning: no model.pretrained weights given: side4video-tiny's tiny backbone" in stdout
    assert "side4video-tiny: 1.36 M trainable parameters" in stdout  # a 4-class head: 1.42 M with 400
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == metrics["val"]
    assert metrics["val"]["num_samples"] == 4
    assert (out / "confusion.png").stat().st_size > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["augment"]["rand_augment"] == "rand-m7-n4-mstd0.5-inc1"
    assert saved["model"]["num_classes"] == 4
    assert (out / "tb").is_dir()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn when training ends
    code, stdout, _ = run(capsys, "plot", str(out), "--out", str(tmp_path / "again.png"))
    assert code == 0
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.chdir(tmp_path)
    # the run's own lists and label names are found from here: eval and predict need no paths
    # eval with the training views reproduces the training run's numbers, whatever the chunk size
    results = []
    for chunk in ("1", "16"):
        code, stdout, _ = run(capsys, "eval", "--checkpoint", str(out / "last.pt"), "--views", "3x2", "--chunk",
                              chunk, "--json", "--device", "cpu")
        assert code == 0
        results.append(json.loads(stdout))
    assert results[0] == results[1]
    assert {k: results[0][k] for k in metrics["val"]} == pytest.approx(metrics["val"])
    assert results[0]["views"] == "3x2"

    # predict: the best class of each video, with names; a broken file is reported and sets the exit code
    videos = [f"{motion.root}/videos/left_0000.mp4", f"{motion.root}/videos/up_0000.mp4"]
    broken = make_corrupt_video(tmp_path / "broken.mp4", "zero_bytes")
    code, stdout, _ = run(capsys, "predict", "--checkpoint", str(out / "best.pt"), *videos, broken,
                          "--topk", "9", "--views", "3x2", "--json", "--device", "cpu")
    assert code == 1
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["path"] for r in rows] == [*videos, broken]
    assert "empty" in rows[2]["error"]
    for row in rows[:2]:
        assert len(row["top"]) == 4  # top-k clipped to the 4 classes
        assert sum(c["prob"] for c in row["top"]) == pytest.approx(1.0, abs=1e-5)
        assert {c["name"] for c in row["top"]} == {"left", "right", "up", "down"}
    # the probabilities are those of evaluation: same views, same model
    code, stdout, _ = run(capsys, "predict", "--checkpoint", str(out / "best.pt"), videos[0], "--topk", "1",
                          "--device", "cpu")
    assert code == 0
    assert stdout.splitlines()[0] == videos[0]


def test_config_errors_exit_with_the_valid_keys(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "side4video-tiny", "--set", "lrate=1", "--output-dir",
                       str(tmp_path))
    assert code == 2
    assert "unknown key 'lrate'; valid keys: [" in err
    assert "'lr'" in err
    assert "'num_classes'" in err
    code, _, err = run(capsys, "train", "--model", "side4video-tiny", "--set", "model_overrides.widht=3")
    assert code == 2
    assert "'side_width'" in err


def test_print_config_applies_yaml_flags_and_set(capsys):
    code, out, _ = run(capsys, "train", str(CONFIGS / "ssv2_side4video-b16.yaml"), "--epochs", "3", "--set",
                       "betas=0.9,0.98", "--set", "model_overrides.fusion=avg", "--print-config")
    assert code == 0
    cfg = yaml.safe_load(out)
    got = (cfg["model"]["name"], cfg["optim"]["epochs"], cfg["optim"]["betas"], cfg["data"]["repeated_aug"])
    assert got == ("side4video-b16", 3, [0.9, 0.98], 2)
    assert cfg["model"]["overrides"] == {"fusion": "avg"}


def test_python_dash_m_entry_point(monkeypatch, capsys):
    # what `python -m side4video --help` runs, in this process (the torchrun test launches `-m side4video`)
    monkeypatch.setattr(sys, "argv", ["side4video", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("side4video", run_name="__main__")
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "predict", "check-data"):
        assert command in out


def test_zeroi2v_export_then_eval_and_predict_the_merged_model(motion, tmp_path, capsys):
    torch.set_num_threads(1)
    out, merged = tmp_path / "run", tmp_path / "merged"
    code, _, _ = run(
        capsys, "train", "--model", "zeroi2v-tiny", "--train-list", motion.train_list, "--val-list",
        motion.val_list, "--data-root", motion.root, "--num-classes", "4", "--frames", "4", "--image-size", "32",
        "--epochs", "1", "--batch-size", "4", "--lr", "1e-2", "--device", "cpu", "--output-dir", str(out),
        "--num-workers", "0", "--set", "test_crops=1", "--set", "test_clips=1",
    )
    assert code == 0
    code, stdout, _ = run(capsys, "export", str(out / "last.pt"), "--out", str(merged))
    assert code == 0
    assert "merged" in stdout
    assert json.loads((merged / "config.json").read_text())["merge_max_abs_diff"] <= 1e-5

    evals = {}
    for name, ckpt in (("adapted", out / "last.pt"), ("merged", merged)):
        code, stdout, _ = run(capsys, "eval", "--checkpoint", str(ckpt), "--json", "--device", "cpu")
        assert code == 0
        evals[name] = json.loads(stdout)
    for key in ("top1", "top5", "mean_class_acc", "num_samples"):
        assert evals["merged"][key] == evals["adapted"][key]

    video = f"{motion.root}/videos/left_0000.mp4"
    probs = {}
    for name, ckpt in (("adapted", out / "last.pt"), ("merged", merged)):
        code, stdout, _ = run(capsys, "predict", "--checkpoint", str(ckpt), video, "--json", "--device", "cpu")
        assert code == 0
        probs[name] = {c["label"]: c["prob"] for c in json.loads(stdout)["top"]}
    assert probs["merged"] == pytest.approx(probs["adapted"], abs=1e-5)


def test_import_of_a_released_zeroi2v_checkpoint_then_eval_predict_and_export(motion, tmp_path, capsys):
    """`import` writes an export directory that load_model, eval, predict and export (merge) accept."""
    torch.set_num_threads(1)
    name = "zeroi2v K400 B/16-style: shift_div, 4 adapters 8f"
    checkpoint, _, case = official_case(name, tmp_path)
    imported, merged = tmp_path / "imported", tmp_path / "merged"
    code, stdout, _ = run(capsys, "import", str(checkpoint), "--out", str(imported))
    assert code == 0
    assert "zeroi2v" in stdout
    with torch.no_grad():
        logits = load_model(imported)(official_harness.clips(case["frames"], case["seed"]))
    assert (logits - torch.tensor(case["logits"])).abs().max() <= 1e-4  # the authors' outputs, unchanged

    code, stdout, _ = run(capsys, "export", str(imported), "--out", str(merged))
    assert code == 0
    assert json.loads((merged / "config.json").read_text())["merge_max_abs_diff"] <= 1e-5
    data = ("--val-list", motion.val_list, "--data-root", motion.root, "--views", "1x1", "--device", "cpu",
            "--num-workers", "0")
    evals = [json.loads(run(capsys, "eval", "--checkpoint", str(d), "--json", *data)[1]) for d in (imported, merged)]
    assert evals[0]["num_samples"] == evals[1]["num_samples"] > 0
    assert evals[0]["top1"] == evals[1]["top1"]
    video = f"{motion.root}/videos/left_0000.mp4"
    code, stdout, _ = run(capsys, "predict", "--checkpoint", str(imported), video, "--json", "--device", "cpu")
    assert code == 0
    assert len(json.loads(stdout)["top"]) > 0

    code, _, err = run(capsys, "import", str(checkpoint).replace(".pth", "_missing.pth"), "--out", str(merged))
    assert code == 1
    assert "no such file" in err
    assert err.count("\n") == 1
