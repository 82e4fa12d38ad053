"""The graph tokenizer against HF's, exactly: the shared sample and hostile strings on a real and a
tiny vocabulary, every code point, other normalizer settings; and the tokenizers it refuses."""
import copy
import dataclasses
import json
import random
import unicodedata

import pytest

pytestmark = pytest.mark.serving      # make test-serving: CI runs it after make test
pytest.importorskip("tensorflow_text", reason="tensorflow-text is not installed: pip install -e "
                    "'.[serving]' (the test extra has it)")

import tensorflow as tf  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402

from conftest import MINILM, SAMPLE_CSV  # noqa: E402
from trainer import graph_tokenizer, unicode_tables, wordpiece_spec  # noqa: E402
from trainer.errors import UsageError  # noqa: E402

HOSTILE = [
    # accents; CJK, kana, Hangul; emoji with ZWJ, skin tones, flags, keycaps
    "Café naïve résumé Ångström façade São Paulo Ελληνικά Ωμέγα",
    "中文字符測試，你好！𠀀𪚥 日本語のテキスト 한국어 텍스트",
    "👨‍👩‍👧‍👦 family 🏳️‍🌈 👍🏽 🇫🇷 1️⃣ ❤️ 🧑‍💻😀😂",
    # zero-width characters, soft hyphen, BOM; no-break and other spaces
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060word\u00adsoft",
    "no\u00a0break\u202fnarrow\u2007figure\u3000ideographic\u2028line\u2029para",
    # fullwidth letters; ligatures and digraphs
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ！？",
    "ﬁne ﬂow ﬀ ﬃ Ǆ ǅ ǆ Ĳ ĳ ﬆ",
    # a 5,000-character word; the 100-character limit of a word
    "x" * 5000, "y" * 100, "z" * 101, "é" * 60, "é" * 101,
    "tabs\tand   runs      of\t\t spaces\n\nnewlines\r\n",
    "ctrl\x00nul\x01\x07bell\x1b[31mred\x7f del\x85nel\x0bvt\x0cff",
    "e\u0301 a\u0308 n\u0303 c\u0327 a\u0301\u0302\u0323 \u0301lone",
    "repl\ufffdacement \ufffd\ufffd",
    "mixed Ελληνικά русский עברית العربيةُ हिन्दी ไทย ქართული 日本 한국",
    "!!!???...,,,;;;--- ((([[[{{{}}}]]]))) ¡¿ «» “” ‘’ … — – ·",
    "ΟΔΟΣ Σ ς σ İstanbul ı ǅ ß ẞ ŉ ǰ",
    # special tokens as written
    "[CLS] [SEP] [MASK][UNK]x [cls] [PAD] a[SEP]b [S[SEP]EP]",
    "", " ", "   \t\n ", "a", "#", "##", "##ing",
    # marks the reference reorders; characters newer than the reference's tables
    "\U0001d165\U0001d16d x\u1ac1\u1abf y\U0001d16d\U0001d165",
    "\U00011938 \U000105c9 \U00016d68 \u1715\u0334 \u2c2f\ua7c0\U00010570",
    "http://t.co/abc123 @user_name #hashtag $5.99 3.14159 1,000,000 50% e-mail",
    # tag characters, private use, variation selector, combining keycap
    "tag\U000e0067\U000e0062 pua\ue000\U000f0000 var\ufe0fsel\u20e3",
]


def spec_of(tokenizer) -> wordpiece_spec.WordPieceSpec:
    return wordpiece_spec.from_json(json.loads(tokenizer.backend_tokenizer.to_str()), "tokenizer",
                                    tokenizer.truncation_side, tokenizer.pad_token_id)


def graph_ids(graph, texts) -> list[list[int]]:
    ids, mask = graph(tf.constant(texts))
    return [row[:n].tolist() for row, n in zip(ids.numpy(), mask.numpy().sum(axis=1))]


def code_points(ranges: str) -> set[int]:
    found = set()
    for item in ranges.split():
        first, _, last = item.partition("-")
        found.update(range(int(first, 16), int(last or first, 16) + 1))
    return found


