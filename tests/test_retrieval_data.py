"""Retrieval data: MSR-VTT / MSVD / VATEX / TSV readers, caption datasets, bad videos, synthetic captions."""

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fixtures import frame_numbers, make_corrupt_video, numbered_frames
from side4video.backbones.text import TextConfig
from side4video.backbones.tokenizer import ClipTokenizer, openai_vocab
from side4video.backbones.vit import VisionConfig, build_vit
from side4video.data import (
    BadSample,
    CaptionDataset,
    CaptionedSplit,
    CaptionFormatError,
    VideoReadError,
    collate_captions,
    make_captioned_dataset,
    read_all_frames,
    read_caption_tsv,
    read_captions,
    read_msrvtt,
    read_msvd,
    read_vatex,
    segment_indices,
    write_video,
)
from side4video.data.synthetic_captions import COLOURS, DIRECTIONS, SHAPES
from side4video.data.transforms import CLIP_MEAN, CLIP_STD
from side4video.engine.retrieval import contrastive_loss
from side4video.methods.retrieval import RetrievalConfig, Side4VideoRetrieval
from side4video.metrics import retrieval_metrics
from test_text import learn_merges

CAPTIONS = ["a man plays the guitar", "a red square moves left", "a dog runs on grass", "two cats sleep"]


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    merges = learn_merges(CAPTIONS * 3, 60)
    return ClipTokenizer.from_bpe(openai_vocab(merges), merges)


# ---------------------------------------------------------------------------------------------- readers


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_msrvtt_train_has_every_caption_and_test_one_per_video(tmp_path):
    write_csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"], [["video2"], ["video0"]])
    sentences = [
        {"video_id": "video0", "caption": "a man sings", "sen_id": 0},
        {"video_id": "video9", "caption": "held out", "sen_id": 1},
        {"video_id": "video2", "caption": "cars race", "sen_id": 2},
        {"video_id": "video0", "caption": "someone is singing", "sen_id": 3},
    ]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "sentences": sentences}))
    rows = [["ret0", "msr9", "video9", "a cat, sleeping"], ["ret1", "msr7", "video7", "a dog runs"]]
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], rows)

    train = read_msrvtt(tmp_path, "train")
    assert train.videos == ["video2.mp4", "video0.mp4"]
    assert train.captions == ["cars race", "a man sings", "someone is singing"]
    assert train.caption_video == [0, 1, 1]
    test = read_captions("msrvtt", tmp_path, "test")
    assert test.videos == ["video9.mp4", "video7.mp4"]
    assert test.captions == ["a cat, sleeping", "a dog runs"]
    assert test.caption_video == [0, 1]

    write_csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video5"]])
    with pytest.raises(CaptionFormatError, match=r"MSRVTT_data\.json.*no captions.*video5"):
        read_msrvtt(tmp_path, "train")
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", ["key", "video_id", "caption"], rows)
    with pytest.raises(CaptionFormatError, match=r"MSRVTT_JSFUSION_test\.csv.*'sentence'"):
        read_msrvtt(tmp_path, "test")
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": []}))
    with pytest.raises(CaptionFormatError, match=r"MSRVTT_data\.json.*'sentences'"):
        read_msrvtt(tmp_path, "train")


def test_msvd_pickle_with_token_lists_and_strings(tmp_path):
    raw = {
        "vidA": [["a", "man", "is", "cooking"], ["someone", "cooks"]],
        "vidB": ["a woman is dancing", ["she", "dances"], "dancing woman"],
        "vidC": [["unused"]],
    }
    with open(tmp_path / "raw-captions.pkl", "wb") as f:
        pickle.dump(raw, f)
    (tmp_path / "test_list.txt").write_text("vidB\nvidA\n\n")
    split = read_msvd(tmp_path, "test")
    assert split.videos == ["vidB.avi", "vidA.avi"]
    assert split.captions_of(0) == ["a woman is dancing", "she dances", "dancing woman"]
    assert split.captions_of(1) == ["a man is cooking", "someone cooks"]
    assert split.text_to_video.tolist() == [0, 0, 0, 1, 1]

    (tmp_path / "val_list.txt").write_text("vidA\nvidZ\n")
    with pytest.raises(CaptionFormatError, match=r"raw-captions\.pkl.*vidZ"):
        read_msvd(tmp_path, "val")
    with pytest.raises(CaptionFormatError, match=r"train_list\.txt"):
        read_msvd(tmp_path, "train")
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CaptionFormatError, match=r"bad\.pkl"):
        read_msvd(tmp_path, "test", captions_file="bad.pkl")


