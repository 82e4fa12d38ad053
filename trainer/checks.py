"""The validation layer: every path, file and cross-setting a command uses, checked before any work and
before TensorFlow loads. Each check raises UsageError naming the problem and the fix; what the checks
load (the verified dataset, the model's tokenizer) is handed on, so nothing is read twice.

(Settings one by one are checked by the configs themselves; trainer-prepare checks its own inputs,
since it never loads TensorFlow.)
"""
import dataclasses
import os

import transformers

from trainer import hub, rundir, runtime, schema, storage
from trainer.config import EvaluateConfig, PredictConfig, TrainConfig, check_multiple
from trainer.data import prepare, readers
from trainer.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Model:
    """A model's local directory (a hub or bucket copy if need be), config and fast tokenizer."""
    dir: str
    config: transformers.PretrainedConfig
    tokenizer: transformers.PreTrainedTokenizerFast

    @property
    def label_names(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]


def model(name: str, flag: str = "--model", tf_only: bool = False) -> Model:
    """A model whose config (the sizes the trainer relies on), tokenizer and weights files are all readable; for
    an export (tf_only), its head matches its labels and its trainer.json is sound."""
    local = hub.resolve(name, flag)
    model_config, tokenizer = hub.load_config(local), hub.load_tokenizer(local)
    if len(tokenizer) > model_config.vocab_size:
        raise UsageError(f"{name}'s tokenizer has {len(tokenizer)} tokens but its config.json's vocab_size is "
                         f"{model_config.vocab_size}: restore the model's config.json or its tokenizer files")
    weights = hub.check_weights(local, tf_only=tf_only)
    if tf_only:
        hub.check_head(weights, model_config)
        info = os.path.join(local, "trainer.json")
        if os.path.exists(info):
            schema.check(storage.read_json(info), schema.EXPORT_INFO, f"{name}/trainer.json",
                         "export the model again with trainer-train, or remove the file")
    return Model(local, model_config, tokenizer)


@dataclasses.dataclass(frozen=True)
class TrainInputs:
    data: prepare.Prepared
    model: Model
    max_length: int
    replace: bool         # output_dir holds a run, to be replaced (--overwrite_output_dir)
    is_chief: bool        # the worker that writes the run directory


def for_train(config: TrainConfig) -> TrainInputs:
    config.require("data_dir", "model", "output_dir")
    storage.check_no_overlap(config.output_dir, "--output_dir", {"--data_dir": config.data_dir, "--model": config.model})
    replace = _check_run_dir(config)
    storage.check_writable(config.output_dir, "--output_dir", "dir")
    data = prepare.open_prepared(config.data_dir)
    splits = data.manifest["splits"]
    if not splits.get("train"):
        raise UsageError(f"{config.data_dir} has no rows in its 'train' split: prepare it with --splits giving "
                         "train a share")
    if config.validation_needed and not splits.get("validation"):
        raise UsageError(f"--export=best and --early_stopping_patience need a validation split, and {config.data_dir} "
                         "has none: prepare it with --splits giving validation a share, or pass --export=last")
    checked = model(config.model)
    check_model_fits_data(checked, config.model, "--model", data, config.data_dir)
    max_length = config.max_length or data.manifest["max_length"]
    hub.fit_max_length(checked.config, max_length, config.model)
    check_multiple(config.pad_to_multiple_of, max_length)
    is_chief = config.strategy != "multi_worker" or runtime.multi_worker_task()[1] == 0
    return TrainInputs(data, checked, max_length, replace, is_chief)


