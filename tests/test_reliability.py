"""Nothing lost, nothing executed: kills during checkpoint writes, forged inputs, diverged runs, bad
labels, re-runs into a finished folder, search caches, many-view evaluation, one-line CLI errors.

Every test names the guarantee it checks (README, "Reliability"). Runs use the ``frozen-meanp-tiny`` preset
on in-memory clips: two optimiser steps cost a fraction of a second.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fixtures import ToyClips, make_corrupt_video
from side4video.atomic import atomic_copy, atomic_save
from side4video.cli import main
from side4video.data import read_msvd, write_video
from side4video.engine.checkpoint import load_checkpoint
from side4video.engine.config import resolve_config
from side4video.engine.train import train

TINY = {"model": "frozen-meanp-tiny", "num_classes": 2, "frames": 2, "image_size": 32, "batch_size": 4,
        "lr": 1e-2, "device": "cpu", "num_workers": 0, "seed": 0}
TINY_SETS = ("warmup_epochs=0", "tensorboard=false", "log_every=1", "test_crops=1", "test_clips=1")


def tiny_cfg(out: Path, *sets: str, **flags):
    """A tiny recognition run into ``out`` (flat keys, as on the command line)."""
    return resolve_config(None, {**TINY, "epochs": 2, "output_dir": str(out), **flags}, (*TINY_SETS, *sets))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small run fastest on one thread (and a busy machine makes two threads spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Non-zero exit, exactly one line on stderr naming every needle, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run (its folder); tests copy what they change."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    train(tiny_cfg(out), ToyClips(8), ToyClips(4))
    return out


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    return path


def quiet_train(cfg, *datasets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(cfg, *datasets)


# ---- 1. nothing executed --------------------------------------------------------------------------------


class _Payload:
    """Unpickling calls ``open(marker, "w")``: a forged file that creates a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_msvd_captions_pickle_is_read_as_data_only(tmp_path):
    (tmp_path / "test_list.txt").write_text("vid1\n")
    marker = tmp_path / "pwned"
    with open(tmp_path / "raw-captions.pkl", "wb") as f:
        pickle.dump({"vid1": [["a", "dog"]], "x": _Payload(marker)}, f)
    with pytest.raises(ValueError, match="raw-captions.pkl"):
        read_msvd(tmp_path, "test")
    assert not marker.exists()

    with open(tmp_path / "raw-captions.pkl", "wb") as f:  # plain data still reads, tokens joined
        pickle.dump({"vid1": [["a", "dog", "runs"], "a cat"]}, f, protocol=2)
    split = read_msvd(tmp_path, "test")
    assert [c for c in split.captions] == ["a dog runs", "a cat"]


def _forged_torchscript(path: Path) -> None:
    """A TorchScript archive one of whose modules prints from ``__setstate__`` when loaded."""

    class Payload(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]):
            print("PAYLOAD RAN")
            self.w = state[0]
            self.training = state[1]

        def forward(self, x):
            return x + self.w

    class Clip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Linear(4, 4)
            self.payload = Payload()

        def forward(self, x):
            return self.payload(self.visual(x))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Clip()), str(path))


def test_torchscript_archive_is_read_without_running_its_code(tmp_path, capfd):
    from side4video import load_backbone

    path = tmp_path / "ViT-tiny.pt"
    _forged_torchscript(path)
    capfd.readouterr()
    with pytest.raises(ValueError, match=str(path)):  # not a CLIP tower, and it says so
        load_backbone(path)
    out, err = capfd.readouterr()
    assert "PAYLOAD RAN" not in out + err


def test_checkpoints_and_configs_run_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "evil.pt", "--device", "cpu")
    assert_one_line_error(code, err, "evil.pt")
    (tmp_path / "evil.yaml").write_text(f"model: !!python/object/apply:os.mkdir ['{marker}']\n")
    code, _, err = run_cli(capsys, "train", tmp_path / "evil.yaml", "--print-config")
    assert_one_line_error(code, err, "evil.yaml")
    assert not marker.exists()


