"""Token ids equal OpenAI's reference tokenizer on CLIP's real BPE vocabulary.

The reference (OpenAI's ``simple_tokenizer.py``) and the vocabulary (``bpe_simple_vocab_16e6.txt.gz``)
are read out of the ``clip-anytorch`` wheel, and 1,000 ImageNet class names out of the
``open-clip-torch`` wheel, both fetched with ``pip download --no-deps`` as test data (``.ci/run`` does
it beforehand; nothing of them is installed or imported as a package). The texts: those class names,
the Kinetics-400 classes and the Something-Something templates (``data/video_class_names.txt``), and
hand-written hard cases: HTML entities, curly quotes, ligatures, mojibake, emoji, accents, spacing.
"""

import ast
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from side4video.backbones.tokenizer import ClipTokenizer

WHEELS = {"clip-anytorch": "2.6.0", "open-clip-torch": "3.3.0"}
CACHE = Path(os.environ.get("SIDE4VIDEO_TEST_WHEELS", Path.home() / ".cache" / "side4video-test-wheels"))
VIDEO_CLASSES = Path(__file__).parent / "data" / "video_class_names.txt"
HARD_CASES = [
    "Tom &amp; Jerry",  # HTML entities, also double-escaped
    "a man&#39;s hat",
    "rock &amp;amp; roll &lt;live&gt; &quot;quoted&quot;",
    "&amp;#39;twice&amp;#39;",
    "don’t stop “believing” ‘now’",  # curly quotes
    "the ﬁrst ﬂoor is ﬀ",  # ligatures
    "cafÃ© dÃ©jÃ  vu",  # mojibake (UTF-8 read as Latin-1)
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "party 🎉🎉 time 👍🏽 family 👨‍👩‍👧 flag 🇯🇵",  # emoji, skin tone, ZWJ sequence, flag
    "Crème brûlée at the Café Noël, naïve façade, ÅNGSTRÖM über Straße",  # accents
    "cafe\u0301 composed vs café precomposed",  # combining accent
    "  lots   of\t\ttabs\nand\r\nnewlines\u00a0nbsp\u2003em\u3000ideographic  ",  # whitespace
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ and ①②③",
    "日本語のテキスト 中文 한국어 русский текст ελληνικά ΟΔΟΣ",
    "it's 2024, we're 42! I'LL say I'd've 3.14159",
    "<|startoftext|>a special<|endoftext|> token in text",
    "word" * 30,  # one long word, many merges
    "",
    "   ",
]


def wheel(name: str) -> Path:
    """The pinned wheel of ``name`` in the cache, downloaded (without dependencies) when missing."""
    version = WHEELS[name]
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(CACHE.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               f"{name}=={version}", "-d", str(CACHE)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        found = sorted(CACHE.glob(pattern))
        if not found:
            message = f"could not fetch test data {name}=={version} with {' '.join(cmd)}: {done.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    return found[0]


@pytest.fixture(scope="module")
def openai_clip(tmp_path_factory):
    """OpenAI's ``SimpleTokenizer`` (executed from the wheel's source) and the extracted vocabulary."""
    root = tmp_path_factory.mktemp("openai_clip")
    with zipfile.ZipFile(wheel("clip-anytorch")) as z:
        z.extract("clip/bpe_simple_vocab_16e6.txt.gz", root)
        source = z.read("clip/simple_tokenizer.py").decode("utf-8")
    module = types.ModuleType("openai_simple_tokenizer")
    module.__file__ = str(root / "clip" / "simple_tokenizer.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    vocab = root / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    return module, module.SimpleTokenizer(str(vocab)), vocab


def imagenet_class_names() -> list[str]:
    with zipfile.ZipFile(wheel("open-clip-torch")) as z:
        tree = ast.parse(z.read("open_clip/zero_shot_metadata.py").decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IMAGENET_CLASSNAMES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("IMAGENET_CLASSNAMES not found in open_clip/zero_shot_metadata.py")


def real_texts() -> list[str]:
    lines = VIDEO_CLASSES.read_text(encoding="utf-8").splitlines()
    video = [line for line in lines if line and not line.startswith("#")]
    assert len(video) == 400 + 174
    imagenet = imagenet_class_names()
    assert len(imagenet) == 1000
    return imagenet + video + [f"a video of a person {name}." for name in video[:400]]


def test_token_ids_equal_openai_on_real_vocabulary(openai_clip):
    _, reference, vocab = openai_clip
    ours = ClipTokenizer.from_file(vocab)
    assert ours.vocab_size == len(reference.encoder) == 49408
    texts = real_texts() + HARD_CASES
    mismatches = [(t, ours.encode(t), reference.encode(t)) for t in texts if ours.encode(t) != reference.encode(t)]
    assert not mismatches, mismatches[:5]
    # Whole sequences as clip.tokenize builds them: SOT, tokens, EOT, zero padding (77 positions).
    ids, mask = ours.tokenize(HARD_CASES, context_length=77)
    for row, text in enumerate(HARD_CASES):
        want = [reference.encoder["<|startoftext|>"], *reference.encode(text), reference.encoder["<|endoftext|>"]]
        assert ids[row].tolist() == want + [0] * (77 - len(want)), text
        assert int(mask[row].sum()) == len(want)


def test_hard_cases_need_the_cleaning(openai_clip, monkeypatch):
    """Without ``basic_clean`` (ftfy + HTML unescaping) the entity, quote, ligature and mojibake cases
    get other ids: the equality above is not reached by lower-casing alone."""
    module, reference, _ = openai_clip
    cleaned = {text: reference.encode(text) for text in HARD_CASES[:8]}
    monkeypatch.setattr(module, "basic_clean", str.strip)
    for text, ids in cleaned.items():
        assert reference.encode(text) != ids, text