def check_model_fits_data(checked: Model, name: str, flag: str, data: prepare.Prepared, data_dir: str,
                          at_its_length: bool = False) -> None:
    """Prepared data meets a model only if it was tokenized by that model's tokenizer (the manifest's
    fingerprint); `at_its_length` (evaluation, which reads the data at the length it was prepared with): within
    the model's positions."""
    if prepare.tokenizer_fingerprint(checked.tokenizer) != data.manifest["settings"]["tokenizer"]:
        raise UsageError(f"{name}'s tokenizer differs from the one {data_dir} was prepared with "
                         f"({data.manifest['tokenizer']['name_or_path']}): prepare the data with {flag}={name}")
    positions = checked.config.max_position_embeddings or data.manifest["max_length"]
    if at_its_length and data.manifest["max_length"] > positions:
        raise UsageError(f"{data_dir} was prepared at max_length {data.manifest['max_length']}, above the "
                         f"{positions} positions of {name}: prepare it with --max_length<={positions}")


def _check_run_dir(config: TrainConfig) -> bool:
    """An existing --output_dir must be a run directory. It is resumed, or (--overwrite_output_dir) replaced;
    a finished run is never resumed. Returns whether an existing run is to be replaced."""
    out = config.output_dir
    if storage.is_url(out):
        exists, finished = storage.exists(out), storage.exists(storage.join(out, rundir.METRICS))
    else:
        if not os.path.isdir(out):
            return False
        names = set(os.listdir(out))
        if names - {rundir.LOCK} and not rundir.is_run_dir(out):
            raise UsageError(f"--output_dir={out} is not empty and holds no training run: pass a new or empty "
                             "directory")
        exists, finished = bool(names), rundir.METRICS in names
    if finished and not config.overwrite_output_dir:
        raise UsageError(f"{out} holds a finished run ({rundir.METRICS}): pass --overwrite_output_dir to start "
                         f"afresh, or another --output_dir (to train it further: --model={out}/{rundir.EXPORT})")
    return exists and config.overwrite_output_dir


@dataclasses.dataclass(frozen=True)
class EvaluateInputs:
    model: Model
    data: prepare.Prepared | None     # --data_dir; else config.input is a checked raw file


def for_evaluate(config: EvaluateConfig) -> EvaluateInputs:
    if config.output:
        storage.check_no_overlap(config.output, "--output", {"--model_dir": config.model_dir, "--data_dir": config.data_dir,
                                                             "--input": config.input})
        storage.check_writable(config.output, "--output", "file")
        check_not_inside_an_output(config.output, "--output")
        if storage.exists(config.output) and "accuracy" not in (storage.read_json(config.output) or {}):
            raise UsageError(f"--output={config.output} exists and is not a metrics file: pass a new file path")
    checked = model(config.model_dir, "--model_dir", tf_only=True)
    if config.input:
        readers.check_source(config)
        return EvaluateInputs(checked, None)
    data = prepare.open_prepared(config.data_dir)
    if not data.manifest["splits"].get(config.split):
        raise UsageError(f"{config.data_dir} has no rows in a split {config.split!r} (it has "
                         f"{', '.join(data.manifest['splits'])}): pass --split")
    check_model_fits_data(checked, config.model_dir, "--model", data, config.data_dir, at_its_length=True)
    if data.manifest["labels"] != checked.label_names:
        raise UsageError(f"{config.data_dir} has labels {data.manifest['labels']} but the model's head has "
                         f"{checked.label_names}: prepare the data with the same label set (e.g. without --keep_neutral)")
    return EvaluateInputs(checked, data)


def check_not_inside_an_output(path: str, flag: str) -> None:
    """A file written into a training run or a prepared dataset would replace or add to what is not its own."""
    if storage.is_url(path):
        return
    parent = os.path.dirname(os.path.realpath(path))
    while True:
        if rundir.is_run_dir(parent) or os.path.isfile(os.path.join(parent, prepare.MANIFEST)):
            kind = "a training run" if rundir.is_run_dir(parent) else "a prepared dataset"
            raise UsageError(f"{flag}={path} lies inside {kind} ({parent}): write it elsewhere")
        if os.path.dirname(parent) == parent:
            return
        parent = os.path.dirname(parent)


def for_predict(config: PredictConfig) -> Model:
    return model(config.model_dir, "--model_dir", tf_only=True)
