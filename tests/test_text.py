"""CLIP text tower and BPE tokenizer against Hugging Face ``transformers`` on tiny random weights."""

import collections
import dataclasses
import gzip
import json
import os

import pytest
import regex
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from side4video.backbones.loading import load_text_tower
from side4video.backbones.text import TextConfig, TextTransformer
from side4video.backbones.tokenizer import (
    CLIP_WORD_PATTERN,
    EOT,
    SOT,
    ClipTokenizer,
    bytes_to_unicode,
    openai_vocab,
)

CORPUS = [
    "A man is playing the guitar in the park.", "the café serves naïve crêpes to people",
    "people are singing and dancing on a stage", "a cat is sitting on the table",
    "two dogs run across the grass!!",
    "日本語のテキスト", "party time 🎉🎉", "it's a video of someone cooking pasta",
]
SENTENCES = [
    "A man is playing   the GUITAR.", "Café naïve crêpes", "party 🎉 time, 🎉!",
    "日本語 text 中文", "it's 2024, we're 42!", "  lots\tof\n space  ",
    "someone is cooking Pasta in a café", "ÅNGSTRÖM über straße",
]


def learn_merges(corpus: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Most-frequent-pair BPE over CLIP's byte-level words (ties broken by the pair itself)."""
    b2u = bytes_to_unicode()
    words: collections.Counter = collections.Counter()
    for text in corpus:
        for word in regex.findall(CLIP_WORD_PATTERN, text.lower()):
            symbols = [b2u[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    merges = []
    for _ in range(num_merges):
        pairs: collections.Counter = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: collections.Counter = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    merges = learn_merges(CORPUS * 2, 120)
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (root / "merges.txt").write_text(text, encoding="utf-8")
    (root / "vocab.json").write_text(json.dumps(openai_vocab(merges)), encoding="utf-8")
    with gzip.open(root / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    return root, merges


def test_openai_vocabulary_layout(bpe_files):
    _, merges = bpe_files
    vocab = openai_vocab(merges)
    assert len(vocab) == 512 + len(merges) + 2
    assert vocab["!"] == 0
    assert vocab["!</w>"] == 256
    assert vocab["".join(merges[0])] == 512
    assert vocab[SOT] == len(vocab) - 2
    assert vocab[EOT] == len(vocab) - 1
    assert sorted(bytes_to_unicode()) == list(range(256))
    assert len(set(bytes_to_unicode().values())) == 256


def test_token_ids_equal_transformers(bpe_files, tmp_path):
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    root, _ = bpe_files
    slow = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    fast = CLIPTokenizerFast(str(root / "vocab.json"), str(root / "merges.txt"))
    fast.save_pretrained(tmp_path)  # writes tokenizer.json
    ours = {
        "vocab+merges": ClipTokenizer.from_file(root),
        "openai gz": ClipTokenizer.from_file(root / "bpe_simple_vocab_16e6.txt.gz"),
        "tokenizer.json": ClipTokenizer.from_file(tmp_path / "tokenizer.json"),
    }
    for text in SENTENCES:
        want = fast(text)["input_ids"]
        assert slow(text)["input_ids"] == want, text
        assert len(want) > len(text.split()) + 2  # the BPE really splits words
        for name, tok in ours.items():
            ids, mask = tok.tokenize([text], context_length=64)
            assert ids[0, : len(want)].tolist() == want, (name, text)
            assert mask[0].sum() == len(want), (name, text)


def test_tokenize_pads_truncates_and_keeps_eot(bpe_files):
    tok = ClipTokenizer.from_file(bpe_files[0])
    ids, mask = tok.tokenize(["a cat", "people are singing and dancing on a stage"], context_length=8)
    assert ids.shape == mask.shape == (2, 8)
    assert ids.dtype == torch.long
    n = int(mask[0].sum())
    assert ids[0, 0] == tok.sot_id
    assert ids[0, n - 1] == tok.eot_id
    assert (ids[0, n:] == 0).all()
    assert mask[1].all()
    assert ids[1, -1] == tok.eot_id
    full = tok.encode("people are singing and dancing on a stage")
    assert ids[1, 1:-1].tolist() == full[:6]
    ids, mask = tok.tokenize("people are singing and dancing on a stage", context_length=10, truncate_to=5)
    assert mask[0].tolist() == [1] * 5 + [0] * 5
    assert ids[0, :5].tolist() == [tok.sot_id, *full[:3], tok.eot_id]
    with pytest.raises(ValueError, match="truncate_to"):
        tok.tokenize("x", context_length=8, truncate_to=9)


def tiny_hf_text(tmp_path, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=100, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=32, bos_token_id=98, eos_token_id=99, pad_token_id=0,
        hidden_act=act,
    )
    model = CLIPTextModelWithProjection(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


def token_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 98, (3, 12), generator=g)
    ids[:, 0] = 98
    ids[0, 7], ids[1, 11], ids[2, 3] = 99, 99, 99
    ids[0, 8:] = 0
    ids[2, 4:] = 0
    return ids


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_text_tower_equals_transformers(tmp_path, act):
    hf = tiny_hf_text(tmp_path, act)
    ours = load_text_tower(tmp_path).eval()
    assert ours.cfg.heads == 4
    assert ours.cfg.act == act
    assert ours.cfg.eot_token_id == 99
    ids = token_batch()
    with torch.no_grad():
        out = hf(input_ids=ids)
        torch.testing.assert_close(ours.encode_text(ids), out.text_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_tokens(ids), hf.text_projection(out.last_hidden_state))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_openai_eva_and_torchscript_layouts_load_the_same_tower(tmp_path):
    torch.manual_seed(0)
    cfg = TextConfig(vocab_size=60, context_length=12, width=64, heads=1, layers=2, output_dim=16,
                     mlp_dim=128)
    src = TextTransformer(cfg).eval()
    with torch.no_grad():
        src.logit_scale.fill_(3.0)
    sd = src.state_dict()
    visual = {"visual.proj": torch.randn(8, 16), "visual.conv1.weight": torch.randn(8, 3, 4, 4)}
    torch.save({**visual, **sd, "attn_mask": torch.ones(12, 12)}, tmp_path / "openai.pt")
    eva = {f"text.{k}": v for k, v in sd.items() if k != "logit_scale"}
    eva["logit_scale"] = sd["logit_scale"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in eva.items()}}, tmp_path / "eva.pt")
    ids = torch.randint(0, 59, (2, 10))
    torch.jit.save(torch.jit.trace(src, ids), tmp_path / "scripted.pt")
    want = src.encode_text(ids)
    for name in ("openai.pt", "eva.pt", "scripted.pt"):
        tower = load_text_tower(tmp_path / name, heads=1, act="quick_gelu").eval()
        assert tower.cfg == cfg, name
        assert tower.logit_scale.item() == 3.0, name
        torch.testing.assert_close(tower.encode_text(ids), want, rtol=0, atol=0)
    assert load_text_tower(tmp_path / "eva.pt", heads=1).cfg.act == "gelu"  # EVA-CLIP text towers use GELU
    torch.save(visual, tmp_path / "vision_only.pt")
    with pytest.raises(KeyError, match="text tower"):
        load_text_tower(tmp_path / "vision_only.pt")


def test_causal_attention_and_eot_pooling():
    torch.manual_seed(0)
    cfg = TextConfig(vocab_size=50, context_length=10, width=32, heads=2, layers=2, output_dim=8, mlp_dim=64)
    tower = TextTransformer(cfg).eval()
    ids = torch.randint(0, 48, (2, 10))
    ids[:, 5] = 49
    later = ids.clone()
    later[:, 6:] = torch.randint(0, 48, (2, 4))
    with torch.no_grad():
        a, b = tower.forward_tokens(ids), tower.forward_tokens(later)
        torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)  # no position sees the future
        assert not torch.allclose(a[:, 6:], b[:, 6:])
        torch.testing.assert_close(tower.encode_text(ids), a[:, 5])  # argmax of the ids: the EOT
        ids[:, 7] = 49  # with an explicit EOT id the first occurrence is pooled
        tower.cfg = dataclasses.replace(cfg, eot_token_id=49)
        torch.testing.assert_close(tower.encode_text(ids), tower.forward_tokens(ids)[:, 5])
    with pytest.raises(ValueError, match="context length"):
        tower.encode_text(torch.zeros(1, 11, dtype=torch.long))
