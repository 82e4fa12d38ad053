"""HF's BERT WordPiece tokenization as TensorFlow and tensorflow-text ops, exactly.

The steps, as the reference (tokenizers' BertNormalizer, BertPreTokenizer, WordPiece) takes them:
  added tokens   matched in the raw text first ("[CLS]", "[SEP]", ... as written) and kept whole
  clean_text     drop NUL, U+FFFD and control, format and private-use characters; whitespace -> " "
  chinese chars  spaces around CJK ideographs
  strip accents  NFD (ICU's, except for characters the reference does not know), then drop marks
  lowercase      per character (a table: ICU's lower-casing depends on context and locale)
  split          on whitespace (dropped) and on each punctuation character (kept)
  WordPiece      greedy longest match first with "##" continuations; a word longer than
                 max_chars_per_word characters, or with no split, is [UNK]
  pack           the first max_length - 2 tokens between [CLS] and [SEP], padded to the longest
Each step runs only if the tokenizer's settings (WordPieceSpec) turn it on. The character classes
are trainer/unicode_tables.py, read off the reference; invalid UTF-8 becomes U+FFFD first.
"""
import tensorflow as tf
import tensorflow_text as tf_text

from trainer import unicode_tables
from trainer.wordpiece_spec import WordPieceSpec


def char_class(ranges: str) -> str:
    """The RE2 class of unicode_tables' "a-b c ..." hex ranges."""
    parts = []
    for item in ranges.split():
        first, _, last = item.partition("-")
        parts.append(f"\\x{{{first}}}" + (f"-\\x{{{last}}}" if last else ""))
    return "[" + "".join(parts) + "]"


