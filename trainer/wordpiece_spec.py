"""What a BERT WordPiece tokenizer does, read from HF's tokenizer JSON; others are refused.

The serving graph (graph_tokenizer.py) is built from this alone. No TensorFlow and no transformers
here: the JSON is `tokenizer.backend_tokenizer.to_str()`, tokenizer.json as transformers applies it.
"""
import dataclasses

from trainer.errors import UsageError

SERVABLE = ("only BERT-style WordPiece tokenizers (BertNormalizer, BertPreTokenizer, WordPiece, "
            "[CLS] text [SEP]) can be exported with their tokenizer in the graph")


@dataclasses.dataclass(frozen=True)
class WordPieceSpec:
    vocab: tuple[str, ...]          # the token of each id, 0..n-1
    unk_token: str
    prefix: str                     # of a word's continuing pieces, "##"
    max_chars_per_word: int         # a longer word is unk_token
    clean_text: bool                # BertNormalizer's settings, as the reference applies them
    handle_chinese_chars: bool
    strip_accents: bool             # None in the JSON: as lowercase
    lowercase: bool
    cls_id: int
    sep_id: int
    pad_id: int
    added_tokens: tuple[tuple[str, int], ...]    # (text, id): matched in the raw text first


def _refused(where: str, what: str) -> UsageError:
    return UsageError(f"{where}: {what}: {SERVABLE}")


def _of_type(part, where: str, name: str, wanted: str) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind != wanted:
        raise _refused(where, f"its {name} is {kind or 'none'}, not {wanted}")
    return part


def _special_ids(post, where: str) -> tuple[int, int]:
    """The ids around a single text, from a BertProcessing or TemplateProcessing post-processor."""
    kind = post.get("type") if isinstance(post, dict) else None
    if kind == "BertProcessing":
        return post["cls"][1], post["sep"][1]
    if kind == "TemplateProcessing":
        single = post.get("single", [])
        if [next(iter(step)) for step in single] == ["SpecialToken", "Sequence", "SpecialToken"]:
            ids = [post["special_tokens"][single[i]["SpecialToken"]["id"]]["ids"] for i in (0, 2)]
            if all(len(i) == 1 for i in ids):
                return ids[0][0], ids[1][0]
    raise _refused(where, "its post-processor does not put one special token on each side")


def _added_tokens(data: dict, where: str) -> tuple[tuple[str, int], ...]:
    """The tokens HF matches in the raw text before normalizing; only the plain kind."""
    tokens = []
    for token in data.get("added_tokens") or []:
        if any(token.get(option) for option in ("normalized", "lstrip", "rstrip", "single_word")):
            raise _refused(where, f"its added token {token.get('content')!r} is normalized or "
                                  "strips spaces")
        tokens.append((token["content"], token["id"]))
    return tuple(tokens)


def from_json(data: dict, where: str, truncation_side: str = "right",
              pad_id: int | None = None) -> WordPieceSpec:
    """The spec of a tokenizer's JSON; `where` names the tokenizer in refusals. truncation_side and
    pad_id: what transformers adds (tokenizer_config.json)."""
    model = data.get("model") or {}
    if model.get("type") != "WordPiece":
        raise _refused(where, f"its model is {model.get('type') or 'unknown'}, not WordPiece")
    normalizer = _of_type(data.get("normalizer"), where, "normalizer", "BertNormalizer")
    _of_type(data.get("pre_tokenizer"), where, "pre-tokenizer", "BertPreTokenizer")
    cls_id, sep_id = _special_ids(data.get("post_processor"), where)
    if truncation_side != "right":
        raise _refused(where, f"it truncates on the {truncation_side}")
    unk = model.get("unk_token")
    if unk not in model.get("vocab", {}):
        raise UsageError(f"{where}: its vocabulary has no {unk!r}, the token WordPiece gives a "
                         "word it cannot split: restore the model's vocab.txt and tokenizer.json")
    by_id = {i: token for token, i in model["vocab"].items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise _refused(where, "its vocabulary's ids are not 0..n-1")
    vocab = tuple(by_id[i] for i in range(len(by_id)))
    lowercase, strip = bool(normalizer.get("lowercase")), normalizer.get("strip_accents")
    return WordPieceSpec(
        vocab=vocab, unk_token=unk, prefix=model.get("continuing_subword_prefix", "##"),
        max_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
        clean_text=bool(normalizer.get("clean_text")),
        handle_chinese_chars=bool(normalizer.get("handle_chinese_chars")),
        strip_accents=lowercase if strip is None else bool(strip), lowercase=lowercase,
        cls_id=cls_id, sep_id=sep_id, added_tokens=_added_tokens(data, where),
        pad_id=model["vocab"].get("[PAD]", 0) if pad_id is None else pad_id)
