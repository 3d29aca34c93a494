"""Training engine: config resolution, optimiser groups, schedule, checkpoints, resume, DDP, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import ToyClips
from side4video.atomic import atomic_save
from side4video.engine.checkpoint import load_checkpoint, load_model
from side4video.engine.config import ConfigError, TrainConfig, make_config, replace, resolve_config
from side4video.engine.optim import WarmupCosine, build_optimizer, build_scheduler, param_groups
from side4video.engine.recognition import predict_views
from side4video.engine.train import NonFiniteLossError, train
from side4video.metrics import classification_metrics
from side4video.models import create_model, get_preset
from side4video.typed_config import parse_set

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="side4video-tiny", num_classes=2, frames=2, image_size=32)


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        TINY, epochs=2, warmup_epochs=1, batch_size=4, lr=3e-3, weight_decay=0.05, num_workers=0,
        device="cpu", output_dir=str(out), test_crops=1, test_clips=2, eval_chunk=3, tensorboard=False,
        log_every=1, label_smoothing=0.1,
    )
    return make_config(**{**base, **kw})


class Interrupt(Exception):
    pass


class InterruptAtEpoch(ToyClips):
    """Stops the run when epoch ``stop`` starts (after the checkpoint of the previous one)."""

    def __init__(self, n: int, stop: int):
        super().__init__(n)
        self.stop = stop

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop:
            raise Interrupt
        super().set_epoch(epoch)


def write_frame_dataset(root: Path, split: str, n: int, frames: int = 4, size: int = 40) -> Path:
    """Frame folders ``root/split/v{i}/img_{:05d}.jpg`` of moving bars (label 0 right, 1 left) and their list."""
    lines = []
    for i in range(n):
        label = i % 2
        folder = root / split / f"v{i}"
        folder.mkdir(parents=True)
        for t in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            x = (t * 8 + 3 * i) % (size - 8)
            x = x if label == 0 else size - 8 - x
            img[:, x : x + 8] = 255
            Image.fromarray(img).save(folder / f"img_{t + 1:05d}.jpg")
        lines.append(f"{split}/v{i} {frames} {label}\n")
    list_file = root / f"{split}.txt"
    list_file.write_text("".join(lines))
    return list_file


# ---- config -----------------------------------------------------------------------------------------


def test_config_precedence_and_typed_set(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("model: side4video-tiny\nlr: 0.01\nepochs: 5\nbetas: [0.9, 0.98]\n"
                   "model_overrides: {dropout: 0.1}\naugment: {grayscale: 0.2}\n")
    cfg = resolve_config(yml, {"epochs": 7, "lr": None},
                         ["batch_size=3", "clip_grad=1.5", "amp=false", "betas=0.8,0.9",
                          "model_overrides.dropout=0.3", "model_overrides.taps=top", "resume=none",
                          "augment.flip_label_pairs=[[1, 2]]"])
    o = cfg.optim
    assert (o.lr, o.epochs, o.batch_size, o.clip_grad, o.amp) == (0.01, 7, 3, 1.5, False)
    assert o.betas == (0.8, 0.9)
    assert cfg.run.resume is None
    assert cfg.model.overrides == {"dropout": 0.3, "taps": "top"}
    assert cfg.data.augment == {"grayscale": 0.2, "flip_label_pairs": ((1, 2),)}
    assert create_model(cfg.model.name, num_classes=2, **cfg.model.overrides).head.dropout.p == 0.3
    # The same keys grouped, dotted, or flat give the same config.
    grouped = resolve_config(None, {"model": "side4video-tiny"}, ["optim.lr=0.01", "data.augment.grayscale=0.2"])
    flat = resolve_config(None, {"model": "side4video-tiny"}, ["lr=0.01", "augment.grayscale=0.2"])
    assert grouped == flat
    assert grouped == make_config({"model": {"name": "side4video-tiny"}, "optim": {"lr": 0.01}},
                                  data={"augment": {"grayscale": 0.2}})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"sets": ["learning_rate=1"]}, "unknown key 'learning_rate'; valid keys: ["),
        ({"yaml": "epochz: 3\n"}, "unknown key 'epochz'; valid keys: ["),
        ({"sets": ["optim.lrr=3"]}, "unknown key 'optim.lrr'; valid keys: ["),
        ({"sets": ["model_overrides.dropot=0.3"]}, "unknown key model.overrides.'dropot'; valid keys: ["),
        ({"sets": ["augment.flipp=0.3"]}, "unknown key data.augment.'flipp'; valid keys: ["),
        ({"sets": ["epochs=two"]}, "optim.epochs: expected an integer, got 'two'"),
        ({"sets": ["amp_dtype=float8"]}, "is not one of ['bfloat16', 'float16']"),
        ({"sets": ["model_overrides.num_classes=3"]}, "unknown key model.overrides.'num_classes'"),
    ],
)
def test_config_errors_name_the_key_and_list_valid_ones(tmp_path, source, message):
    path = None
    if "yaml" in source:
        path = tmp_path / "bad.yaml"
        path.write_text(source["yaml"])
    with pytest.raises(ConfigError) as e:
        resolve_config(path, {"model": "side4video-tiny"}, source.get("sets", ()))
    assert message in str(e.value)
    if "valid keys: [" in message and "." not in message.split("valid keys")[0].split("key ")[1]:
        assert "'lr'" in str(e.value)  # a flat key: every flat key is listed
    if "valid keys" in message and "overrides" in message:
        assert "'dropout'" in str(e.value)
        assert "'side_width'" in str(e.value)


def test_parse_set_rejects_malformed_items():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["lr"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["=1"])


RECIPES = {  # (lr, epochs, warmup, repeated_aug, crops x clips) from the paper's Table 12
    "k400_side4video-b16": (1e-3, 30, 4, 1, (3, 4)),
    "k400_side4video-l14": (1e-4, 30, 4, 1, (3, 4)),
    "k400_side4video-e14-light": (1e-4, 20, 4, 1, (3, 4)),
    "ssv1_side4video-b16-light": (1e-3, 40, 4, 2, (3, 2)),
    "ssv1_side4video-e14-light": (1e-4, 30, 6, 2, (3, 2)),
    "ssv2_side4video-l14-light": (1e-4, 30, 4, 2, (3, 2)),
    "ssv2_side4video-e14-light": (1e-4, 25, 6, 2, (3, 2)),
}


def test_every_yaml_config_loads():
    # Side4Video recognition recipes; tests/test_recipes.py checks the other methods' configs.
    configs = REPO / "configs"
    files = sorted(f for d in ("k400", "ssv1", "ssv2") for f in configs.glob(f"{d}_side4video-*.yaml"))
    assert len(files) == 15
    for path in files:
        cfg = resolve_config(path)
        dataset, model = path.stem.split("_", 1)
        assert cfg.model.name == model
        assert cfg.optim.weight_decay == 0.15
        assert cfg.optim.label_smoothing == 0.1
        assert cfg.model.num_classes == (400 if dataset == "k400" else 174)
        assert cfg.optim.betas == (0.9, 0.999)
        if dataset == "k400":
            assert {k: cfg.data.augment[k] for k in ("grayscale", "resize")} == {"grayscale": 0.2, "resize": 256}
        else:
            assert cfg.data.augment["rand_augment"] == "rand-m7-n4-mstd0.5-inc1"
            assert cfg.data.augment["flip_label_pairs"] == ((86, 87), (93, 94), (166, 167))
        if path.stem in RECIPES:
            lr, epochs, warmup, rep, views = RECIPES[path.stem]
            o = cfg.optim
            assert (o.lr, o.epochs, o.warmup_epochs, cfg.data.repeated_aug) == (lr, epochs, warmup, rep)
            assert (cfg.eval.test_crops, cfg.eval.test_clips) == views


# ---- optimiser and schedule -------------------------------------------------------------------------


def test_param_groups_decay_only_matrices_of_trainable_params():
    model = create_model("side4video-tiny", num_classes=2, num_frames=2, image_size=32)
    groups = {g["name"]: set(g["names"]) for g in param_groups(model, 0.1, 1e-3)}
    decay, no_decay = groups["default_decay"], groups["default_no_decay"]
    assert {"side.stem.weight", "head.fc.weight", "side.blocks.0.attn.in_proj_weight", "side.down.0.proj.weight",
            "side.blocks.1.mlp.fc1.weight", "side.blocks.0.temporal.dw.weight"} <= decay
    assert {"side.pos_embed", "side.stem.bias", "side.stem_norm.weight", "head.norm.weight",
            "side.blocks.0.norm_attn.weight", "side.blocks.0.attn.in_proj_bias", "side.down.0.norm.bias",
            "head.fc.bias"} <= no_decay
    assert not decay & no_decay
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable
    assert not any(n.startswith("backbone.") for n in trainable)
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.999))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_param_groups_put_embeddings_and_vectors_in_no_decay():
    vit = create_model("side4video-tiny", num_classes=2, image_size=32).backbone
    for p in vit.parameters():
        p.requires_grad_(True)
    names = {g["name"]: set(g["names"]) for g in param_groups(vit, 0.1, 1e-3)}
    assert {"class_embedding", "positional_embedding", "ln_pre.weight"} <= names["default_no_decay"]
    assert {"conv1.weight", "proj", "transformer.resblocks.0.attn.in_proj_weight"} <= names["default_decay"]
    zeroi2v = create_model("zeroi2v-tiny", num_classes=2, image_size=32)
    names = {g["name"]: set(g["names"]) for g in param_groups(zeroi2v, 0.1, 1e-3)}
    assert "backbone.embed_hook.embedding" in names["backbone_no_decay"]  # ZeroI2V's temporal embedding


def test_retrieval_param_groups_split_clip_parts_by_lr_with_the_same_decay_rule():
    model = create_model("side4video-retrieval-tiny", train_projection=True)  # ln_post / proj trained too
    groups = {g["name"]: g for g in build_optimizer(model, 1e-4, 0.2, (0.9, 0.98), group_lrs={"clip": 1e-7}
                                                    ).param_groups}
    assert set(groups) == {"clip_decay", "clip_no_decay", "default_decay", "default_no_decay"}
    assert {g["lr"] for n, g in groups.items() if n.startswith("clip")} == {1e-7}
    assert {g["lr"] for n, g in groups.items() if n.startswith("default")} == {1e-4}
    # one decay rule for both towers: embeddings and norms never decay, matrices do
    assert {"text.token_embedding.weight", "text.positional_embedding", "text.logit_scale",
            "backbone.ln_post.weight"} <= set(groups["clip_no_decay"]["names"])
    assert {"text.transformer.resblocks.0.attn.in_proj_weight", "backbone.proj"} <= set(groups["clip_decay"]["names"])
    assert "up.weight" in groups["default_decay"]["names"]


def test_warmup_then_cosine_per_step():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 15)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    # As stepped by the optimiser: the lr of step s is base * f(s).
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([w], lr=0.5)
    sched = build_scheduler(opt, total_steps=14, warmup_steps=4, min_ratio=0.1)
    seen = []
    for _ in range(14):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * f(s) for s in range(14)])


# ---- checkpoints ------------------------------------------------------------------------------------


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.arange(4.0)}, path)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # a torn write, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    old = torch.load(path, weights_only=True)
    assert old["epoch"] == 1
    assert torch.equal(old["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


# ---- training loop ----------------------------------------------------------------------------------


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    torch.set_num_threads(1)
    full = tiny_cfg(tmp_path / "full")
    metrics = train(full, ToyClips(10), ToyClips(5, views=2))
    assert metrics["epoch"] == 2
    assert metrics["val"]["num_samples"] == 5

    part = tiny_cfg(tmp_path / "part")
    with pytest.raises(Interrupt):
        train(part, InterruptAtEpoch(10, stop=2), ToyClips(5, views=2))
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    resumed = train(replace(part, resume="auto"), ToyClips(10), ToyClips(5, views=2))

    assert (tmp_path / "part" / "metrics.json").read_text() == (tmp_path / "full" / "metrics.json").read_text()
    assert resumed == metrics
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "part"))
    assert a["step"] == b["step"] == 6  # 3 batches x 2 epochs
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ckpt = a
    assert set(ckpt) >= {"model_name", "model_config", "model", "optimizer", "scheduler", "scaler", "epoch",
                         "step", "best_metric", "rng", "train_config"}
    assert ckpt["model_config"]["num_classes"] == 2
    assert ckpt["train_config"]["optim"]["lr"] == 3e-3
    assert (tmp_path / "full" / "best.pt").is_file()
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["type"] == "epoch"] == [1, 2]


def test_training_learns_and_grad_accum_counts_steps(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, epochs=5, warmup_epochs=0, batch_size=2, grad_accum=2, eval_every=5, lr=5e-3,
                   clip_grad=1.0, label_smoothing=0.0, model_overrides={"dropout": 0.0})
    metrics = train(cfg, ToyClips(8), ToyClips(8, views=2))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5 * 2  # 4 batches / 2 accumulated, per epoch
    assert metrics["val"]["top1"] == 100.0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in log if r["type"] == "epoch"]
    assert losses[-1] < losses[0]
    assert losses[-1] < 0.65 * math.log(2)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 2, optimiser step \d+"):
        train(cfg, ToyClips(10, nan_at_epoch=2), ToyClips(4))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_mixup_trains_and_frozen_weights_can_stay_out_of_checkpoints(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path, epochs=1, mixup_alpha=0.4, save_frozen=False)
    train(cfg, ToyClips(6), ToyClips(4))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert not any(k.startswith("backbone.") for k in ckpt["model"])
    assert "head.fc.weight" in ckpt["model"]
    with pytest.raises(ValueError, match="no pretrained backbone file was given"):
        load_model(tmp_path / "last.pt")  # a random backbone cannot be rebuilt


# ---- evaluation -------------------------------------------------------------------------------------


def test_chunked_multi_view_softmax_average_matches_unchunked():
    torch.manual_seed(0)
    model = create_model("side4video-tiny", num_classes=5, num_frames=2, image_size=32).eval()
    video = torch.randn(3, 4, 3, 2, 32, 32)  # (B, V, 3, T, H, W)
    with torch.no_grad():
        reference = torch.stack([model(video[:, v]).softmax(-1) for v in range(4)], 1).mean(1)  # (B, C)
    for chunk in (1, 5, 12, 100):
        assert torch.allclose(predict_views(model, video, chunk), reference, atol=1e-6)


def test_classification_metrics_top_k_and_mean_class_accuracy():
    probs = np.array([
        [0.7, 0.2, 0.1],  # label 0: top-1 hit
        [0.5, 0.3, 0.2],  # label 1: top-2 hit
        [0.1, 0.3, 0.6],  # label 1: top-2 hit
        [0.2, 0.3, 0.5],  # label 2: top-1 hit
    ])
    labels = np.array([0, 1, 1, 2])
    m = classification_metrics(probs, labels, ks=(1, 2, 5))
    assert m["top1"] == 50.0
    assert m["top2"] == 100.0
    assert m["top5"] == 100.0
    assert m["mean_class_acc"] == pytest.approx((100 + 0 + 100) / 3)
    assert m["num_samples"] == 4


def test_torchrun_two_process_gloo_run_counts_every_sample_once(tmp_path):
    data = tmp_path / "data"
    train_list = write_frame_dataset(data, "train", 6)
    val_list = write_frame_dataset(data, "val", 5)  # not divisible by the world size
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "side4video", "train", "--model", "side4video-tiny", "--train-list", str(train_list), "--val-list",
           str(val_list), "--data-root", str(data), "--num-classes", "2", "--frames", "2", "--epochs",
           "1", "--batch-size", "2", "--lr", "1e-3", "--device", "cpu", "--seed", "0", "--output-dir", str(out),
           "--image-size", "32", "--num-workers", "0", "--set", "test_crops=1", "--set", "test_clips=2",
           "--set", "tensorboard=false", "--set", "warmup_epochs=0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 1
    assert metrics["val"]["num_samples"] == 5
    assert math.isfinite(metrics["train_loss"])
    # The same checkpoint evaluated in one process gives the same numbers.
    model, cfg = load_model(out / "last.pt", with_config=True)
    from side4video.engine.distributed import DistInfo

    task = get_preset(cfg.model.name).task
    loader = task.make_loader(task.build_dataset(cfg, model.cfg, train=False), cfg, DistInfo(), train=False)
    single, _ = task.evaluate(model, loader, cfg, DistInfo())
    assert single == pytest.approx(metrics["val"])


def test_a_checkpoint_with_a_flat_train_config_still_loads(tmp_path):
    # Runs saved their config flat before it was grouped; load_model reads both layouts.
    model = create_model("side4video-tiny", num_classes=2, num_frames=2, image_size=32).eval()
    flat = {"model": "side4video-tiny", "num_classes": 2, "frames": 2, "image_size": 32, "test_crops": 1}
    torch.save({"model_name": "side4video-tiny", "model_config": dataclasses.asdict(model.cfg),
                "model": model.state_dict(), "train_config": flat}, tmp_path / "old.pt")
    loaded, cfg = load_model(tmp_path / "old.pt", with_config=True)
    assert (cfg.model.image_size, cfg.eval.test_crops) == (32, 1)
    video = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video))
