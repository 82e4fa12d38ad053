"""Every command-line flag of every command, with help text and validators.

Each command calls its define_*_flags() once, then its *_config() turns the parsed flags into a
frozen config. Presets are flag files: --flagfile=configs/<preset>.cfg.
"""
from absl import flags

from trainer.config import PrepareConfig, TrainConfig
from trainer.data import readers

FLAGS = flags.FLAGS


def _parse_splits(value: str) -> tuple[float, ...]:
    parts = tuple(float(p) for p in value.split(","))
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(value)
    return parts


def _parses(parse):
    """A validator: does `parse` accept the flag's value?"""
    def check(value) -> bool:
        try:
            parse(value)
            return True
        except ValueError:
            return False
    return check


def _define_source_flags(fv: flags.FlagValues, input_help: str) -> None:
    """--input and how to read it (prepare, and evaluate on a raw file)."""
    flags.DEFINE_string("input", None, input_help, flag_values=fv)
    flags.DEFINE_enum("format", "sentiment140", readers.FORMATS,
                      "Input format. sentiment140: no header, 6 columns, latin-1, labels 0/2/4.", flag_values=fv)
    flags.DEFINE_string("text_column", None, "csv/tsv/jsonl: the text column, by header name or 0-based position.",
                        flag_values=fv)
    flags.DEFINE_string("label_column", None, "csv/tsv/jsonl: the label column (0/1 or negative/positive), by "
                        "header name or 0-based position.", flag_values=fv)
    flags.DEFINE_string("encoding", None, "Text encoding of --input. Default: latin-1 for sentiment140, else utf-8.",
                        flag_values=fv)


def source_from_flags(fv: flags.FlagValues = FLAGS) -> readers.Source:
    return readers.Source(path=fv.input, format=fv.format, text_column=fv.text_column,
                          label_column=fv.label_column, encoding=fv.encoding)


def define_prepare_flags(fv: flags.FlagValues = FLAGS) -> None:
    _define_source_flags(fv, "Raw data file: Sentiment140 CSV, or a CSV/TSV/JSONL of text + label.")
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
    flags.register_validator("splits", _parses(_parse_splits), "--splits must be three fractions >= 0 summing to 1, "
                             "e.g. 0.8,0.1,0.1", flag_values=fv)
    flags.register_multi_flags_validator(
        ["format", "text_column", "label_column"],
        lambda f: f["format"] == "sentiment140" or (f["text_column"] is not None and f["label_column"] is not None),
        "--format=csv/tsv/jsonl needs --text_column and --label_column", flag_values=fv)


def prepare_config(fv: flags.FlagValues = FLAGS) -> PrepareConfig:
    return PrepareConfig(source=source_from_flags(fv), output_dir=fv.output_dir, model=fv.model, max_length=fv.max_length,
                         splits=_parse_splits(fv.splits), split_name=fv.split_name, seed=fv.seed,
                         num_proc=fv.num_proc, keep_neutral=fv.keep_neutral, overwrite=fv.overwrite)


