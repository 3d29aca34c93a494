"""Retrieval in the engine and the CLI: train --task retrieval, resume, eval (also over two processes),
search with its embedding cache, embed, and the text tower loaded with a pretrained CLIP checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fixtures import decoded_once, make_corrupt_video
from side4video.backbones.text import TEXT_TOWERS, TextTransformer
from side4video.backbones.tokenizer import load_tokenizer
from side4video.backbones.vit import build_vit
from side4video.cli import main
from side4video.data import VideoOnlyDataset
from side4video.data.synthetic_captions import (
    COLOURS,
    SHAPES,
    make_captioned_dataset,
    paraphrases,
    write_caption_tokenizer,
)
from side4video.engine.checkpoint import load_checkpoint, load_model
from side4video.engine.config import TrainConfig, make_config, replace
from side4video.engine.distributed import DistInfo
from side4video.engine.retrieval import RETRIEVAL
from side4video.engine.train import train
from side4video.methods.retrieval import Side4VideoRetrieval
from side4video.metrics import retrieval_metrics
from side4video.models import create_model

FRAMES, IMAGE = 4, 32
DIRS = ("left", "right")  # 4 colours x 2 shapes x 2 directions = 16 videos per split, 3 captions each
NUM_VIDEOS = len(COLOURS) * len(SHAPES) * len(DIRS)
EPOCHS = 5  # of the trained run below: held-out R@5 50-60 %, mean rank 5.5-6.8 over seeds 0-5 (chance 31 %, 8.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    synthetic = make_captioned_dataset(root, num_frames=8, size=64, directions=DIRS)
    return synthetic, write_caption_tokenizer(root / "tokenizer.json")


def config(data, out: Path, **kw) -> TrainConfig:
    synthetic, tokenizer = data
    base = dict(
        model="side4video-retrieval-tiny", frames=FRAMES, image_size=IMAGE, epochs=2, warmup_epochs=1,
        batch_size=8, lr=1e-3, lr_clip=1e-3, weight_decay=0.0, betas=(0.9, 0.98), num_workers=0, device="cpu",
        output_dir=str(out), tensorboard=False, log_every=6, train_list=synthetic.train_file,
        val_list=synthetic.test_file, data_root=synthetic.root, tokenizer=tokenizer,
    )
    return make_config(**{**base, **kw})


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Side4Video retrieval trained from the command line; no CLIP weights, so CLIP's parts get lr too."""
    torch.set_num_threads(1)
    synthetic, tokenizer = data
    out = tmp_path_factory.mktemp("run")
    with decoded_once():  # each video decoded once for the 5 epochs
        code = main([
            "train", "--task", "retrieval", "--model", "side4video-retrieval-tiny", "--train-list",
            synthetic.train_file, "--val-list", synthetic.test_file, "--data-root", synthetic.root, "--tokenizer",
            tokenizer, "--frames", str(FRAMES), "--image-size", str(IMAGE), "--epochs", str(EPOCHS),
            "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--seed", "0", "--output-dir", str(out),
            "--num-workers", "0",
            "--set", "lr_clip=1e-3", "--set", "weight_decay=0", "--set", "warmup_epochs=1", "--set", "betas=0.9,0.98",
            "--set", "tensorboard=false", "--set", "log_every=6", "--set", f"eval_every={EPOCHS}",
        ])
    assert code == 0
    return out


