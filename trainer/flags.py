"""Every command-line flag of every command, with help text and validators.

Each command calls its define_*_flags() once, then its *_config() turns the parsed flags into a
frozen config. Presets are flag files: --flagfile=configs/<preset>.cfg.
"""
from absl import flags

from trainer.config import PrepareConfig
from trainer.data import readers

FLAGS = flags.FLAGS


def _parse_splits(value: str) -> tuple[float, ...]:
    parts = tuple(float(p) for p in value.split(","))
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(value)
    return parts


def _valid_splits(value: str) -> bool:
    try:
        _parse_splits(value)
        return True
    except ValueError:
        return False


def define_prepare_flags(fv: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_string("input", None, "Raw data file: Sentiment140 CSV, or a CSV/TSV/JSONL of text + label.",
                        flag_values=fv)
    flags.DEFINE_enum("format", "sentiment140", readers.FORMATS,
                      "Input format. sentiment140: no header, 6 columns, latin-1, labels 0/2/4.", flag_values=fv)
    flags.DEFINE_string("text_column", None, "csv/tsv/jsonl: the text column, by header name or 0-based position.",
                        flag_values=fv)
    flags.DEFINE_string("label_column", None, "csv/tsv/jsonl: the label column (0/1 or negative/positive), by "
                        "header name or 0-based position.", flag_values=fv)
    flags.DEFINE_string("encoding", None, "Text encoding of --input. Default: latin-1 for sentiment140, else utf-8.",
                        flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Where to write the prepared DatasetDict and manifest.json.",
                        flag_values=fv)
    flags.DEFINE_string("model", None, "Model whose tokenizer to use: a hub id or a local directory.",
                        flag_values=fv)
    flags.DEFINE_integer("max_length", 128, "Truncate to this many tokens (special tokens included).",
                         lower_bound=8, flag_values=fv)
    flags.DEFINE_string("splits", "0.8,0.1,0.1", "train,validation,test fractions, summing to 1. A 0 drops "
                        "that split; 1,0,0 keeps the whole file as train.", flag_values=fv)
    flags.DEFINE_string("split_name", None, "Put the whole file into this one split (e.g. test), ignoring --splits.",
                        flag_values=fv)
    flags.DEFINE_integer("seed", 42, "Seed of the shuffle before splitting.", flag_values=fv)
    flags.DEFINE_integer("num_proc", None, "Processes for tokenization (default: one; the fast tokenizer "
                         "already uses every core).", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("keep_neutral", False, "Keep neutral rows (Sentiment140 label 2) as a third class "
                      "instead of dropping and counting them.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir prepared with other inputs.",
                      flag_values=fv)
    for name in ("input", "output_dir", "model"):
        flags.mark_flag_as_required(name, flag_values=fv)
    flags.register_validator("splits", _valid_splits, "--splits must be three fractions >= 0 summing to 1, "
                             "e.g. 0.8,0.1,0.1", flag_values=fv)
    flags.register_multi_flags_validator(
        ["format", "text_column", "label_column"],
        lambda f: f["format"] == "sentiment140" or (f["text_column"] is not None and f["label_column"] is not None),
        "--format=csv/tsv/jsonl needs --text_column and --label_column", flag_values=fv)


def prepare_config(fv: flags.FlagValues = FLAGS) -> PrepareConfig:
    source = readers.Source(path=fv.input, format=fv.format, text_column=fv.text_column,
                            label_column=fv.label_column, encoding=fv.encoding)
    return PrepareConfig(source=source, output_dir=fv.output_dir, model=fv.model, max_length=fv.max_length,
                         splits=_parse_splits(fv.splits), split_name=fv.split_name, seed=fv.seed,
                         num_proc=fv.num_proc, keep_neutral=fv.keep_neutral, overwrite=fv.overwrite)