def _parse_profile_steps(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    start, stop = (int(p) for p in value.split(","))
    if not 1 <= start <= stop:
        raise ValueError(value)
    return start, stop


def define_train_flags(fv: flags.FlagValues = FLAGS) -> None:
    from trainer import distribute, model
    from trainer.data import stream
    flags.DEFINE_string("data_dir", None, "A directory made by trainer-prepare (train/validation/test splits).",
                        flag_values=fv)
    flags.DEFINE_string("model", None, "Pretrained model: a hub id or a local directory (tf_model.h5 or "
                        "PyTorch-layout *.safetensors, with tokenizer files).", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Run directory: logs/, checkpoints/, export/, metrics.json. "
                        "Rerunning with an unfinished run's directory resumes it.", flag_values=fv)
    flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES, "tf.distribute strategy. auto: TPU if "
                      "attached, else MirroredStrategy over >1 GPUs, else one device.", flag_values=fv)
    flags.DEFINE_string("tpu", None, "TPU name for --strategy=tpu, or 'local' on a TPU VM.", flag_values=fv)
    flags.DEFINE_integer("num_gpus", None, "Use the first N GPUs (default: all).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("per_replica_batch_size", 32, "Examples per replica per step; the global batch is "
                         "this x replicas.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("epochs", 2, "Passes over the training split.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_steps", None, "Stop after this many optimizer steps in all.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("max_train_examples", None, "Train on a random subset (seeded by --seed) of N training rows.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate of AdamW.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_float("warmup_ratio", 0.1, "Fraction of the steps spent warming the learning rate up "
                       "linearly; it then decays linearly to 0.", lower_bound=0.0, upper_bound=0.99,
                       flag_values=fv)
    flags.DEFINE_float("weight_decay", 0.01, "Decoupled weight decay (not on biases and LayerNorm).",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_enum("padding", "bucket", stream.PADDINGS, "max_length: pad all to --max_length; batch: to each "
                      "batch's longest row; bucket: group by length, pad to <= 8 bucket lengths.", flag_values=fv)
    flags.DEFINE_integer("max_length", None, "Padded length for --padding=max_length (default: the data's).",
                         lower_bound=8, flag_values=fv)
    flags.DEFINE_integer("pad_to_multiple_of", None, "Round padded lengths up to a multiple of this (8 suits "
                         "tensor cores; fewer shapes for XLA with --padding=batch).", lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("mixed_precision", "auto", model.PRECISIONS, "auto: bf16 on TPU, fp16 on GPUs of compute "
                      "capability >= 7, none on CPU.", flag_values=fv)
    flags.DEFINE_bool("xla", False, "Compile the train step with XLA (jit_compile).", flag_values=fv)
    flags.DEFINE_integer("steps_per_execution", 1, "Train steps per tf.function call (TPUs want 50-100+).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("freeze_encoder", False, "Train only the classification head.", flag_values=fv)
    flags.DEFINE_integer("freeze_layers", 0, "Keep the embeddings and the first N encoder layers fixed.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_float("classifier_dropout", None, "Dropout before the head (default: the model config's).",
                       lower_bound=0.0, upper_bound=0.9, flag_values=fv)
    flags.DEFINE_integer("seed", 42, "Seed of weights init, dropout and the per-epoch data order.", flag_values=fv)
    flags.DEFINE_integer("log_every_steps", 50, "Write per-step scalars to TensorBoard and steps.csv this often.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("profile_steps", None, "START,STOP: profile these global steps into TensorBoard "
                        "(plugins/profile). Off by default.", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every_steps", 500, "Save a checkpoint (weights, optimizer, step) this often.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("overwrite_output_dir", False, "Start afresh in an --output_dir that holds a finished run.",
                      flag_values=fv)
    for name in ("data_dir", "model", "output_dir"):
        flags.mark_flag_as_required(name, flag_values=fv)
    flags.register_validator("profile_steps", _parses(_parse_profile_steps), "--profile_steps must be START,STOP with "
                             "1 <= START <= STOP, e.g. 10,15", flag_values=fv)
    flags.register_multi_flags_validator(
        ["freeze_encoder", "freeze_layers"], lambda f: not (f["freeze_encoder"] and f["freeze_layers"]),
        "--freeze_encoder and --freeze_layers exclude each other", flag_values=fv)
    flags.register_validator("learning_rate", lambda v: v > 0, "--learning_rate must be > 0", flag_values=fv)
    flags.register_multi_flags_validator(
        ["strategy", "tpu"], lambda f: f["tpu"] is None or f["strategy"] in ("tpu", "auto"),
        "--tpu goes with --strategy=tpu (or auto)", flag_values=fv)


def train_config(fv: flags.FlagValues = FLAGS) -> TrainConfig:
    return TrainConfig(
        data_dir=fv.data_dir, model=fv.model, output_dir=fv.output_dir, strategy=fv.strategy, tpu=fv.tpu,
        num_gpus=fv.num_gpus, per_replica_batch_size=fv.per_replica_batch_size, epochs=fv.epochs,
        max_steps=fv.max_steps, max_train_examples=fv.max_train_examples, learning_rate=fv.learning_rate,
        warmup_ratio=fv.warmup_ratio, weight_decay=fv.weight_decay, padding=fv.padding, max_length=fv.max_length,
        pad_to_multiple_of=fv.pad_to_multiple_of, mixed_precision=fv.mixed_precision, xla=fv.xla,
        steps_per_execution=fv.steps_per_execution, freeze_encoder=fv.freeze_encoder,
        freeze_layers=fv.freeze_layers, classifier_dropout=fv.classifier_dropout, seed=fv.seed,
        log_every_steps=fv.log_every_steps, profile_steps=_parse_profile_steps(fv.profile_steps),
        checkpoint_every_steps=fv.checkpoint_every_steps, overwrite_output_dir=fv.overwrite_output_dir)


def define_evaluate_flags(fv: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_string("model_dir", None, "A fine-tuned model: a training run's export/ directory.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "A prepared dataset (trainer-prepare) to evaluate on ...", flag_values=fv)
    flags.DEFINE_string("split", "test", "... and its split. With --input: the name the raw file's rows get.",
                        flag_values=fv)
    _define_source_flags(fv, "... or a raw file, tokenized with the model's tokenizer on the fly (neutral rows "
                         "dropped).")
    flags.DEFINE_integer("max_length", 128, "--input: truncate to this many tokens.", lower_bound=8,
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Examples per prediction batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("output", None, "Also write the metrics as JSON here.", flag_values=fv)
    flags.mark_flag_as_required("model_dir", flag_values=fv)
    flags.register_multi_flags_validator(
        ["data_dir", "input"], lambda f: (f["data_dir"] is None) != (f["input"] is None),
        "pass exactly one of --data_dir (a prepared dataset) and --input (a raw file)", flag_values=fv)


def define_predict_flags(fv: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_string("model_dir", None, "A fine-tuned model: a training run's export/ directory.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 64, "Texts per prediction batch.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_length", 128, "Truncate texts to this many tokens.", lower_bound=8, flag_values=fv)
    flags.mark_flag_as_required("model_dir", flag_values=fv)