# ---- 2. atomic writes ----------------------------------------------------------------------------------


def test_checkpoint_writes_never_follow_a_planted_symlink(tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for name in ("last.pt", "best.pt", "metrics.json"):  # every predictable temporary name of this process
        for pid in range(os.getpid() - 2, os.getpid() + 3):
            (out / f".{name}.{pid}.tmp").symlink_to(victim)
    quiet_train(tiny_cfg(out, epochs=1), ToyClips(4), ToyClips(2))
    assert victim.read_bytes() == b"precious"
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("links", [True, False])
def test_a_best_epochs_last_pt_is_a_copy_that_later_writes_leave_apart(tmp_path, monkeypatch, links):
    if not links:  # a filesystem without hard links: the bytes are copied
        def no_link(*args, **kwargs):
            raise OSError("hard links not supported")

        monkeypatch.setattr(os, "link", no_link)
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.arange(5.0)}, best)
    last.write_bytes(b"the previous epoch")
    atomic_copy(best, last)
    assert last.read_bytes() == best.read_bytes()
    assert os.path.samefile(best, last) == links
    atomic_save({"epoch": 2, "w": torch.zeros(5)}, last)  # the next epoch, not a best one
    assert torch.load(best)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- 3. diverged weights -------------------------------------------------------------------------------


def test_diverged_weights_are_never_saved(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Exception, match=r"(?i)non-finite|diverge") as info:
        quiet_train(tiny_cfg(out, lr=1e30, epochs=1), ToyClips(4), ToyClips(2))
    assert "last.pt" not in str(info.value) or (out / "last.pt").is_file()  # never points to a missing file
    for name in ("last.pt", "best.pt"):
        if (out / name).is_file():
            ckpt = load_checkpoint(out / name)
            assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nan_predictions_are_an_error(tiny_run, tmp_path, clip_file, capsys):
    ckpt = load_checkpoint(tiny_run / "last.pt")
    ckpt["model"] = {k: torch.full_like(v, float("nan")) if k.startswith("head") else v
                     for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "nan.pt")
    code, out, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "nan.pt", clip_file, "--json",
                             "--device", "cpu")
    assert code != 0
    assert "nan" not in out.lower()
    assert "non-finite" in err.lower()


# ---- 2 + 4. write order, kills, resume -----------------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after the raise runs (finally blocks aside)."""


def _fingerprint(out: Path) -> dict:
    """What a finished run leaves: metrics.json, and the epoch and weights of last.pt and best.pt."""
    state = {"metrics": json.loads((out / "metrics.json").read_text())}
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        state[name] = (ckpt["epoch"], ckpt["best_metric"], {k: v.clone() for k, v in ckpt["model"].items()})
    return state


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    for name in ("last.pt", "best.pt"):
        assert a[name][:2] == b[name][:2], name
        assert all(torch.equal(a[name][2][k], b[name][2][k]) for k in a[name][2]), name


def _train_killed_at(out: Path, write: int | None, monkeypatch, **flags) -> int:
    """Train 3 epochs, 'killed' just before the ``write``-th file replacement in ``out`` (None: never).

    Returns the number of replacements seen (the kill point's, if killed)."""
    calls = {"n": 0}
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == out:
            calls["n"] += 1
            if calls["n"] == write:
                raise Killed
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    try:
        quiet_train(tiny_cfg(out, "eval_every=1", epochs=3, **flags), ToyClips(4), ToyClips(2))
    except Killed:
        pass
    finally:
        monkeypatch.setattr(os, "replace", real_replace)
    return calls["n"]