def test_train_cli_retrieval_learns_above_chance(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    val = metrics["val"]
    assert sorted(val) == sorted(
        [f"{d}_{m}" for d in ("t2v", "v2t") for m in ("r1", "r5", "r10", "medr", "meanr")] + ["num_videos", "num_texts"]
    )  # plain numbers only: DSL is opt-in
    assert (val["num_videos"], val["num_texts"]) == (NUM_VIDEOS, 3 * NUM_VIDEOS)
    chance_r1 = 100.0 / NUM_VIDEOS  # held-out videos of the same (colour, shape, direction) captions
    assert val["t2v_r1"] >= 1.5 * chance_r1, val  # the tiny model reliably learns colours (see the search test)
    assert val["t2v_r5"] >= 1.5 * 5 * chance_r1, val
    assert val["t2v_meanr"] <= 0.85 * (NUM_VIDEOS + 1) / 2, val
    assert metrics["best_t2v_r1"] == val["t2v_r1"]
    epochs = [r for r in map(json.loads, (trained / "log.jsonl").read_text().splitlines()) if r["type"] == "epoch"]
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    ckpt = load_checkpoint(trained / "best.pt")
    assert ckpt["model_name"] == "side4video-retrieval-tiny"
    assert ckpt["train_config"]["model"]["task"] == "retrieval"
    assert ckpt["step"] == EPOCHS * (3 * NUM_VIDEOS // 8)  # drop_last: full batches only


def test_task_flag_must_agree_with_the_preset(capsys):
    code, _, err = run(capsys, "train", "--task", "retrieval", "--model", "side4video-tiny", "--print-config")
    assert code == 2
    assert "task: 'retrieval' does not match model 'side4video-tiny', a recognition preset" in err
    code, out, _ = run(capsys, "train", "--task", "retrieval", "--model", "clip4clip-frozen-tiny", "--print-config",
                       "--set", "lr_clip=1e-6")
    assert code == 0
    assert "task: retrieval" in out
    assert "lr_clip: 1.0e-06" in out


def test_eval_cli_reproduces_the_runs_metrics(trained, capsys):
    expected = json.loads((trained / "metrics.json").read_text())["val"]
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained / "last.pt"), "--device", "cpu", "--json")
    assert code == 0
    got = json.loads(out)
    assert got.pop("checkpoint") == str(trained / "last.pt")
    assert got == expected
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained / "last.pt"), "--device", "cpu", "--json", "--dsl")
    with_dsl = json.loads(out)
    assert {k: with_dsl[k] for k in expected} == expected  # the plain numbers stay beside the DSL ones
    assert {"dsl_t2v_r1", "dsl_v2t_meanr"} <= set(with_dsl)
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained / "last.pt"), "--device", "cpu")
    assert f"t2v R@1 {expected['t2v_r1']:.2f}" in out


def _count_encode_video(monkeypatch) -> list[int]:
    """Batch sizes passed to ``Side4VideoRetrieval.encode_video`` from now on."""
    calls: list[int] = []
    original = Side4VideoRetrieval.encode_video

    def counted(self, video):
        calls.append(video.shape[0])
        return original(self, video)

    monkeypatch.setattr(Side4VideoRetrieval, "encode_video", counted)
    return calls


