"""A fine-tuned classifier's metrics on a prepared split or on a raw file (tokenized with its tokenizer)."""
import os
import tempfile

from absl import logging

from trainer import checks, distribute, hub, metrics, packed, storage
from trainer import model as model_lib
from trainer.config import EvaluateConfig, PrepareConfig
from trainer.data import prepare
from trainer.data import stream as stream_lib


def evaluate(config: EvaluateConfig, inputs: checks.EvaluateInputs | None = None) -> dict:
    """Metrics of config.model_dir on every row of config.split of config.data_dir (at the max_length it was
    prepared with: config.max_length applies only to config.input), or on the rows of config.input."""
    inputs = inputs or checks.for_evaluate(config)
    classifier = model_lib.load_export(inputs.model.dir, config.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        data = inputs.data or _prepare_raw(config, inputs.model, os.path.join(tmp, "data"))
        split = data.load()[config.split]
        if config.padding == "pack":
            packed.bert_of(classifier)
        plan = stream_lib.plan_batches(stream_lib.lengths_of(split), padding=config.padding,
                                       global_batch_size=config.batch_size,
                                       max_length=data.manifest["max_length"])
        strategy = distribute.resolve_strategy("one_device")
        dataset = stream_lib.batches(split, plan, classifier, inputs.model.tokenizer)
        result = metrics.Scorer(classifier, strategy, inputs.model.label_names).score(
            distribute.per_replica(dataset, strategy, 1))
    if config.output:
        storage.write_json(config.output, result)
    return result


def _prepare_raw(config: EvaluateConfig, model: checks.Model, output_dir: str) -> prepare.Prepared:
    """The raw file tokenized with the model's tokenizer, all of it in one split; neutral rows dropped."""
    max_length = hub.fit_max_length(model.config, config.max_length, config.model_dir, clip=True)
    manifest = prepare.prepare(PrepareConfig(
        input=config.input, format=config.format, text_column=config.text_column, label_column=config.label_column,
        encoding=config.encoding, output_dir=output_dir, model=model.dir, max_length=max_length,
        split_name=config.split))
    logging.info("read %d rows, kept %d, dropped %s", manifest["rows_read"], manifest["rows_kept"], manifest["dropped"])
    trained_on = (storage.read_json(os.path.join(model.dir, "trainer.json")) or {}).get("data_source_sha256")
    if trained_on == manifest["source"]["sha256"]:
        logging.warning("%s is the file this model was trained from: its rows include the training split, so "
                        "these metrics are not held-out", config.input)
    return prepare.open_prepared(output_dir)
