"""Frozen configs: every setting of every command, stated once.

Each field carries its default, help text and bounds (`setting(...)`). The command layer makes
the flags from the fields, and `__post_init__` checks every value, so a config built by a test
or a benchmark is held to the same rules as one built from flags. No TensorFlow here.
"""
import codecs
import dataclasses
import math
import re

from trainer import storage
from trainer.errors import UsageError

FORMATS = ("sentiment140", "csv", "tsv", "jsonl")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PADDINGS = ("max_length", "batch", "bucket", "pack")
PRECISIONS = ("auto", "none", "fp16", "bf16")
KERAS_POLICY = {"none": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}   # precision -> Keras
EMBEDDING_UPDATES = ("lazy", "dense", "frozen")
EXPORTS = ("best", "last")
BEST_METRICS = ("accuracy", "loss", "f1")
SPLITS = ("train", "validation", "test")
MAX_SEED = 2**32 - 1
FLOAT32_MAX = 3.4028234663852886e38      # a larger float is inf once TensorFlow holds it
INT32_MAX = 2**31 - 1                     # the bound of an integer setting that names none (TensorFlow's int32)
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def setting(default=None, help="", *, required=False, choices=None, lower=None, upper=None, parse=None,
            location=False):
    """A config field with what its flag needs: default, help, bounds.

    parse: for a field whose flag is text (e.g. "0.8,0.1,0.1"), text -> value (raises UsageError).
    location: a path or URL, put in the one form every check sees (storage.location).
    """
    return dataclasses.field(default=default, metadata=dict(help=help, required=required, choices=choices,
                                                            lower=lower, upper=upper, parse=parse, location=location))


def check_encoding(name: str, encoding: str) -> None:
    """A codec that turns bytes into text (not 'undefined', 'rot13', 'base64', ...)."""
    try:
        usable = codecs.lookup(encoding)._is_text_encoding and "".encode(encoding) is not None
    except (LookupError, UnicodeError, TypeError, ValueError):
        usable = False
    if not usable:
        raise UsageError(f"--{name}={encoding}: not a text encoding; use e.g. utf-8 or latin-1")


def parse_floats(text: str, name: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise UsageError(f"--{name}={text}: give {count} comma-separated numbers")
    return values


def parse_splits(text: str) -> tuple[float, ...]:
    return parse_floats(text, "splits", 3)


def parse_step_range(text: str) -> tuple[int, int]:
    try:
        start, stop = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--profile_steps={text}: give START,STOP, e.g. 10,15") from None
    return start, stop


def check_multiple(pad_to_multiple_of: int | None, max_length: int) -> None:
    """Padded lengths are rounded up to multiples of --pad_to_multiple_of and may never pass max_length (given, or
    the prepared data's; it is within the model's positions), so max_length must be such a multiple."""
    if pad_to_multiple_of and pad_to_multiple_of > max_length:
        raise UsageError(f"--pad_to_multiple_of={pad_to_multiple_of} is above --max_length={max_length}: lower it")
    if pad_to_multiple_of and max_length % pad_to_multiple_of:
        multiple = max_length // pad_to_multiple_of * pad_to_multiple_of
        raise UsageError(f"--pad_to_multiple_of={pad_to_multiple_of} would pad rows of {max_length} tokens to "
                         f"{multiple + pad_to_multiple_of}, past --max_length={max_length}: pass --max_length={multiple}"
                         " (a multiple of it), or another --pad_to_multiple_of")


def shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _check_field(field: dataclasses.Field, value) -> None:
    """The rules every field obeys: non-empty text, finite numbers, bounds, choices."""
    if value is None:
        return
    name, meta = field.name, field.metadata
    if isinstance(value, str) and not value.strip():
        raise UsageError(f"--{name} is empty: give it a value, or leave the flag out")
    numbers = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, float) and not (math.isfinite(v) and abs(v) <= FLOAT32_MAX) for v in numbers):
        raise UsageError(f"--{name}={shown(value)}: must be a finite number")
    lower, upper = meta.get("lower"), meta.get("upper")
    if upper is None and any(isinstance(v, int) and not isinstance(v, bool) and v > INT32_MAX for v in numbers):
        raise UsageError(f"--{name}={shown(value)}: must be <= {INT32_MAX}")
    if (lower is not None and any(v < lower for v in numbers)) or (upper is not None and any(v > upper for v in numbers)):
        bounds = f">= {lower}" if upper is None else f"<= {upper}" if lower is None else f"in [{lower}, {upper}]"
        raise UsageError(f"--{name}={shown(value)}: must be {bounds}")
    if meta.get("choices") and value not in meta["choices"]:
        raise UsageError(f"--{name}={value}: must be one of {', '.join(meta['choices'])}")


