"""What a new user meets first: help text, the preset list, suggestions, defaults chosen from the data and
said so, and a run's files found again from elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from side4video import list_models
from side4video.cli import build_parser, main
from side4video.data import make_motion_dataset
from side4video.engine.defaults import cpu_cores
from side4video.engine.paths import candidates
from side4video.models import get_preset


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_has_help_and_its_default():
    parser = build_parser()
    assert "`" not in parser.format_help()  # no markup
    commands = _subparsers(parser)
    assert {"train", "eval", "predict", "check-data", "models", "profile", "export", "demo", "plot", "search",
            "embed"} <= set(commands)
    for name, sub in commands.items():
        assert "`" not in sub.format_help(), name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{label}: no help text"
            text = sub._get_formatter()._expand_help(action)
            if action.default not in (None, False, [], "", argparse.SUPPRESS):
                assert f"default: {action.default}" in text, f"{label}: default not shown: {text}"
            assert "(default: None)" not in text, label


def test_models_lists_every_preset_with_its_backbone_method_and_tunable_parameters(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert sorted(lines) == list_models()
    for name, line in lines.items():
        preset = get_preset(name)
        cells = line.split(None, 5)
        assert cells[1:4] == [preset.task.name, preset.config.backbone, preset.build.__name__]
        assert line.endswith(preset.description)
    assert " 102,800 " in lines["frozen-meanp-tiny"]  # exact below a million: 256 x 400 + 400
    assert " 21.19 M " in lines["side4video-b16"]


def test_a_misspelt_preset_gets_the_closest_name(capsys):
    code, _, err = run(capsys, "profile", "side4vido-tiny")
    assert code == 1
    assert err.strip() == ("side4video profile: error: unknown model 'side4vido-tiny' (did you mean "
                           "'side4video-tiny'?); `side4video models` describes every preset")


def test_defaults_come_from_the_preset_and_the_data_and_are_printed(tmp_path, capsys):
    data = make_motion_dataset(tmp_path, num_videos_per_class=4, num_frames=2, size=16, num_val_per_class=1)
    code, out, _ = run(capsys, "train", "--model", "side4video-tiny", "--train-list", data.train_list,
                       "--data-root", data.root, "--epochs", "2", "--print-config")
    assert code == 0
    first, body = out.split("\n", 1)
    workers = "4 loader workers" if cpu_cores() >= 4 else f"{cpu_cores()} loader workers ({cpu_cores()} CPU cores)"
    assert first == (f"# defaults: image size 112 (side4video-tiny's backbone), 8 frames (side4video-tiny), "
                     f"4 classes (largest label 3 in {data.train_list}, line 10), batch 3 (12 training samples: "
                     f"at least 4 steps per epoch), warm-up 0.4 epochs (20% of 2 epochs), {workers}")
    cfg = yaml.safe_load(body)
    assert (cfg["model"]["image_size"], cfg["model"]["frames"], cfg["model"]["num_classes"]) == (112, 8, 4)
    assert (cfg["optim"]["batch_size"], cfg["optim"]["warmup_epochs"]) == (3, 0.4)

    # given values are kept, and checked against the data
    code, out, _ = run(capsys, "train", "--model", "side4video-tiny", "--train-list", data.train_list,
                       "--data-root", data.root, "--num-classes", "4", "--image-size", "64", "--frames", "4",
                       "--batch-size", "2", "--num-workers", "0", "--set", "warmup_epochs=1", "--print-config")
    assert code == 0
    assert not out.startswith("# defaults")
    code, _, err = run(capsys, "train", "--model", "side4video-tiny", "--train-list", data.train_list,
                       "--num-classes", "3", "--print-config")
    assert code == 2
    assert f"{data.train_list}:10: label 3 but model.num_classes is 3" in err


def test_a_runs_paths_are_found_after_the_project_moved(tmp_path, monkeypatch):
    old, new = tmp_path / "old" / "proj", tmp_path / "new" / "proj"
    (new / "runs" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    places = candidates("data/val.txt", str(old / "data/val.txt"), new / "runs/x/best.pt", output_dir="./runs/x")
    # original location, the moved project, beside the checkpoint, the current directory
    assert places == [old / "data/val.txt", new / "data/val.txt", new / "runs/x/data/val.txt",
                      tmp_path / "data/val.txt"]
    assert candidates("/abs/val.txt", "/abs/val.txt", new / "runs/x/best.pt", "runs/x") == [Path("/abs/val.txt")]