def test_vatex_dict_and_official_encap_layouts_agree(tmp_path):
    (tmp_path / "test_list.txt").write_text("Ptf_000122_000132\nAbc_000001_000011\n")
    as_dict = {"Abc_000001_000011": ["a boy jumps", "kid jumping"], "Ptf_000122_000132": ["a pan", "cooking"]}
    official = [
        {"videoID": "Ptf_000122_000132", "enCap": ["a pan", "cooking"], "chCap": ["锅"]},
        {"videoID": "Abc_000001_000011", "enCap": ["a boy jumps", "kid jumping"], "chCap": ["跳"]},
    ]
    splits = []
    for name, data in (("dict.json", as_dict), ("official.json", official)):
        (tmp_path / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        splits.append(read_vatex(tmp_path, "test", captions_file=name))
    assert splits[0] == splits[1]
    assert splits[0].videos == ["Ptf_000122_000132.mp4", "Abc_000001_000011.mp4"]
    assert splits[0].caption_video == [0, 0, 1, 1]
    assert splits[0].captions_of(1) == ["a boy jumps", "kid jumping"]

    (tmp_path / "broken.json").write_text(json.dumps([{"videoID": "x", "chCap": ["a"]}]))
    with pytest.raises(CaptionFormatError, match=r"broken\.json.*\[0\].*'enCap'"):
        read_vatex(tmp_path, "test", captions_file="broken.json")


def test_tsv_groups_videos_and_names_the_malformed_line(tmp_path):
    path = tmp_path / "captions.tsv"
    lines = ["# video<TAB>caption", "v/a.mp4\ta dog runs", "", "v/b.mp4\ta cat sleeps",
             "v/a.mp4\ta running dog"]
    path.write_text("\n".join(lines) + "\n")
    split = read_caption_tsv(path)
    assert split == CaptionedSplit(["v/a.mp4", "v/b.mp4"], ["a dog runs", "a cat sleeps", "a running dog"],
                                   [0, 1, 0])
    path.write_text("v/a.mp4\ta dog runs\n# note\nv/b.mp4 a cat without tab\n")
    with pytest.raises(CaptionFormatError, match=r"captions\.tsv:3:"):
        read_caption_tsv(path)
    path.write_text("v/a.mp4\t   \n")
    with pytest.raises(CaptionFormatError, match=r"captions\.tsv:1:"):
        read_captions("tsv", path)
    with pytest.raises(KeyError, match="unknown retrieval dataset"):
        read_captions("youcook", path)


# ---------------------------------------------------------------------------------------------- datasets


def levels(video: torch.Tensor, step: int = 6) -> np.ndarray:
    """Frame numbers of a normalised ``(3, T, S, S)`` clip of ``numbered_frames``."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    pixels = ((video * std + mean) * 255).permute(1, 2, 3, 0).numpy()  # (T, S, S, 3)
    return frame_numbers(pixels, step)


@pytest.fixture(scope="module")
def numbered_split(tmp_path_factory):
    """Three numbered 36-frame videos (one listed as .avi but stored as .mp4) and a corrupt one."""
    root = tmp_path_factory.mktemp("numbered")
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_video(root / name, numbered_frames(36, size=32), gop_size=6)
    make_corrupt_video(root / "broken.mp4", "truncated")
    pairs = [("a.mp4", CAPTIONS[0]), ("c.avi", CAPTIONS[1]), ("broken.mp4", CAPTIONS[2]),
             ("a.mp4", CAPTIONS[3]), ("b.mp4", CAPTIONS[2])]
    videos = ["a.mp4", "c.avi", "broken.mp4", "b.mp4"]
    return root, CaptionedSplit(videos, [c for _, c in pairs], [videos.index(v) for v, _ in pairs])


def test_items_shapes_tokens_and_uniform_frames(numbered_split, tokenizer):
    root, split = numbered_split
    kw = dict(num_frames=12, image_size=32, text_length=32)
    test = CaptionDataset(split, root, tokenizer, train=False, **kw)
    ids, mask = tokenizer.tokenize(split.captions, context_length=32)
    centres = segment_indices(36, 12, train=False)
    np.testing.assert_array_equal(centres, np.arange(12) * 3 + 1)
    for i in (0, 1, 3):
        item = test[i]
        assert item["video"].shape == (3, 12, 32, 32)
        assert item["video"].dtype == torch.float32
        assert item["ids"].shape == item["mask"].shape == (32,)
        assert item["ids"].dtype == torch.long
        torch.testing.assert_close(item["ids"], ids[i], rtol=0, atol=0)
        torch.testing.assert_close(item["mask"], mask[i], rtol=0, atol=0)
        assert item["index"] == i
        assert item["video_index"] == split.caption_video[i]
        np.testing.assert_array_equal(item["frame_indices"], centres)
        np.testing.assert_array_equal(levels(item["video"]), centres)  # the decoded frames are those
        # evaluation encodes each video once, with exactly the clip of its captions' items
        once = test.eval_videos[item["video_index"]]["video"]
        torch.testing.assert_close(once, item["video"], rtol=0, atol=0)
    assert test[1]["path"] == os.path.join(root, "c.mp4")  # listed .avi, found .mp4

    train = CaptionDataset(split, root, tokenizer, train=True, seed=3, **kw)
    draws = []
    for epoch in (0, 0, 1):
        train.set_epoch(epoch)
        item = train[0]
        frames = item["frame_indices"].numpy()
        assert np.all((frames >= np.arange(12) * 3) & (frames < np.arange(12) * 3 + 3))  # one per segment
        np.testing.assert_array_equal(levels(item["video"]), frames)
        draws.append(frames)
    np.testing.assert_array_equal(draws[0], draws[1])  # deterministic given (seed, epoch, index)
    assert not np.array_equal(draws[0], draws[2])
    other_caption = train[3]  # same video as caption 0
    assert not np.array_equal(train[0]["frame_indices"], other_caption["frame_indices"])


def test_corrupt_video_is_reported_and_excluded(numbered_split, tokenizer):
    root, split = numbered_split
    kw = dict(num_frames=4, image_size=32, text_length=16)
    skip = CaptionDataset(split, root, tokenizer, train=True, **kw)
    batch = next(iter(DataLoader(skip, batch_size=5, collate_fn=collate_captions)))
    assert batch["video"].shape == (4, 3, 4, 32, 32)
    assert batch["ids"].shape == (4, 16)
    assert batch["index"].tolist() == [0, 1, 3, 4]
    assert len(batch["bad"]) == 1
    assert batch["bad"][0].index == 2
    assert batch["bad"][0].path.endswith("broken.mp4")
    assert batch["bad"][0].reason

    resample = CaptionDataset(split, root, tokenizer, train=True, bad_sample_policy="resample", **kw)
    item = resample[2]
    assert item["video_index"] != 2
    assert [b.index for b in item["bad"]] == [2]
    assert collate_captions([resample[i] for i in range(5)])["video"].shape[0] == 5  # DDP keeps its size
    with pytest.raises(VideoReadError, match="broken.mp4"):
        CaptionDataset(split, root, tokenizer, train=True, bad_sample_policy="fail", **kw)[2]

    videos = collate_captions([skip.eval_videos[v] for v in range(4)])
    assert videos["video_index"].tolist() == [0, 1, 3]
    assert isinstance(videos["bad"][0], BadSample)
    keep, target = skip.eval_targets(videos["video_index"])
    assert keep.tolist() == [True, True, False, True, True]  # the broken video's caption is left out
    assert target.tolist() == [0, 1, 0, 2]
    assert collate_captions([skip[2]])["video"] is None


# ---------------------------------------------------------------------------------------------- synthetic


def object_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.linalg.norm(frame.astype(float) - COLOURS[colour], axis=-1) < 60  # (H, W)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    return make_captioned_dataset(root, num_per_caption=1, num_frames=8, size=48)


def test_synthetic_captions_match_appearance_and_motion(synthetic):
    train, test = read_caption_tsv(synthetic.train_file), read_caption_tsv(synthetic.test_file)
    assert not set(train.videos) & set(test.videos)
    combos = len(COLOURS) * len(SHAPES) * len(DIRECTIONS)
    assert len(test.videos) == len(train.videos) == combos
    assert len(test.captions) == combos * synthetic.captions_per_video
    assert synthetic.captions_per_video >= 2
    areas = {}
    for v, video in enumerate(test.videos):
        captions = test.captions_of(v)
        assert len(set(captions)) == synthetic.captions_per_video  # paraphrases, not copies
        colour = next(c for c in COLOURS if all(c in cap for cap in captions))
        shape = next(s for s in SHAPES if s in captions[0])
        direction = next(d for d in DIRECTIONS if d in captions[0])
        frames = read_all_frames(os.path.join(synthetic.root, video))
        assert frames.shape == (8, 48, 48, 3)
        masks = [object_pixels(f, colour) for f in frames]
        assert all(m.sum() > 20 for m in masks)
        ys, xs = zip(*[np.argwhere(m).mean(0) for m in masks], strict=True)
        along, across = (xs, ys) if direction in ("left", "right") else (ys, xs)
        sign = 1 if direction in ("right", "down") else -1
        assert np.all(sign * np.diff(along) > 0)  # moves the captioned way at every frame
        assert np.ptp(across) < 1.5
        areas.setdefault(shape, []).append(masks[0].sum())
    assert np.mean(areas["circle"]) < 0.9 * np.mean(areas["square"])


def test_synthetic_eval_pass_through_a_retrieval_model(synthetic, tokenizer):
    """Loader -> tiny Side4Video retrieval model: training loss with gradients, then a full evaluation."""
    split = read_caption_tsv(synthetic.test_file)
    text = TextConfig(vocab_size=tokenizer.vocab_size, context_length=16, width=32, heads=2, layers=1,
                      output_dim=32, mlp_dim=64)
    vit = VisionConfig(width=64, layers=2, heads=2, mlp_dim=128, patch_size=8, image_size=16, output_dim=32)
    cfg = RetrievalConfig("tiny", num_frames=4, side_layers=2, side_width=64, text=text, text_length=16)
    model = Side4VideoRetrieval(cfg, build_vit(vit))
    clip = dict(num_frames=4, image_size=16, text_length=16)
    data = CaptionDataset(split, synthetic.root, tokenizer, train=True, **clip)
    loader = DataLoader(data, batch_size=6, shuffle=True, drop_last=True, collate_fn=collate_captions)
    batch = next(iter(loader))
    loss = contrastive_loss(model, batch["video"], batch["ids"], batch["mask"])
    loss.backward()
    assert torch.isfinite(loss)
    assert model.up.weight.grad.abs().sum() > 0  # U_p, zero at init

    model.eval()
    pairs = CaptionDataset(split, synthetic.root, tokenizer, train=False, **clip)
    with torch.no_grad():  # every video encoded once, every caption once
        videos = collate_captions([data.eval_videos[v] for v in range(len(data.eval_videos))])
        texts = model.encode_text(data.ids, data.mask)
        sim = model.similarity(model.encode_video(videos["video"]), texts, data.mask)  # (Nt, Nv)
        for i in (0, 5, len(pairs) - 1):  # the same score as the caption's own (video, text) item
            item = collate_captions([pairs[i]])
            text = model.encode_text(item["ids"], item["mask"])
            own = model.similarity(model.encode_video(item["video"]), text, item["mask"])
            torch.testing.assert_close(own[0, 0], sim[i, split.caption_video[i]])
    keep, target = data.eval_targets(videos["video_index"])
    assert sim.shape == (len(split.captions), len(split.videos))
    assert keep.all()
    metrics = retrieval_metrics(sim[keep], target)
    r1 = 100 * (sim.argmax(1) == target).float().mean()
    assert metrics["t2v_r1"] == pytest.approx(float(r1))
