"""Readers: each format on small files written here, label mapping, counted skips, one-line errors."""
import json

import pytest

from conftest import write_sentiment140
from trainer.config import SourceConfig
from trainer.data import readers
from trainer.errors import UsageError


def read(path, **kwargs):
    stats = readers.ReadStats()
    keep_neutral = kwargs.pop("keep_neutral", False)
    rows = list(readers.read_rows(SourceConfig(input=str(path), **kwargs), stats, keep_neutral=keep_neutral))
    return rows, stats


def test_sentiment140_labels_neutral_and_empty_text(tmp_path):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "sad day"), (4, "great, \"quoted\" day"), (2, "meh"),
                                                   (4, "   "), (0, "caf\xe9 closed")])
    rows, stats = read(path)
    assert rows == [("sad day", "negative"), ('great, "quoted" day', "positive"), ("caf\xe9 closed", "negative")]
    assert stats.rows_read == 5 and stats.rows_kept == 3
    assert stats.dropped == {"neutral": 1, "empty_text": 1}


def test_keep_neutral(tmp_path):
    rows, stats = read(write_sentiment140(tmp_path / "s.csv", [(2, "meh"), (4, "yay")]), keep_neutral=True)
    assert rows == [("meh", "neutral"), ("yay", "positive")] and not stats.dropped


def test_sentiment140_header_row_and_wrong_column_count_are_counted(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('"target","ids","date","flag","user","text"\n'
                    '"0","1","d","q","u","bad"\n'
                    '"4","2","d","q","too few columns"\n'
                    '"4","3","d","q","u","good"\n', encoding="latin-1")
    rows, stats = read(path)
    assert rows == [("bad", "negative"), ("good", "positive")]
    assert stats.dropped == {"header_row": 1, "wrong_column_count": 1} and stats.rows_read == 4


def test_tsv_positional_columns_like_uci_amazon(tmp_path):
    path = tmp_path / "amazon_cells_labelled.txt"
    path.write_text('So there is no way for me to plug it in.\t0\nGood "case", excellent value.\t1\n')
    rows, _ = read(path, format="tsv", text_column="0", label_column="1")
    assert rows == [("So there is no way for me to plug it in.", "negative"), ('Good "case", excellent value.', "positive")]


def test_csv_named_columns_and_label_spellings(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("id,review,sentiment\n1,\"loved it, really\",Positive\n2,awful,neg\n3,fine,1\n")
    rows, _ = read(path, format="csv", text_column="review", label_column="sentiment")
    assert rows == [("loved it, really", "positive"), ("awful", "negative"), ("fine", "positive")]


def test_jsonl_with_malformed_and_missing_keys_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [{"text": "nice", "label": 1}, "not json", {"text": "bad", "label": "negative"}, {"body": "x"}]
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    rows, stats = read(path, format="jsonl", text_column="text", label_column="label")
    assert rows == [("nice", "positive"), ("bad", "negative")]
    assert stats.dropped == {"malformed_json": 1, "missing_column": 1}


def test_jsonl_text_that_is_not_text_is_dropped_not_stored_as_its_repr(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [{"text": ["a", "list"], "label": 1}, {"text": {"an": "object"}, "label": 0}, {"text": 5, "label": 1},
             {"text": "real", "label": {"x": 1}}, {"text": "kept", "label": 0}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows, stats = read(path, format="jsonl", text_column="text", label_column="label")
    assert rows == [("kept", "negative")] and stats.dropped == {"not_text": 4}


def _empty_file(directory):
    (directory / "empty.csv").write_text("")
    return directory / "empty.csv"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.csv", "does not exist"),
    (lambda p: p, "is a directory"),
    (_empty_file, "is empty"),
])
def test_unreadable_inputs(tmp_path, make, message):
    with pytest.raises(UsageError, match=message):
        read(make(tmp_path))


def test_unknown_label_names_line_and_fix(tmp_path):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "ok"), (7, "what")])
    with pytest.raises(UsageError, match=r"line 2: unknown label '7'.*--format"):
        read(path)


def test_undecodable_bytes_suggest_encoding(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes("caf\xe9 ok\t1\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not valid utf-8.*--encoding=latin-1"):
        read(path, format="tsv", text_column="0", label_column="1")


def test_unknown_named_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhi,1\n")
    with pytest.raises(UsageError, match="no column 'review'"):
        read(path, format="csv", text_column="review", label_column="label")


def test_utf8_bom_is_skipped_and_utf16_is_named(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhi,1\n")
    assert read(path, format="csv", text_column="text", label_column="label")[0] == [("hi", "positive")]
    s140 = write_sentiment140(tmp_path / "s.csv", [(0, "first"), (4, "second")])
    with open(s140, "rb") as f:
        content = f.read()
    with open(s140, "wb") as f:
        f.write(b"\xef\xbb\xbf" + content)
    rows, stats = read(s140)
    assert rows == [("first", "negative"), ("second", "positive")] and stats.dropped == {}
    (tmp_path / "u16.tsv").write_bytes("hi\t1\n".encode("utf-16"))
    with pytest.raises(UsageError, match="UTF-16 byte-order mark: pass --encoding=utf-16"):
        read(tmp_path / "u16.tsv", format="tsv", text_column="0", label_column="1")


def test_a_field_longer_than_the_csv_default_limit(tmp_path):
    path = write_sentiment140(tmp_path / "s.csv", [(4, "x" * (17 << 20))])
    assert len(read(path)[0][0][0]) == 17 << 20


def test_cr_only_line_endings(tmp_path):
    path = tmp_path / "cr.csv"
    path.write_bytes(b'"0","1","d","q","u","sad"\r"4","2","d","q","u","glad"\r')
    assert read(path)[0] == [("sad", "negative"), ("glad", "positive")]