def differences(texts, got, wanted, limit=5) -> list:
    return [(text[:60], g[:12], w[:12]) for text, g, w in zip(texts, got, wanted) if g != w][:limit]


@pytest.fixture(scope="module")
def sample_texts():
    from trainer.config import SourceConfig
    from trainer.data import readers
    return [text for text, _ in readers.read_rows(SourceConfig(input=str(SAMPLE_CSV)),
                                                  readers.ReadStats())]


@pytest.fixture(scope="module", params=["minilm", "tiny"])
def reference(request, tiny_model_dir):
    return transformers.AutoTokenizer.from_pretrained(MINILM if request.param == "minilm"
                                                      else tiny_model_dir)


@pytest.fixture(scope="module")
def minilm():
    return transformers.AutoTokenizer.from_pretrained(MINILM)


def test_the_sample_and_hostile_strings_tokenize_as_hf(reference, sample_texts):
    """Every tweet of the shared sample and every hostile string, at max_length 128 and 16."""
    for max_length, texts in ((128, sample_texts + HOSTILE), (16, sample_texts[:2000] + HOSTILE)):
        graph = graph_tokenizer.GraphTokenizer(spec_of(reference), max_length)
        wanted = reference(texts, truncation=True, max_length=max_length)["input_ids"]
        got = graph_ids(graph, texts)
        assert got == wanted, differences(texts, got, wanted)


def test_padding_and_mask_are_hfs(minilm):
    texts = ["short", "a longer text with more words", ""]
    ids, mask = graph_tokenizer.GraphTokenizer(spec_of(minilm), 128)(tf.constant(texts))
    wanted = minilm(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    assert ids.dtype == mask.dtype == tf.int32
    assert (ids.numpy() == wanted["input_ids"]).all()
    assert (mask.numpy() == wanted["attention_mask"]).all()


def test_invalid_utf8_is_read_as_python_decodes_it_with_replacement(minilm):
    raw = [b"caf\xe9 au lait", b"\xff\xfe\xfd broken \xc3", b"ok \xed\xa0\x80 surrogate",
           b"\xe2\x82"]
    graph = graph_tokenizer.GraphTokenizer(spec_of(minilm), 128)
    texts = [text.decode("utf-8", errors="replace") for text in raw]
    assert graph_ids(graph, raw) == minilm(texts, truncation=True, max_length=128)["input_ids"]


def test_every_code_point_is_normalized_and_split_as_hf(minilm):
    """BertNormalizer + BertPreTokenizer on "a" + c + "b" for each of the 1,112,064 code points,
    1,000 to a text (normalizing is per character between starters, so the joins change nothing)."""
    graph = graph_tokenizer.GraphTokenizer(spec_of(minilm), 128)
    backend = minilm.backend_tokenizer
    codes = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = [" ".join(f"a{chr(c)}b" for c in codes[i:i + 1000]) for i in range(0, len(codes), 1000)]
    got = graph.words(tf.constant(texts)).to_list()
    wrong = []
    for text, words in zip(texts, got):
        wanted = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(
            backend.normalizer.normalize_str(text))]
        words = [w.decode() for w in words]
        if words != wanted:
            wrong.append(sorted(set(words) ^ set(wanted))[:10])
    assert wrong == [], wrong[:5]


def test_marks_are_reordered_as_hf_reorders_them(minilm):
    """NFD sorts marks by combining class; the reference's classes are older than ICU's. Each mark
    (and each code point Python's Unicode leaves unassigned in planes 0-1) beside marks of
    classes 216 to 226."""
    graph = graph_tokenizer.GraphTokenizer(spec_of(minilm), 128)
    protected = code_points(unicode_tables.NFD_PROTECTED)
    candidates = [c for c in range(0x20000) if not 0xD800 <= c < 0xE000 and (
        unicodedata.combining(chr(c)) or unicodedata.category(chr(c)) == "Cn" or c in protected)]
    texts = [text for c in candidates for mark in ("\U0001d165", "\u302e", "\U0001d16d")
             for text in (f"a{chr(c)}{mark}", f"a{mark}{chr(c)}")]
    got = graph.normalize(graph.valid(tf.constant(texts))).numpy()
    normalize = minilm.backend_tokenizer.normalizer.normalize_str
    wrong = [(text, g) for text, g in zip(texts, got) if g.decode() != normalize(text)]
    assert wrong == [], wrong[:10]


