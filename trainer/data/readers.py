"""Raw text files -> (text, label name) rows, with every skipped row counted by reason.

Formats:
  sentiment140  no header, six quoted columns target,ids,date,flag,user,text; latin-1;
                target 0 = negative, 2 = neutral, 4 = positive.
  csv, tsv      text and label columns named (the file has a header) or positional
                (0-based, no header); TSV is unquoted, as in the UCI sentiment files.
  jsonl         one JSON object per line; columns are keys.

Rows that cannot be used are skipped and counted (wrong column count, empty text,
malformed JSON, header row, neutral); problems that would make the whole file wrong
(missing file, undecodable bytes, unknown label) raise UsageError with the fix.
"""
import collections
import csv
import dataclasses
import json
import os
from typing import Iterator

from trainer.cli import UsageError

FORMATS = ("sentiment140", "csv", "tsv", "jsonl")
SENTIMENT140_COLUMNS = ("target", "ids", "date", "flag", "user", "text")
SENTIMENT140_LABELS = {"0": "negative", "2": "neutral", "4": "positive"}
# Label spellings accepted in custom files (compared lower-cased, stripped).
CUSTOM_LABELS = {
    "0": "negative", "neg": "negative", "negative": "negative",
    "1": "positive", "pos": "positive", "positive": "positive",
    "neutral": "neutral",
}
csv.field_size_limit(1 << 24)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where and how to read a raw file."""
    path: str
    format: str = "sentiment140"
    text_column: str | None = None   # a name, or a 0-based position as a string
    label_column: str | None = None
    encoding: str | None = None      # default: latin-1 for sentiment140, utf-8 otherwise

    @property
    def resolved_encoding(self) -> str:
        return self.encoding or ("latin-1" if self.format == "sentiment140" else "utf-8")


@dataclasses.dataclass
class ReadStats:
    """Counts filled in while rows are read."""
    rows_read: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())


def check_source(source: Source) -> None:
    """Raise UsageError for a source that cannot be read at all."""
    if source.format not in FORMATS:
        raise UsageError(f"unknown --format={source.format}: use one of {', '.join(FORMATS)}")
    if not os.path.exists(source.path):
        raise UsageError(f"input {source.path} does not exist: pass --input=<path to the data file>")
    if os.path.isdir(source.path):
        raise UsageError(f"input {source.path} is a directory: pass --input=<path to a data file>")
    if os.path.getsize(source.path) == 0:
        raise UsageError(f"input {source.path} is empty: pass a file with rows of text and label")
    if source.format != "sentiment140" and (source.text_column is None or source.label_column is None):
        raise UsageError(
            f"--format={source.format} needs --text_column and --label_column (names, or 0-based positions)")
    try:
        "".encode(source.resolved_encoding)
    except LookupError:
        raise UsageError(f"unknown --encoding={source.encoding}: use e.g. utf-8 or latin-1") from None


def read_rows(source: Source, stats: ReadStats, keep_neutral: bool = False) -> Iterator[tuple[str, str]]:
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
                    f"{source.path} line {line_number}: unknown label {str(raw_label)[:40]!r}; expected "
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
            f"{source.path}: bytes not valid {source.resolved_encoding} near byte {e.start}: "
            f"pass --encoding=latin-1 (or the file's real encoding)") from None


def _column_index(column: str, header: list[str] | None, path: str) -> int:
    if column.isdigit():
        return int(column)
    if header is None or column not in header:
        raise UsageError(f"{path}: no column {column!r} in the header {header}: pass --text_column/--label_column "
                         "as a header name or a 0-based position")
    return header.index(column)


def _delimited_records(source: Source, stats: ReadStats) -> Iterator[tuple[int, str, str]]:
    with open(source.path, encoding=source.resolved_encoding, newline="") as f:
        if source.format == "tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        if source.format == "sentiment140":
            num_columns, text_index, label_index = 6, 5, 0
        else:
            positional = source.text_column.isdigit() and source.label_column.isdigit()
            header = None if positional else next(reader, None)
            text_index = _column_index(source.text_column, header, source.path)
            label_index = _column_index(source.label_column, header, source.path)
            num_columns = len(header) if header else None
        for record in reader:
            if not record:          # a blank line
                continue
            if num_columns is None:  # positional columns: the first row fixes the width
                num_columns = len(record)
                if max(text_index, label_index) >= num_columns:
                    raise UsageError(f"{source.path}: the first row has {num_columns} columns, so column "
                                     f"{max(text_index, label_index)} does not exist: check --text_column/--label_column")
            if len(record) != num_columns:
                stats.rows_read += 1
                stats.dropped["wrong_column_count"] += 1
                continue
            yield reader.line_num, record[text_index], record[label_index]


def _jsonl_records(source: Source, stats: ReadStats) -> Iterator[tuple[int, str, str]]:
    with open(source.path, encoding=source.resolved_encoding) as f:
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
            yield line_number, record[source.text_column], record[source.label_column]