def test_search_finds_the_captioned_video_and_reuses_the_cache(data, trained, tmp_path, capsys, monkeypatch):
    synthetic, _ = data
    videos = tmp_path / "library"
    (videos / "nested").mkdir(parents=True)
    names = [f"{c}_square_left_000.mp4" for c in COLOURS]  # one training video per colour
    for i, name in enumerate(names):
        shutil.copy(Path(synthetic.root) / "videos" / "train" / name, videos / ("nested" if i % 2 else "") / name)
    make_corrupt_video(videos / "broken.mp4", "garbage")
    (videos / "notes.txt").write_text("not a video")
    calls = _count_encode_video(monkeypatch)
    ckpt = str(trained / "last.pt")

    hits = {}
    for colour in COLOURS:
        query = paraphrases(colour, "square", "left")[0]  # a caption seen in training
        code, out, err = run(capsys, "search", "--checkpoint", ckpt, "--videos", str(videos), query, "--json",
                             "--topk", "3", "--device", "cpu")
        assert code == 0
        (result,) = [json.loads(line) for line in out.splitlines()]
        assert result["query"] == query
        assert [r["rank"] for r in result["results"]] == [1, 2, 3]
        assert list(result["errors"]) == [str((videos / "broken.mp4").resolve())]  # reported, every time
        assert f"unreadable video {videos.resolve() / 'broken.mp4'}" in err
        hits[colour] = Path(result["results"][0]["path"]).name
    assert hits == {c: n for c, n in zip(COLOURS, names, strict=True)}
    assert sum(calls) == len(names)  # encoded by the first query only
    assert "0 encoded" in err
    assert (videos / ".side4video_embeddings.pt").is_file()

    # A changed video is encoded again, alone.
    changed = videos / "nested" / names[1]
    shutil.copy(Path(synthetic.root) / "videos" / "train" / "green_square_right_000.mp4", changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    code, _, err = run(capsys, "search", "--checkpoint", ckpt, "--videos", str(videos), "a red box", "--device", "cpu")
    assert code == 0
    assert sum(calls) == len(names) + 1
    assert "1 encoded" in err


def test_embed_writes_video_and_text_embeddings(data, trained, tmp_path, capsys):
    synthetic, tokenizer = data
    videos = Path(synthetic.root) / "videos" / "test"
    ckpt = str(trained / "last.pt")
    code, _, _ = run(capsys, "embed", "--checkpoint", ckpt, "--videos", str(videos), "--out",
                     str(tmp_path / "v.pt"), "--device", "cpu")
    assert code == 0
    saved = torch.load(tmp_path / "v.pt", weights_only=True)
    assert saved["kind"] == "video"
    assert saved["errors"] == {}
    assert len(saved["paths"]) == NUM_VIDEOS
    assert saved["embeddings"].shape == (NUM_VIDEOS, FRAMES, 128)  # frame embeddings for token-wise matching
    model = load_model(ckpt)
    clip = VideoOnlyDataset([saved["paths"][3]], None, num_frames=FRAMES, image_size=IMAGE)[0]["video"]
    with torch.no_grad():
        torch.testing.assert_close(saved["embeddings"][3], model.encode_video(clip[None])[0])

    texts = ["a red square moves left", "the blue circle slides to the right", "a green ball"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n\n")
    code, _, _ = run(capsys, "embed", "--checkpoint", ckpt, "--texts", str(tmp_path / "texts.txt"), "--out",
                     str(tmp_path / "t.pt"), "--device", "cpu")
    assert code == 0
    saved = torch.load(tmp_path / "t.pt", weights_only=True)
    assert (saved["kind"], saved["texts"]) == ("text", texts)
    length = model.cfg.text_length
    assert saved["embeddings"].shape == (3, length, 128)
    ids, mask = load_tokenizer(tokenizer).tokenize(texts, context_length=length)
    assert torch.equal(saved["mask"], mask)
    with torch.no_grad():
        torch.testing.assert_close(saved["embeddings"], model.encode_text(ids, mask))


class Interrupt(Exception):
    pass


def test_resumed_retrieval_run_ends_like_an_uninterrupted_one(data, tmp_path):
    torch.set_num_threads(1)
    synthetic, _ = data
    subset = {}  # 2 steps per epoch, 8 videos to evaluate: resuming is what is tested here, not learning
    for split, lines in (("train", 16), ("val", 24)):
        subset[f"{split}_list"] = str(tmp_path / f"{split}.tsv")
        source = synthetic.train_file if split == "train" else synthetic.test_file
        Path(subset[f"{split}_list"]).write_text("\n".join(Path(source).read_text().splitlines()[:lines]) + "\n")
    train(config(data, tmp_path / "full", **subset))

    part = config(data, tmp_path / "part", **subset)
    interrupted = RETRIEVAL.build_dataset(part, create_model(part.model.name, num_frames=FRAMES).cfg, train=True)

    def stop_at_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Interrupt
        interrupted.clips.set_epoch(epoch)

    interrupted.set_epoch = stop_at_epoch_2
    with pytest.raises(Interrupt):
        train(part, interrupted)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    train(replace(part, resume="auto"))

    assert (tmp_path / "part" / "metrics.json").read_text() == (tmp_path / "full" / "metrics.json").read_text()
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "part"))
    assert a["step"] == b["step"] == 2 * 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lrs = {g["name"]: g["lr"] for g in a["optimizer"]["param_groups"]}
    assert set(lrs) == {"clip_decay", "clip_no_decay", "default_decay", "default_no_decay"}