SETTINGS = {"cased": dict(lowercase=False, strip_accents=False),
            "lowercase, accents kept": dict(strip_accents=False),
            "accents stripped, case kept": dict(lowercase=False, strip_accents=True),
            "no clean_text": dict(clean_text=False),
            "no chinese spacing": dict(handle_chinese_chars=False)}


@pytest.mark.parametrize("name", SETTINGS)
def test_other_normalizer_settings_tokenize_as_hf(name, minilm, sample_texts):
    """The JSON's settings, not assumed ones: the reference rebuilt with each, the graph too."""
    settings = SETTINGS[name]
    data = json.loads(minilm.backend_tokenizer.to_str())
    data["normalizer"].update(settings)
    reference = tokenizers.Tokenizer.from_str(json.dumps(data))
    reference.enable_truncation(128)
    spec = wordpiece_spec.from_json(data, "tokenizer")
    assert dataclasses.asdict(spec).items() >= settings.items()
    texts = sample_texts[:2000] + HOSTILE
    wanted = [encoding.ids for encoding in reference.encode_batch(texts)]
    got = graph_ids(graph_tokenizer.GraphTokenizer(spec, 128), texts)
    assert got == wanted, differences(texts, got, wanted)


def test_wordpiece_on_the_vocabulary_and_glued_pieces(minilm):
    """Every vocabulary entry as a word, and words glued from 2-4 random entries."""
    vocab = list(minilm.get_vocab())
    rng = random.Random(0)
    glued = ["".join(piece.removeprefix("##") for piece in rng.sample(vocab, rng.randint(2, 4)))
             for _ in range(5000)]
    texts = [token.removeprefix("##") for token in vocab] + glued
    wanted = minilm(texts, truncation=True, max_length=128)["input_ids"]
    got = graph_ids(graph_tokenizer.GraphTokenizer(spec_of(minilm), 128), texts)
    assert got == wanted, differences(texts, got, wanted)


def changed(path, value):
    def change(data):
        *parents, key = path
        for name in parents:
            data = data[name]
        data[key] = value
    return change


def added_token_normalized(data):
    data["added_tokens"][0]["normalized"] = True


def without_unk(data):
    data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if t != "[UNK]"}


REFUSED = {
    "a BPE model": (changed(["model", "type"], "BPE"), "its model is BPE, not WordPiece"),
    "a Whitespace pre-tokenizer": (changed(["pre_tokenizer"], {"type": "Whitespace"}),
                                   "its pre-tokenizer is Whitespace, not BertPreTokenizer"),
    "no normalizer": (changed(["normalizer"], None), "its normalizer is none, not BertNormalizer"),
    "a Lowercase normalizer": (changed(["normalizer"], {"type": "Lowercase"}), "is Lowercase"),
    "a RoBERTa post-processor": (changed(["post_processor"], {"type": "RobertaProcessing"}),
                                 "post-processor does not put one special token on each side"),
    "a normalized added token": (added_token_normalized, "is normalized or strips spaces"),
    "a vocabulary without [UNK]": (without_unk, "its vocabulary has no '[UNK]'"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_other_tokenizers_are_refused_in_one_line(case, minilm):
    change, message = REFUSED[case]
    data = copy.deepcopy(json.loads(minilm.backend_tokenizer.to_str()))
    change(data)
    with pytest.raises(UsageError) as refused:
        wordpiece_spec.from_json(data, "M's tokenizer")
    text = str(refused.value)
    assert text.startswith("M's tokenizer: ") and message in text and "\n" not in text
    assert ("[UNK]" in case) != (wordpiece_spec.SERVABLE in text)


def test_left_truncation_is_refused(minilm):
    with pytest.raises(UsageError, match="truncates on the left"):
        wordpiece_spec.from_json(json.loads(minilm.backend_tokenizer.to_str()), "M", "left")