def test_a_kill_between_any_two_writes_loses_nothing(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    writes = _train_killed_at(reference, None, monkeypatch)
    expected = _fingerprint(reference)
    assert writes >= 6  # at least metrics.json and last.pt per epoch, each replaced atomically
    # every write of a 3-epoch run is a kill point; a seeded sample of them keeps the test short
    for write in sorted(random.Random(12).sample(range(1, writes + 1), 3)):
        out = tmp_path / f"killed_{write}"
        assert _train_killed_at(out, write, monkeypatch) == write
        for name in ("last.pt", "best.pt"):  # what a kill leaves is always readable
            if (out / name).is_file():
                load_checkpoint(out / name)
        quiet_train(tiny_cfg(out, "eval_every=1", epochs=3, resume="auto"), ToyClips(4), ToyClips(2))
        _assert_same_run(_fingerprint(out), expected)


def _killed_mid_write(out: Path) -> int:
    """Train in a forked child that SIGKILLs itself while its second checkpoint file is half written;
    returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # child: one thread (a forked OpenMP pool would hang), dies inside the write
        try:
            torch.set_num_threads(1)
            real_fsync = os.fsync

            def fsync(fd):
                if stat.S_ISREG(os.fstat(fd).st_mode) and any(out.glob("*.pt")):
                    os.kill(os.getpid(), signal.SIGKILL)
                real_fsync(fd)

            os.fsync = fsync
            quiet_train(tiny_cfg(out, "eval_every=1", epochs=2), ToyClips(4), ToyClips(2))
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_sigkill_mid_write_leaves_no_temp_file_after_resume(tmp_path):
    out = tmp_path / "run"
    status = _killed_mid_write(out)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    temps = [p for p in out.iterdir() if p.name.startswith(".")]
    assert temps  # the killed write's temporary file
    quiet_train(tiny_cfg(out, "eval_every=1", epochs=2, resume="auto"), ToyClips(4), ToyClips(2))
    assert [p for p in out.iterdir() if p.name.startswith(".")] == []
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


# ---- 5. a validation set without a readable video -------------------------------------------------------


def test_unreadable_validation_set_keeps_the_epoch(tmp_path):
    bad = tmp_path / "bad.mp4"
    make_corrupt_video(bad, "garbage")
    (tmp_path / "val.txt").write_text(f"{bad} 0\n{bad} 1\n")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="bad_samples.txt"):  # no metric; the bad files are listed there
        quiet_train(tiny_cfg(out, epochs=1, val_list=str(tmp_path / "val.txt"), data_root=""), ToyClips(4))
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert str(bad) in (out / "bad_samples.txt").read_text()


# ---- 6. labels ----------------------------------------------------------------------------------------------


def test_labels_out_of_range_are_refused_with_file_and_line(tmp_path, clip_file, capsys):
    lst = tmp_path / "train.txt"
    clips = [tmp_path / f"clip{i}.mp4" for i in range(3)]  # three files: a repeated entry is its own problem
    for clip in clips:
        clip.symlink_to(clip_file)
    lst.write_text(f"{clips[0]} 0\n{clips[1]} 1\n{clips[2]} 7\n")
    code, out, err = run_cli(capsys, "check-data", "--list", lst, "--data-root", "", "--frames", "2",
                             "--num-classes", "2")
    assert code == 1
    assert f"{lst}:3" in out + err
    code, out, err = run_cli(capsys, "check-data", "--list", lst, "--data-root", "", "--frames", "2",
                             "--num-classes", "8")
    assert code == 0, out + err

    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "frozen-meanp-tiny", "--num-classes", "2", "--frames", "2",
                           "--image-size", "32", "--train-list", lst, "--data-root", "", "--epochs", "1",
                           "--device", "cpu", "--num-workers", "0", "--output-dir", run_dir)
    assert_one_line_error(code, err, f"{lst}:3")
    assert not run_dir.exists()

    lst.write_text(f"{clip_file} {'9' * 23}\n")  # beyond any integer type: malformed even without N
    code, out, err = run_cli(capsys, "check-data", "--list", lst, "--data-root", "", "--frames", "2")
    assert code == 1
    assert f"{lst}:1" in out + err


# ---- 7. re-running into a finished run's folder ---------------------------------------------------------


def test_training_into_a_finished_run_is_refused_unless_resume_or_overwrite(tiny_run, tmp_path):
    before = (tiny_run / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"--resume|--overwrite"):
        quiet_train(tiny_cfg(tiny_run), ToyClips(8), ToyClips(4))
    assert (tiny_run / "last.pt").read_bytes() == before
    out = tmp_path / "run"
    quiet_train(tiny_cfg(out, epochs=1), ToyClips(4), ToyClips(2))
    quiet_train(tiny_cfg(out, "overwrite=true", epochs=1, seed=1), ToyClips(4), ToyClips(2))
    assert sum(1 for line in (out / "log.jsonl").open() if '"epoch"' in line and '"type": "epoch"' in line) == 1


def test_resume_applies_a_new_schedule_and_refuses_a_changed_model(tmp_path):
    out = tmp_path / "run"
    quiet_train(tiny_cfg(out, epochs=1), ToyClips(8), ToyClips(4))
    quiet_train(tiny_cfg(out, epochs=2, lr=2e-2, resume="auto"), ToyClips(8), ToyClips(4))
    lrs = [r["lr"] for r in map(json.loads, (out / "log.jsonl").open()) if r["type"] == "train"]
    assert lrs[2:] == pytest.approx([2e-2 * (1 + np.cos(np.pi * s / 4)) / 2 for s in (3, 4)])
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 2e-2
    with pytest.raises(ValueError, match=r"frames \(2 -> 4\)") as info:
        quiet_train(tiny_cfg(out, epochs=3, frames=4, lr=1e-3, resume="auto"), ToyClips(8), ToyClips(4))
    assert "lr (" not in str(info.value)  # lists the changed keys that are refused, only those


# ---- 8. search cache ------------------------------------------------------------------------------------------


def test_search_cache_rejects_unreadable_and_non_finite_entries(tmp_path):
    from side4video.search import EmbeddingCache

    key = {"checkpoint": "x"}
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a cache")
    with pytest.warns(UserWarning, match="garbage.pt"):
        cache = EmbeddingCache(tmp_path / "garbage.pt", key)
    assert cache.entries == {}

    stamp = {"size": 1, "mtime_ns": 2}
    cache = EmbeddingCache(tmp_path / "cache.pt", key)
    cache.put("/a.mp4", stamp, embedding=torch.ones(4))
    cache.put("/b.mp4", stamp, embedding=torch.full((4,), float("nan")))
    cache.put("/c.mp4", stamp, embedding=torch.ones(5))
    cache.save()
    with pytest.warns(UserWarning, match="cache.pt"):
        reread = EmbeddingCache(tmp_path / "cache.pt", key)
    assert reread.get("/a.mp4", stamp) is not None
    assert reread.get("/b.mp4", stamp) is None  # NaN: encoded again, never ranked
    assert reread.get("/c.mp4", stamp) is None  # shape differs from the others


def test_search_cache_of_a_read_only_folder_goes_to_the_user_cache(tmp_path, monkeypatch):
    from side4video.search import default_cache_path

    videos = tmp_path / "videos"
    videos.mkdir()
    assert default_cache_path(videos).parent == videos
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == videos else real_access(p, mode))
    assert default_cache_path(videos).is_relative_to(tmp_path / "user_cache")


# ---- 9. many views ---------------------------------------------------------------------------------------------


def test_view_chunks_are_the_views_of_the_whole_video(clip_file):
    from side4video.data import VideoClipDataset

    lst = clip_file.parent / "two.txt"
    lst.write_text(f"{clip_file} 0\n{clip_file} 1\n")
    common = dict(num_frames=2, train=False, image_size=32, num_clips=3, num_crops=3)
    whole = VideoClipDataset(lst, "", **common)
    chunked = VideoClipDataset(lst, "", **common, view_chunk=4)
    assert len(chunked) == 2 * 3  # ceil(9 / 4) items per video
    for video in range(2):
        items = [chunked[i] for i in range(3 * video, 3 * video + 3)]
        assert [it["index"] for it in items] == [video] * 3
        assert [it["view_start"] for it in items] == [0, 4, 8]
        assert torch.equal(torch.cat([it["video"] for it in items]), whole[video]["video"])


def test_many_views_are_decoded_chunk_by_chunk(tiny_run, clip_file, capsys):
    from side4video.data import VideoClipDataset

    largest = {"views": 0}
    real = VideoClipDataset.__getitem__

    def spy(self, index):
        item = real(self, index)
        if item.get("video") is not None:
            largest["views"] = max(largest["views"], item["video"].shape[0])
        return item

    lst = clip_file.parent / "one.txt"
    lst.write_text(f"{clip_file} 0\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VideoClipDataset, "__getitem__", spy)
        code, out, err = run_cli(capsys, "eval", "--checkpoint", tiny_run / "last.pt", "--val-list", lst,
                                 "--data-root", "", "--views", "1x40", "--chunk", "4", "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["num_samples"] == 1
    assert 0 < largest["views"] <= 4


# ---- 10. one-line errors and validated ranges -----------------------------------------------------------------


@pytest.mark.parametrize(("setting", "key"), [
    ("clip_grad=-1", "clip_grad"), ("min_lr_ratio=-3", "min_lr_ratio"), ("weight_decay=-0.1", "weight_decay"),
    ("mixup_alpha=-1", "mixup_alpha"), ("label_smoothing=5", "label_smoothing"), ("seed=-1", "seed"),
    ("image_size=33", "image_size"),
])
def test_out_of_range_settings_are_one_line_errors(setting, key, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "frozen-meanp-tiny", "--set", setting, "--print-config")
    assert_one_line_error(code, err, key)


def test_bad_files_are_one_line_errors_naming_the_file(tiny_run, tmp_path, clip_file, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tiny_run / "last.pt").read_bytes()[:5000])
    for argv in (["eval", "--checkpoint", truncated], ["predict", "--checkpoint", truncated, clip_file],
                 ["export", truncated, "--out", tmp_path / "merged"]):
        code, _, err = run_cli(capsys, *argv, "--device", "cpu") if argv[0] != "export" else run_cli(capsys, *argv)
        assert_one_line_error(code, err, "truncated.pt")
    code, _, err = run_cli(capsys, "export", tiny_run / "last.pt", "--out", tmp_path / "merged")
    assert_one_line_error(code, err, "last.pt")
    assert not (tmp_path / "merged").exists()

    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    code, _, err = run_cli(capsys, "train", tmp_path / "bad.yaml", "--print-config")
    assert_one_line_error(code, err, "bad.yaml")

    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9.mp4 0\n")
    code, out, err = run_cli(capsys, "check-data", "--list", tmp_path / "latin1.txt", "--data-root", "")
    assert code != 0
    assert "latin1.txt" in out + err
    code, out, err = run_cli(capsys, "check-data", "--list", tmp_path / "missing.txt", "--data-root", "")
    assert code != 0
    assert "missing.txt" in out + err

    (tmp_path / "labels.txt").write_text("only-one\n")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", tiny_run / "last.pt", clip_file, "--labels",
                           tmp_path / "labels.txt", "--device", "cpu")
    assert_one_line_error(code, err, "labels.txt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_cuda_without_cuda_is_a_one_line_error(tiny_run, clip_file, capsys):
    for argv in (["eval", "--checkpoint", tiny_run / "last.pt"], ["predict", "--checkpoint", tiny_run / "last.pt",
                                                                  clip_file],
                 ["profile", "frozen-meanp-tiny"]):
        code, _, err = run_cli(capsys, *argv, "--device", "cuda")
        assert_one_line_error(code, err, "cuda")


def test_unexpected_errors_are_one_line_with_a_debug_hint(capsys, monkeypatch):
    import side4video.profiler as profiler

    def boom(*args, **kwargs):
        raise RuntimeError("something deep\nwith a second line")

    monkeypatch.setattr(profiler, "profile_model", boom)
    code, _, err = run_cli(capsys, "profile", "frozen-meanp-tiny")
    assert_one_line_error(code, err, "something deep", "--debug")
    with pytest.raises(RuntimeError, match="something deep"):
        main(["--debug", "profile", "frozen-meanp-tiny"])