def _eval_worker(rank: int, world: int, init_file: str, ckpt: str, val_list: str, results: dict) -> None:
    torch.set_num_threads(1)  # a forked child, as DataLoader workers are
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, cfg = load_model(ckpt, with_config=True)
    cfg = replace(cfg, val_list=val_list, eval_batch_size=3, sim_chunk=5)
    task, info = RETRIEVAL, DistInfo(rank, world)
    data = task.make_loader(task.build_dataset(cfg, model.cfg, False), cfg, info, False)
    metrics, out = task.evaluate(model, data, cfg, info)
    results[rank] = (metrics, out.sim, out.video_index, out.text_to_video)
    dist.destroy_process_group()


def test_two_process_evaluation_equals_one_process(data, trained, tmp_path):
    """Each rank encodes a shard of the videos and captions; padding repeats are dropped after gathering."""
    synthetic, _ = data
    lines = Path(synthetic.test_file).read_text().splitlines()
    val_list = tmp_path / "val.tsv"
    val_list.write_text("\n".join(lines[3:]) + "\n")  # 15 videos: the sampler pads a shard
    ckpt = str(trained / "last.pt")
    with tempfile.TemporaryDirectory() as tmp:
        results = mp.Manager().dict()
        mp.start_processes(_eval_worker, args=(2, os.path.join(tmp, "init"), ckpt, str(val_list), results),
                           nprocs=2, start_method="fork")
    model, cfg = load_model(ckpt, with_config=True)
    cfg = replace(cfg, val_list=str(val_list))
    task, info = RETRIEVAL, DistInfo()
    single, out = task.evaluate(model, task.make_loader(task.build_dataset(cfg, model.cfg, False), cfg, info, False),
                                cfg, info)
    assert (single["num_videos"], single["num_texts"]) == (NUM_VIDEOS - 1, 3 * NUM_VIDEOS - 3)
    for rank in range(2):
        metrics, sim, video_index, text_to_video = results[rank]
        assert list(video_index) == list(range(NUM_VIDEOS - 1))  # each video once, in dataset order
        assert torch.equal(text_to_video, out.text_to_video)
        torch.testing.assert_close(sim, out.sim)  # shards of other sizes: equal up to rounding
        counts = {"num_videos": NUM_VIDEOS - 1, "num_texts": 3 * NUM_VIDEOS - 3}
        assert metrics == {**retrieval_metrics(sim, text_to_video), **counts}


def test_pretrained_clip_checkpoint_brings_its_text_tower(tmp_path):
    torch.manual_seed(0)
    vit, text = build_vit("tiny"), TextTransformer(TEXT_TOWERS["tiny"])
    with torch.no_grad():
        text.logit_scale.fill_(2.5)
    sd = {**{f"visual.{k}": v for k, v in vit.state_dict().items()}, **text.state_dict()}  # OpenAI layout
    torch.save(sd, tmp_path / "clip.pt")
    model = create_model("side4video-retrieval-tiny", pretrained=str(tmp_path / "clip.pt"), image_size=IMAGE)
    for key, value in text.state_dict().items():
        assert torch.equal(model.text.state_dict()[key], value), key
    assert torch.equal(model.backbone.transformer.resblocks[0].attn.in_proj_weight,
                       vit.transformer.resblocks[0].attn.in_proj_weight)

    wide = TextTransformer(dataclasses.replace(TEXT_TOWERS["tiny"], layers=3))
    torch.save({**{f"visual.{k}": v for k, v in vit.state_dict().items()}, **wide.state_dict()}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="text tower"):
        create_model("clip4clip-frozen-tiny", pretrained=str(tmp_path / "w.pt"), image_size=IMAGE)
