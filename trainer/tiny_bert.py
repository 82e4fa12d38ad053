"""A tiny BERT (random weights, a WordPiece vocabulary built from given texts) saved like a pretrained model.

For the offline demo and the tests: it loads through the same code as a real checkpoint.
"""
import collections
import os
import tempfile

import tokenizers
import transformers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _ranked(counts: dict) -> list[str]:
    """The tokens seen at least twice, most frequent first, ties in alphabetical order."""
    return [token for token, count in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0])) if count >= 2]


def vocabulary(texts, vocab_size: int = 2000) -> list[str]:
    """A WordPiece vocabulary that is a function of the texts alone: the special tokens, every character (alone
    and as a ## continuation), then by count (ties alphabetical) the words of two or more characters, and in
    the last quarter of the room the 2-4 character endings of the other words, as ## pieces. At least the
    characters, so no word is [UNK]. (tokenizers' WordPiece trainer breaks ties between equally frequent merges
    differently on every run: its vocabulary, and a model trained with it, varied.)"""
    normalize = tokenizers.normalizers.BertNormalizer(lowercase=True).normalize_str     # as BertTokenizerFast
    split = tokenizers.pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    words = collections.Counter(word for text in texts for word, _ in split(normalize(text)))
    characters = sorted({c for word in words for c in word})
    pieces = SPECIAL_TOKENS + characters + ["##" + c for c in characters]
    room = max(0, vocab_size - len(pieces))
    whole = _ranked({word: count for word, count in words.items() if len(word) > 1})[:room - room // 4]
    chosen = set(whole)
    endings = collections.Counter()
    for word, count in words.items():
        if word not in chosen:
            for k in range(2, min(4, len(word) - 1) + 1):
                endings["##" + word[-k:]] += count
    return pieces + whole + _ranked(endings)[:room // 4]


def build(output_dir: str, texts, vocab_size: int = 2000, hidden_size: int = 32, num_layers: int = 2,
          max_positions: int = 128, seed: int = 0) -> str:
    """Write config.json, tf_model.h5 and tokenizer files for a tiny uncased BERT to output_dir."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in vocabulary(texts, vocab_size)))
        tokenizer = transformers.BertTokenizerFast(vocab_file, do_lower_case=True, model_max_length=max_positions)
    return save(output_dir, tokenizer, hidden_size, num_layers, max_positions, seed)


def save(output_dir: str, tokenizer, hidden_size: int = 32, num_layers: int = 2, max_positions: int = 128,
         seed: int = 0) -> str:
    """A tiny BERT with seeded random weights for `tokenizer` (e.g. a real model's), saved with it."""
    from trainer import runtime
    runtime.import_tensorflow()
    import tf_keras
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=max_positions)
    tf_keras.utils.set_random_seed(seed)     # Keras' unseeded initializers draw from Python's random too
    model = transformers.TFBertModel(config)
    model.build_in_name_scope()
    model.save_pretrained(output_dir)
    return output_dir