class Checked:
    """Mixin for the frozen configs: every field checked on construction, then `check()` across fields."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get("location") and isinstance(value, str):
                object.__setattr__(self, field.name, value := storage.location(value))
            _check_field(field, value)
        self.check()

    def check(self) -> None:
        pass

    def require(self, *names: str) -> None:
        """Library callers pass these; the command layer marks their flags required."""
        for name in names:
            if getattr(self, name) is None:
                raise UsageError(f"--{name} is required (see --help)")


def _plain_name(name: str, value: str | None) -> None:
    if value is not None and (not PLAIN_NAME.fullmatch(value) or value in (".", "..")):
        raise UsageError(f"--{name}={value}: a split name is a plain name (letters, digits, _ . -), "
                         "not a path, e.g. test")


@dataclasses.dataclass(frozen=True)
class SourceConfig(Checked):
    """A raw file of text + label, and how to read it (prepare, and evaluate on a raw file)."""
    input: str | None = setting(None, "Raw data file: Sentiment140 CSV, or a CSV/TSV/JSONL of text + label.", location=True)
    format: str = setting("sentiment140", "Input format. sentiment140: no header, 6 columns, latin-1, labels "
                          "0/2/4; csv/tsv (tsv unquoted); jsonl.", choices=FORMATS)
    text_column: str | None = setting(None, "csv/tsv/jsonl: the text column, by header name or 0-based position.")
    label_column: str | None = setting(None, "csv/tsv/jsonl: the label column (0/1, neg/pos or negative/positive), "
                                       "by header name or 0-based position.")
    encoding: str | None = setting(None, "Text encoding of --input. Default: latin-1 for sentiment140, else utf-8 "
                                   "(a UTF-8 byte-order mark is skipped).")

    @property
    def resolved_encoding(self) -> str:
        return self.encoding or ("latin-1" if self.format == "sentiment140" else "utf-8")

    def check(self) -> None:
        if self.input is not None and self.format != "sentiment140" and None in (self.text_column, self.label_column):
            raise UsageError(f"--format={self.format} needs --text_column and --label_column (header names, or "
                             "0-based positions)")
        check_encoding("encoding", self.resolved_encoding)


@dataclasses.dataclass(frozen=True)
class PrepareConfig(SourceConfig):
    """trainer-prepare: one raw file -> a tokenized DatasetDict on disk (local path or bucket URL)."""
    input: str | None = setting(None, SourceConfig.__dataclass_fields__["input"].metadata["help"], required=True, location=True)
    output_dir: str | None = setting(None, "Where to write the prepared DatasetDict and manifest.json (a local "
                                     "directory or a gs:// URL).", required=True, location=True)
    model: str | None = setting(None, "Model whose tokenizer to use: a hub id or a local directory.", required=True, location=True)
    max_length: int = setting(128, "Truncate to this many tokens (special tokens included).", lower=8)
    splits: tuple[float, ...] = setting((0.8, 0.1, 0.1), "train,validation,test fractions, summing to 1. A 0 "
                                        "drops that split; 1,0,0 keeps the whole file as train.", parse=parse_splits)
    split_name: str | None = setting(None, "Put the whole file into this one split (e.g. test), ignoring --splits.")
    seed: int = setting(42, "Seed of the shuffle before splitting.", lower=0, upper=MAX_SEED)
    num_proc: int | None = setting(None, "Processes for tokenization (default: one; the fast tokenizer already "
                                   "uses every core).", lower=1)
    keep_neutral: bool = setting(False, "Keep neutral rows (Sentiment140 label 2) as a third class instead of "
                                 "dropping and counting them.")
    overwrite: bool = setting(False, "Replace an existing --output_dir prepared with other inputs.")

    def check(self) -> None:
        super().check()
        self.require("input", "output_dir", "model")
        _plain_name("split_name", self.split_name)
        if len(self.splits) != 3 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-6:
            raise UsageError(f"--splits={shown(self.splits)}: must be three fractions >= 0 summing to 1, "
                             "e.g. 0.8,0.1,0.1")

    def split_fractions(self) -> dict[str, float]:
        if self.split_name:
            return {self.split_name: 1.0}
        return {name: f for name, f in zip(SPLITS, self.splits) if f > 0}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Checked):
    """trainer-train: fine-tune `model` on the prepared `data_dir`; everything lands in `output_dir`."""
    data_dir: str | None = setting(None, "A dataset made by trainer-prepare (local directory or gs:// URL).",
                                   required=True, location=True)
    model: str | None = setting(None, "Pretrained model: a hub id or a local directory (tf_model.h5 or "
                                "PyTorch-layout *.safetensors, with tokenizer files).", required=True, location=True)
    output_dir: str | None = setting(None, "Run directory (local or gs://): logs/, checkpoints/, best/, export/, "
                                     "metrics.json. Rerunning with an unfinished run's directory resumes it.",
                                     required=True, location=True)
    overwrite_output_dir: bool = setting(False, "Start afresh in an --output_dir that holds a finished run.")
    strategy: str = setting("auto", "tf.distribute strategy. auto: TPU if attached, else MirroredStrategy over "
                            ">1 GPUs, else one device.", choices=STRATEGIES)
    tpu: str | None = setting(None, "TPU name for --strategy=tpu, or 'local' on a TPU VM.")
    num_gpus: int | None = setting(None, "Use the first N GPUs (default: all).", lower=1)
    per_replica_batch_size: int = setting(32, "Rows per replica per step (the global batch is this x replicas), "
                                          "unless --batch_tokens sizes batches; with --padding=pack, packed rows.",
                                          lower=1)
    batch_tokens: int | None = setting(None, "--padding=bucket or pack: size each batch in padded tokens per "
                                       "replica: a batch of (bucket or packed) length L holds N // L rows (a "
                                       "multiple of 8, at least 8).", lower=64)
    padding: str = setting("bucket", "max_length: pad all to --max_length; batch: to each batch's longest row; "
                           "bucket: group by length, pad to <= 8 bucket lengths; pack: several tweets per row of "
                           "--max_length (at most max_length / 8), one shape.", choices=PADDINGS)
    max_length: int | None = setting(None, "Longest row in tokens (default: the data's); longer rows are "
                                     "truncated as they are streamed.", lower=8)
    pad_to_multiple_of: int | None = setting(None, "Round padded lengths up to a multiple of this (8 suits "
                                             "tensor cores; fewer shapes for XLA with --padding=batch).", lower=1)
    epochs: int = setting(2, "Passes over the training split.", lower=1)
    max_steps: int | None = setting(None, "Stop after this many optimizer steps in all.", lower=1)
    max_train_examples: int | None = setting(None, "Train on a random subset (seeded by --seed) of N training "
                                             "rows.", lower=1)
    gradient_accumulation_steps: int = setting(1, "Micro-batches per replica in each optimizer step: the global "
                                               "batch is --per_replica_batch_size (or --batch_tokens' rows) x "
                                               "replicas x this. A recipe's global batch on fewer devices: raise it "
                                               "as the replicas fall.", lower=1)
    learning_rate: float = setting(5e-5, "Peak learning rate of AdamW.", lower=1e-12, upper=1.0)
    warmup_ratio: float = setting(0.1, "Fraction of the steps spent warming the learning rate up linearly; it "
                                  "then decays linearly to 0.", lower=0.0, upper=0.99)
    weight_decay: float = setting(0.01, "Decoupled weight decay (not on biases and LayerNorm).", lower=0.0,
                                  upper=1.0)
    max_grad_norm: float = setting(1.0, "Clip the gradient's global norm (all replicas and micro-batches, after "
                                   "fp16 unscaling) to this before AdamW; 0 turns clipping off.", lower=0.0)
    recovery_max_trials: int = setting(3, "On a divergence (a non-finite loss, weights or optimizer state, or a "
                                       "loss above --loss_upper_bound), resume from the newest intact checkpoint "
                                       "at half the learning rate, at most this many times; 0: stop at the first.",
                                       lower=0)
    loss_upper_bound: float = setting(100.0, "A step whose mean loss is above this has diverged (a 2-class "
                                      "guess scores 0.69).", lower=1e-6)
    embedding_update: str = setting("lazy", "lazy: AdamW updates only the embedding rows a batch touches (fine-"
                                    "tuning: same accuracy, no per-step cost for the vocabulary); dense: every row "
                                    "every step (training from scratch learns faster); frozen: embeddings fixed.",
                                    choices=EMBEDDING_UPDATES)
    freeze_encoder: bool = setting(False, "Train only the classification head.")
    freeze_layers: int = setting(0, "Keep the embeddings and the first N encoder layers fixed.", lower=0)
    classifier_dropout: float | None = setting(None, "Dropout before the head (default: the model config's).",
                                               lower=0.0, upper=0.9)
    mixed_precision: str = setting("auto", "auto: bf16 on TPU and on GPUs of compute capability >= 8, fp16 "
                                   "(loss scaling) on 7.x, else none; on a CPU bf16 only with AMX or AVX512-BF16 "
                                   "and a bf16 train step measured >= 1.1x float32's (cached), else none.",
                                   choices=PRECISIONS)
    peak_tflops: float | None = setting(None, "The devices' peak TFLOP/s (each) in the run's precision, the "
                                        "denominator of MFU. Default: a datasheet table for known GPUs and TPUs, else "
                                        "this machine's matrix-product rate, measured once and cached.", lower=1e-6)
    xla: bool = setting(False, "Compile the train step with XLA (jit_compile).")
    steps_per_execution: int = setting(1, "Train steps per tf.function call (TPUs want 50-100+).", lower=1)
    eval_every_steps: int | None = setting(None, "Validate every N global steps and at the end (default: at the "
                                           "end of every epoch).", lower=1)
    export: str | None = setting(None, "Which weights export/ holds: best (by --best_metric on validation) or "
                                 "last. Default: best when the data has a validation split.", choices=EXPORTS)
    best_metric: str = setting("accuracy", "Validation metric that picks the best weights (loss: lowest).",
                               choices=BEST_METRICS)
    early_stopping_patience: int | None = setting(None, "Stop after this many validations without improvement "
                                                  "(default: never).", lower=1)
    seed: int = setting(42, "Seed of weights init, dropout and the per-epoch data order.", lower=0, upper=MAX_SEED)
    log_every_steps: int = setting(50, "Write per-step scalars (TensorBoard, steps.csv) and a progress line this "
                                   "often.", lower=1)
    profile_steps: tuple[int, int] | None = setting(None, "START,STOP: profile these global steps into "
                                                    "TensorBoard (plugins/profile). Off by default.",
                                                    parse=parse_step_range)
    checkpoint_every_steps: int = setting(500, "Save a checkpoint (weights, optimizer, step) this often.", lower=1)

    def check(self) -> None:
        if self.freeze_encoder and self.freeze_layers:
            raise UsageError("--freeze_encoder and --freeze_layers exclude each other: pass one")
        if self.tpu is not None and self.strategy not in ("tpu", "auto"):
            raise UsageError(f"--tpu goes with --strategy=tpu (or auto), not --strategy={self.strategy}")
        if self.batch_tokens is not None and self.padding not in ("bucket", "pack"):
            raise UsageError(f"--batch_tokens sizes bucket or packed batches: pass --padding=bucket or pack (not "
                             f"{self.padding})")
        if self.max_length:
            check_multiple(self.pad_to_multiple_of, self.max_length)
        if self.profile_steps is not None and not 1 <= self.profile_steps[0] <= self.profile_steps[1]:
            raise UsageError(f"--profile_steps={shown(self.profile_steps)}: must be START,STOP with 1 <= START <= "
                             "STOP, e.g. 10,15")

    @property
    def validation_needed(self) -> bool:
        return self.export == "best" or self.early_stopping_patience is not None


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(SourceConfig):
    """trainer-evaluate: a fine-tuned model's metrics on a prepared split or a raw file."""
    model_dir: str | None = setting(None, "A fine-tuned model: a training run's export/ directory (local or gs://).",
                                    required=True, location=True)
    data_dir: str | None = setting(None, "A prepared dataset (trainer-prepare) to evaluate on ...", location=True)
    split: str = setting("test", "... and its split. With --input: the name the raw file's rows get.")
    max_length: int = setting(128, "With --input: truncate its texts to this many tokens (at most the model's "
                                 "positions). A --data_dir keeps the max_length it was prepared with.", lower=8)
    batch_size: int = setting(64, "Rows per prediction batch (packed rows with --padding=pack).",
                              lower=1)
    padding: str = setting("bucket", "bucket: rows grouped by length, each batch padded to its "
                           "bucket; pack: several texts packed into each row of max_length (BERT "
                           "models).", choices=("bucket", "pack"))
    output: str | None = setting(None, "Also write the metrics as JSON to this file (local or gs://).", location=True)

    def check(self) -> None:
        super().check()
        self.require("model_dir")
        _plain_name("split", self.split)
        if (self.data_dir is None) == (self.input is None):
            raise UsageError("pass exactly one of --data_dir (a prepared dataset) and --input (a raw file)")


