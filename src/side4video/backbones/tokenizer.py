"""CLIP's byte-level BPE tokenizer on the HF ``tokenizers`` library.

Text is cleaned as OpenAI's tokenizer does (``clean_text``: ``ftfy.fix_text``, HTML entities
unescaped twice, whitespace runs made one space, stripped, lowercased); words are then split with
CLIP's regex, mapped byte-by-byte to printable characters (GPT-2's ``bytes_to_unicode``) and merged
with BPE, the last symbol of every word carrying the ``</w>`` suffix. Sequences are
``<|startoftext|> ... <|endoftext|>`` and padded with id 0, as OpenAI's ``clip.tokenize`` does.

Readable files: HF's ``tokenizer.json``; ``vocab.json`` + ``merges.txt``; or OpenAI's
``bpe_simple_vocab_16e6.txt.gz`` (merges only: the vocabulary is rebuilt as OpenAI does).
"""

from __future__ import annotations

import gzip
import html
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP: 49408 tokens = 2 x 256 bytes + merges + 2 specials
CLIP_WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
# Unicode White_Space, what ``\s`` means in CLIP's regex (Python's ``re`` would also match U+001C-U+001F).
WHITESPACE = re.compile(r"[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def clean_text(text: str) -> str:
    """OpenAI's ``basic_clean`` then ``whitespace_clean`` then ``lower()``: mojibake, ligatures and curly
    quotes fixed by ``ftfy.fix_text`` (which also NFC-normalises), HTML entities unescaped twice
    (``&amp;#39;`` -> ``'``), every whitespace run one space, ends stripped, lowercased."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    ranges = (("!", "~"), ("¡", "¬"), ("®", "ÿ"))
    printable = [b for lo, hi in ranges for b in range(ord(lo), ord(hi) + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """Merges of a ``merges.txt`` or OpenAI's gzipped BPE file (first line is a header)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : 1 + NUM_MERGES]
    merges = []
    for n, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: a merge needs two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def openai_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's vocabulary order: bytes, bytes + ``</w>``, one token per merge, then the specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


def clip_bpe(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that splits text cleaned by ``clean_text`` exactly as CLIP does (no
    special tokens added)."""
    bpe = models.BPE(
        vocab, list(merges), unk_token=EOT, continuing_subword_prefix="", end_of_word_suffix="</w>"
    )
    tok = Tokenizer(bpe)  # no normalizer: ``clean_text`` runs before it
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SOT, EOT])
    return tok


class ClipTokenizer:
    """Turns captions into ``(ids, attention_mask)`` for the CLIP text tower; every text goes through
    ``clean_text`` first, as in OpenAI's tokenizer."""

    def __init__(self, tokenizer: Tokenizer, pad_id: int = 0) -> None:
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        ids = [tokenizer.token_to_id(t) for t in (SOT, EOT)]
        if None in ids:
            raise KeyError(f"the vocabulary has no {SOT} / {EOT} token")
        self.sot_id, self.eot_id = ids

    @classmethod
    def from_bpe(
        cls, vocab: dict[str, int], merges: Sequence[tuple[str, str]], pad_id: int = 0
    ) -> ClipTokenizer:
        return cls(clip_bpe(vocab, merges), pad_id)

    @classmethod
    def from_file(cls, path: str | Path, pad_id: int = 0) -> ClipTokenizer:
        """Read ``tokenizer.json``, a directory holding it or ``vocab.json`` + ``merges.txt``, or
        OpenAI's ``bpe_simple_vocab_16e6.txt.gz``."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                return cls(Tokenizer.from_file(str(path / "tokenizer.json")), pad_id)
            vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
            if not (vocab_file.is_file() and merges_file.is_file()):
                raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.json + merges.txt")
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            return cls.from_bpe(vocab, read_merges(merges_file), pad_id)
        if path.name.endswith(".json"):
            return cls(Tokenizer.from_file(str(path)), pad_id)
        if path.name.endswith((".txt", ".txt.gz")):
            merges = read_merges(path)
            return cls.from_bpe(openai_vocab(merges), merges, pad_id)
        raise ValueError(f"{path}: expected tokenizer.json, a directory, merges.txt or a .txt.gz BPE file")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start / end tokens."""
        return self.tokenizer.encode(clean_text(text), add_special_tokens=False).ids

    def tokenize(
        self, texts: str | Sequence[str], context_length: int = 77, truncate_to: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids ``(B, context_length)`` and attention mask ``(B, context_length)`` (1 on real tokens).

        Each sequence is ``SOT, tokens, EOT``, cut to ``truncate_to`` tokens (default:
        ``context_length``) with EOT kept as the last one, then padded with ``pad_id``.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = context_length if truncate_to is None else truncate_to
        if not 2 <= limit <= context_length:
            raise ValueError(f"truncate_to={truncate_to} must lie in [2, context_length={context_length}]")
        ids = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), context_length, dtype=torch.long)
        encodings = self.tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        for row, enc in enumerate(encodings):
            seq = [self.sot_id, *enc.ids[: limit - 2], self.eot_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    __call__ = tokenize


def load_tokenizer(path: str | Path, pad_id: int = 0) -> ClipTokenizer:
    return ClipTokenizer.from_file(path, pad_id)