def literal(text: str) -> str:
    """An RE2 pattern matching `text` as written."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)


def lowercase_table() -> tuple[list[str], list[str]]:
    """(characters, their lower case) of unicode_tables.LOWERCASE."""
    keys, values = [], []
    for item in unicode_tables.LOWERCASE.split():
        code, _, target = item.partition(">")
        keys.append(chr(int(code, 16)))
        values.append("".join(chr(int(c, 16)) for c in target.split(".")))
    return keys, values


def string_table(keys: list[str], values, dtype, default):
    initializer = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string),
                                                      tf.constant(values, dtype))
    return tf.lookup.StaticHashTable(initializer, default)


REMOVED = char_class(unicode_tables.CLEAN_REMOVED)
TO_SPACE = char_class(unicode_tables.CLEAN_TO_SPACE)
CHINESE = f"({char_class(unicode_tables.CHINESE)})"
MARKS = char_class(unicode_tables.STRIP_REMOVED)
NFD_PROTECTED = char_class(unicode_tables.NFD_PROTECTED)
SPACE = char_class(unicode_tables.SPLIT_SPACE)
PUNCTUATION = char_class(unicode_tables.PUNCTUATION)
# NUL ends tf_text's regex_split. A private-use character does to the reference's output all
# that NUL does: clean_text removes both; else both are in no vocabulary entry (their word: [UNK]).
NUL_STAND_IN = "\ue000"


class GraphTokenizer(tf.Module):
    """texts -> (input_ids, attention_mask), as HF's tokenizer(texts, padding=True, truncation=True,
    max_length=max_length) gives them."""

    def __init__(self, spec: WordPieceSpec, max_length: int):
        super().__init__(name="tokenizer")
        self.settings = dict(clean_text=spec.clean_text, lowercase=spec.lowercase,
                             handle_chinese_chars=spec.handle_chinese_chars,
                             strip_accents=spec.strip_accents)
        self.ids = dict(cls=spec.cls_id, sep=spec.sep_id, pad=spec.pad_id)
        self.max_length, self.unk_token = max_length, spec.unk_token
        self.max_chars = spec.max_chars_per_word
        tokens = sorted(spec.added_tokens, key=lambda t: -len(t[0]))   # leftmost, then longest
        self.added_pattern = "|".join(literal(token) for token, _ in tokens)
        self.added = string_table([t for t, _ in tokens], [i for _, i in tokens], tf.int64, -1)
        self.lower = string_table(*lowercase_table(), tf.string, "")
        self.wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=list(spec.vocab), suffix_indicator=spec.prefix, unknown_token=spec.unk_token,
            max_bytes_per_word=4 * spec.max_chars_per_word,     # at most 4 bytes a character
            token_out_type=tf.int64, no_pretokenization=True)

    def __call__(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """[batch] strings -> input_ids and attention_mask, int32 [batch, longest]."""
        tokens = self.token_ids(texts)[:, :self.max_length - 2]
        rows = tokens.nrows()
        ids = tf.concat([tf.fill([rows, 1], tf.constant(self.ids["cls"], tf.int64)), tokens,
                         tf.fill([rows, 1], tf.constant(self.ids["sep"], tf.int64))], axis=1)
        shape = tf.stack([rows, tf.maximum(ids.bounding_shape(axis=1), 2)])   # an empty batch too
        input_ids = tf.cast(ids.to_tensor(default_value=self.ids["pad"], shape=shape), tf.int32)
        return input_ids, tf.ones_like(ids, tf.int32).to_tensor(default_value=0, shape=shape)

    def token_ids(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[batch, (tokens)]: every text's token ids, untruncated, without [CLS] and [SEP]."""
        texts = self.valid(texts)
        if self.added_pattern:
            segments = tf_text.regex_split(texts, self.added_pattern, self.added_pattern)
        else:
            segments = tf.RaggedTensor.from_tensor(tf.expand_dims(texts, 1))
        flat = segments.flat_values
        added = self.added.lookup(flat)
        is_added = added >= 0
        words = self.split(self.normalize(tf.where(is_added, "", flat)))
        pieces = tf.RaggedTensor.from_row_splits(self.word_pieces(words.flat_values),
                                                 words.row_splits)
        added_pieces = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(added, is_added),
                                                        tf.cast(is_added, tf.int64))
        per_segment = tf.concat([added_pieces, pieces.merge_dims(1, 2)], axis=1)   # one is empty
        by_text = tf.RaggedTensor.from_row_splits(per_segment, segments.row_splits)
        return by_text.merge_dims(1, 2)

    def words(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[batch, (words)]: what WordPiece gets (without the added-token matching)."""
        return self.split(self.normalize(self.valid(texts)))

    @staticmethod
    def valid(texts: tf.Tensor) -> tf.Tensor:
        """Invalid UTF-8 -> U+FFFD; NUL -> its stand-in."""
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace",
                                             replacement_char=0xFFFD,
                                             replace_control_characters=False)
        return tf.strings.regex_replace(texts, "\\x00", NUL_STAND_IN)

    def normalize(self, texts: tf.Tensor) -> tf.Tensor:
        """BertNormalizer, step by step."""
        if self.settings["clean_text"]:
            texts = tf.strings.regex_replace(texts, REMOVED, "")
            texts = tf.strings.regex_replace(texts, TO_SPACE, " ")
        if self.settings["handle_chinese_chars"]:
            texts = tf.strings.regex_replace(texts, CHINESE, r" \1 ")
        if self.settings["strip_accents"]:
            texts = tf.strings.regex_replace(self.nfd(texts), MARKS, "")
        if self.settings["lowercase"]:
            chars = tf.strings.unicode_split(texts, "UTF-8")
            lowered = self.lower.lookup(chars.flat_values)
            chars = chars.with_flat_values(tf.where(lowered == "", chars.flat_values, lowered))
            texts = tf.strings.reduce_join(chars, axis=-1)
        return texts

    @staticmethod
    def nfd(texts: tf.Tensor) -> tf.Tensor:
        """ICU's NFD, leaving alone the characters the reference does not know. To the reference
        they are starters without a decomposition, so no mark moves across them: cut at them."""
        parts = tf_text.regex_split(texts, NFD_PROTECTED, NFD_PROTECTED)
        flat = parts.flat_values
        flat = tf.where(tf.strings.regex_full_match(flat, NFD_PROTECTED), flat,
                        tf_text.normalize_utf8(flat, "NFD"))
        return tf.strings.reduce_join(parts.with_flat_values(flat), axis=-1)

    @staticmethod
    def split(texts: tf.Tensor) -> tf.RaggedTensor:
        """BertPreTokenizer, [batch, (words)]: cut at whitespace (dropped), punctuation (kept)."""
        return tf_text.regex_split(texts, f"{SPACE}+|{PUNCTUATION}", PUNCTUATION)

    def word_pieces(self, words: tf.Tensor) -> tf.RaggedTensor:
        """WordPiece of each word, [words, (pieces)]; longer than max_chars characters: unknown."""
        too_long = tf.strings.length(words, unit="UTF8_CHAR") > self.max_chars
        return self.wordpiece.tokenize(tf.where(too_long, self.unk_token, words))