@dataclasses.dataclass(frozen=True)
class PredictConfig(Checked):
    """trainer-predict: label and probability for each text."""
    model_dir: str | None = setting(None, "A fine-tuned model: a training run's export/ directory (local or gs://).",
                                    required=True, location=True)
    batch_size: int = setting(64, "Texts per prediction batch (packed rows with --padding=pack).",
                              lower=1)
    max_length: int = setting(128, "Truncate texts to this many tokens (at most the model's positions).", lower=8)
    padding: str = setting("bucket", "bucket: each batch padded to its longest text; pack: several "
                           "texts packed into each row of --max_length (BERT models).",
                           choices=("bucket", "pack"))
    encoding: str = setting("utf-8", "Encoding of the texts on stdin.")

    def check(self) -> None:
        self.require("model_dir")
        check_encoding("encoding", self.encoding)


@dataclasses.dataclass(frozen=True)
class ExportConfig(Checked):
    """trainer-export: a SavedModel that takes raw text (its tokenizer as graph ops), for TF Serving."""
    model_dir: str | None = setting(None, "A fine-tuned model: a training run's export/ directory (local or gs://).",
                                    required=True, location=True)
    output_dir: str | None = setting(None, "Where to write the SavedModel: a new directory (local or gs://), e.g. "
                                     "models/sentiment/1 for TF Serving.", required=True, location=True)
    max_length: int = setting(128, "Truncate texts to this many tokens, as trainer-predict does (at most the "
                              "model's positions).", lower=8)

    def check(self) -> None:
        self.require("model_dir", "output_dir")
