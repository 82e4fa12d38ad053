"""Raw text files -> (text, label name) rows, with every skipped row counted by reason.

Formats:
  sentiment140  no header, six quoted columns target,ids,date,flag,user,text; latin-1;
                target 0 = negative, 2 = neutral, 4 = positive.
  csv, tsv      text and label columns named (the file has a header) or positional
                (0-based, no header); TSV is unquoted, as in the UCI sentiment files.
  jsonl         one JSON object per line; columns are keys.

Rows that cannot be used are skipped and counted (wrong column count, empty text, malformed
JSON, a JSON line without the text or label key, Sentiment140's header row, neutral unless
kept); problems that would make the whole file wrong
(missing file, undecodable bytes, unknown label) raise UsageError with the fix.
"""
import codecs
import collections
import contextlib
import csv
import dataclasses
import io
import json
import sys
from typing import Iterator

from trainer import storage
from trainer.config import SourceConfig
from trainer.errors import UsageError

SENTIMENT140_COLUMNS = ("target", "ids", "date", "flag", "user", "text")
SENTIMENT140_LABELS = {"0": "negative", "2": "neutral", "4": "positive"}
# Label spellings accepted in custom files (compared lower-cased, stripped).
CUSTOM_LABELS = {
    "0": "negative", "neg": "negative", "negative": "negative",
    "1": "positive", "pos": "positive", "positive": "positive",
    "neutral": "neutral",
}
csv.field_size_limit(sys.maxsize)   # a row is as long as it is: texts are truncated when tokenized


@dataclasses.dataclass
class ReadStats:
    """Counts filled in while rows are read."""
    rows_read: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())


def check_source(source: SourceConfig) -> None:
    """Raise UsageError for a source that cannot be read at all."""
    storage.check_input_file(source.input, "--input")
    with open(source.input, "rb") as f:
        start = f.read(4)
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and "16" not in source.resolved_encoding:
        raise UsageError(f"{source.input} starts with a UTF-16 byte-order mark: pass --encoding=utf-16")


@contextlib.contextmanager
def open_text(source: SourceConfig):
    """The file as text. A UTF-8 byte-order mark is skipped (it would otherwise glue itself to the first field),
    and it means UTF-8 unless --encoding says otherwise."""
    with open(source.input, "rb") as raw:
        has_bom = raw.read(3) == codecs.BOM_UTF8
        raw.seek(3 if has_bom else 0)
        encoding = "utf-8" if has_bom and source.encoding is None else source.resolved_encoding
        yield io.TextIOWrapper(raw, encoding=encoding, newline="")


def read_rows(source: SourceConfig, stats: ReadStats, keep_neutral: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (text, label_name) for each usable row; count the rest in `stats`."""
    check_source(source)
    labels = SENTIMENT140_LABELS if source.format == "sentiment140" else CUSTOM_LABELS
    rows = _jsonl_records(source, stats) if source.format == "jsonl" else _delimited_records(source, stats)
    try:
        for line_number, text, raw_label in rows:
            stats.rows_read += 1
            label = labels.get(str(raw_label).strip().lower())
            if label is None:
                if source.format == "sentiment140" and line_number == 1 and not str(raw_label).strip().isdigit():
                    stats.dropped["header_row"] += 1
                    continue
                raise UsageError(
                    f"{source.input} line {line_number}: unknown label {str(raw_label)[:40]!r}; expected "
                    f"{'/'.join(sorted(labels))} (check --format and --label_column)")
            if label == "neutral" and not keep_neutral:
                stats.dropped["neutral"] += 1
                continue
            if text is None or not str(text).strip():
                stats.dropped["empty_text"] += 1
                continue
            yield str(text), label
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{source.input}: bytes not valid {source.resolved_encoding} near byte {e.start}: "
            f"pass --encoding=latin-1 (or the file's real encoding)") from None
    except csv.Error as e:
        raise UsageError(f"{source.input}: not readable as {source.format} ({e}): check --format") from None


def _positional(column: str) -> bool:
    return column.isascii() and column.isdigit()      # not "²", which isdigit() accepts and int() refuses


def _column_index(column: str, header: list[str] | None, path: str) -> int:
    if _positional(column):
        return int(column)
    if header is None or column not in header:
        raise UsageError(f"{path}: no column {column!r} in the header {header}: pass --text_column/--label_column "
                         "as a header name or a 0-based position")
    return header.index(column)


def _delimited_records(source: SourceConfig, stats: ReadStats) -> Iterator[tuple[int, str, str]]:
    with open_text(source) as f:
        if source.format == "tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        if source.format == "sentiment140":
            num_columns, text_index, label_index = 6, 5, 0
        else:
            positional = _positional(source.text_column) and _positional(source.label_column)
            header = None if positional else next(reader, None)
            text_index = _column_index(source.text_column, header, source.input)
            label_index = _column_index(source.label_column, header, source.input)
            num_columns = len(header) if header else None
        for record in reader:
            if not record:          # a blank line
                continue
            if num_columns is None:  # positional columns: the first row fixes the width
                num_columns = len(record)
                if max(text_index, label_index) >= num_columns:
                    raise UsageError(f"{source.input}: the first row has {num_columns} columns, so column "
                                     f"{max(text_index, label_index)} does not exist: check --text_column/--label_column")
            if len(record) != num_columns:
                stats.rows_read += 1
                stats.dropped["wrong_column_count"] += 1
                continue
            yield reader.line_num, record[text_index], record[label_index]


def _jsonl_records(source: SourceConfig, stats: ReadStats) -> Iterator[tuple[int, str, str]]:
    with open_text(source) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                stats.rows_read += 1
                stats.dropped["malformed_json"] += 1
                continue
            if source.text_column not in record or source.label_column not in record:
                stats.rows_read += 1
                stats.dropped["missing_column"] += 1
                continue
            text = record[source.text_column]
            if not isinstance(text, (str, type(None))) or isinstance(record[source.label_column], (dict, list)):
                stats.rows_read += 1
                stats.dropped["not_text"] += 1     # a list, an object or a number is no text
                continue
            yield line_number, record[source.text_column], record[source.label_column]
