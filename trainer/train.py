"""trainer-train: fine-tune a pretrained BERT on a prepared dataset; `run(config) -> stats`.

The flow: strategy -> precision policy -> model, optimizer and checkpoint inside strategy.scope()
-> one `fit` per epoch over that epoch's batch plan (a resumed epoch starts at its saved step)
-> test metrics -> export. Only the chief writes logs, checkpoints, metrics and the export.

OUTPUT_DIR/
  logs/train, logs/validation   TensorBoard: per-step scalars, epoch curves, profile
  steps.csv, epochs.csv         the same scalars as CSV
  checkpoints/                  weights + optimizer + step, every --checkpoint_every_steps
  export/                       save_pretrained model + tokenizer
  metrics.json                  test metrics, global_step, examples_seen, throughput
"""
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras
import transformers
from absl import logging

from trainer import callbacks, cli, distribute, files, hub
from trainer import evaluate as evaluate_lib
from trainer import flags as trainer_flags
from trainer import model as model_lib
from trainer.cli import UsageError
from trainer.config import TrainConfig
from trainer.data import prepare
from trainer.data import stream as stream_lib

METRICS = "metrics.json"


def run(config: TrainConfig) -> dict:
    """Train, evaluate on the test split, export; return the stats also written to metrics.json."""
    start = time.time()
    finished = os.path.exists(os.path.join(config.output_dir, METRICS))
    if finished and not config.overwrite_output_dir:
        raise UsageError(f"{config.output_dir} holds a finished run (metrics.json): pass "
                         "--overwrite_output_dir to start afresh, or another --output_dir")
    strategy = distribute.resolve_strategy(config.strategy, config.tpu, config.num_gpus)
    tf_keras.utils.set_random_seed(config.seed)
    manifest = prepare.load_manifest(config.data_dir)
    data = prepare.load(config.data_dir)
    train_split = _split(data, "train", config.data_dir)
    if config.max_train_examples and config.max_train_examples < len(train_split):   # a seeded random subset
        subset = np.random.default_rng(config.seed).choice(len(train_split), config.max_train_examples, replace=False)
        train_split = train_split.select(np.sort(subset))
    label_names = train_split.features["label"].names
    model_dir = hub.resolve(config.model)
    tokenizer = hub.load_tokenizer(model_dir)
    if prepare.tokenizer_fingerprint(tokenizer) != manifest["settings"]["tokenizer"]:
        raise UsageError(f"{config.model}'s tokenizer differs from the one {config.data_dir} was prepared with "
                         f"({manifest['tokenizer']['name_or_path']}): prepare the data with --model={config.model}")
    max_length = config.max_length or manifest["max_length"]
    positions = hub.max_positions(hub.load_config(model_dir))
    if positions and max_length > positions:
        raise UsageError(f"--max_length={max_length} is above the {positions} positions of {config.model}")

    num_workers, worker_index = distribute.worker_count_and_index(strategy)
    chief = worker_index == 0
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    precision = model_lib.resolve_precision(config.mixed_precision, strategy)
    tf_keras.mixed_precision.set_global_policy(model_lib.KERAS_POLICY[precision])
    global_batch_size = config.per_replica_batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = len(train_split) // global_batch_size   # every mode drops only the last partial batch
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_split)} training rows make no global batch of {global_batch_size}: "
                         "lower --per_replica_batch_size")

    def train_stream(epoch: int, start_step: int = 0) -> stream_lib.Stream:
        """This worker's shard of the epoch, from start_step on (every worker plans the same global batches)."""
        return stream_lib.stream(
            train_split, classifier, tokenizer, global_batch_size=global_batch_size, padding=config.padding,
            max_length=max_length, pad_to_multiple_of=config.pad_to_multiple_of, shuffle=True, seed=config.seed,
            epoch=epoch, start_step=start_step, drop_remainder=True, num_shards=num_workers,
            shard_index=worker_index, static_shapes=on_tpu)

    def distributed(dataset: tf.data.Dataset):
        """Single worker: Keras splits each global batch over the replicas. Multi-worker: each worker
        feeds its own shard, cut into per-replica batches for its local replicas."""
        if num_workers == 1:
            return dataset
        per_replica = global_batch_size // strategy.num_replicas_in_sync
        return strategy.distribute_datasets_from_function(lambda context: dataset.rebatch(per_replica))

    with strategy.scope():
        classifier = model_lib.build_classifier(
            config.model, label_names, classifier_dropout=config.classifier_dropout,
            freeze_encoder=config.freeze_encoder, freeze_layers=config.freeze_layers)
        total_steps = min(config.max_steps or math.inf, config.epochs * steps_per_epoch)
        optimizer, _ = transformers.create_optimizer(
            config.learning_rate, num_train_steps=total_steps, num_warmup_steps=int(config.warmup_ratio * total_steps),
            weight_decay_rate=config.weight_decay)
        classifier.compile(optimizer=optimizer, loss=model_lib.loss_fn,
                           metrics=[tf_keras.metrics.SparseCategoricalAccuracy("accuracy")],
                           jit_compile=config.xla, steps_per_execution=config.steps_per_execution)
        checkpoint = tf.train.Checkpoint(model=classifier, optimizer=classifier.optimizer)
    if finished:      # --overwrite_output_dir, and every input checked: only now remove the old run
        shutil.rmtree(config.output_dir)
    checkpoint_dir = os.path.join(config.output_dir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).expect_partial()
        logging.info("resumed from %s", latest)
    scratch = None if chief else tempfile.mkdtemp(prefix="worker-checkpoints-")
    manager = tf.train.CheckpointManager(checkpoint, scratch or checkpoint_dir, max_to_keep=2)
    global_step = resumed_from_step = int(classifier.optimizer.iterations.numpy())
    if config.profile_steps and not resumed_from_step < config.profile_steps[1] <= total_steps:
        raise UsageError(f"--profile_steps={config.profile_steps[0]},{config.profile_steps[1]} lies outside this "
                         f"run's steps {resumed_from_step + 1}..{total_steps}: choose steps inside it")

    logs = os.path.join(config.output_dir, "logs")
    step_logger = callbacks.StepLogger(os.path.join(logs, "train"), os.path.join(config.output_dir, "steps.csv"),
                                       config.log_every_steps, enabled=chief)
    saver = callbacks.Checkpoint(manager, config.checkpoint_every_steps, is_chief=chief)
    nan_guard = callbacks.StopOnNonFiniteLoss(lambda: tf.train.latest_checkpoint(checkpoint_dir))
    keras_callbacks = [nan_guard, step_logger, saver]       # the guard first: nothing saves NaN weights
    if chief:
        keras_callbacks += [tf_keras.callbacks.TensorBoard(logs, update_freq="epoch", profile_batch=0,
                                                           write_graph=False),
                            tf_keras.callbacks.CSVLogger(os.path.join(config.output_dir, "epochs.csv"), append=True)]
        if config.profile_steps:
            keras_callbacks.append(callbacks.Profile(os.path.join(logs, "train"), *config.profile_steps))
    epoch_aware = [c for c in keras_callbacks if isinstance(c, callbacks.EpochAware)]
    validation, validation_steps = None, None
    if "validation" in data and len(data["validation"]):
        validation_stream = stream_lib.stream(
            data["validation"], classifier, tokenizer, global_batch_size=global_batch_size, padding="bucket",
            max_length=max_length, static_shapes=on_tpu, num_shards=num_workers, shard_index=worker_index)
        validation, validation_steps = distributed(validation_stream.dataset), validation_stream.plan.steps

    logging.info("training: %d replica(s), global batch %d, %d steps per epoch, %d steps in all, precision %s, "
                 "xla %s, padding %s", strategy.num_replicas_in_sync, global_batch_size, steps_per_epoch,
                 total_steps, precision, config.xla, config.padding)
    shapes, efficiency, train_seconds = set(), [], 0.0
    rows_digest = hashlib.sha256()      # which rows this worker trained on, in order
    previous_handler = signal.signal(signal.SIGTERM, saver.request_stop)   # preemption: save, then stop
    try:
        while global_step < total_steps and not saver.stop_requested:
            epoch, start_step = divmod(global_step, steps_per_epoch)
            epoch_stream = train_stream(epoch, start_step)
            steps = min(epoch_stream.plan.steps, total_steps - global_step)
            shapes |= epoch_stream.plan.shapes()
            rows_digest.update(epoch_stream.plan.shard_rows(worker_index)[:steps * epoch_stream.plan.per_shard_batch_size]
                               .astype(np.int64).tobytes())
            efficiency.append((epoch_stream.plan.real_tokens[:steps].sum(),
                               epoch_stream.plan.padded_tokens[:steps].sum()))
            epoch_shapes = len(epoch_stream.plan.shapes())
            logging.info("epoch %d: %d steps from step %d, %d distinct batch shapes, padding efficiency %.3f",
                         epoch + 1, steps, start_step, epoch_shapes, epoch_stream.plan.padding_efficiency)
            if config.xla and epoch_shapes > 16:
                logging.warning("XLA compiles once per batch shape and this epoch has %d: use --padding=bucket or "
                                "--pad_to_multiple_of", epoch_shapes)
            for callback in epoch_aware:
                callback.start_epoch(epoch_stream.plan, global_step)
            fit_start = time.time()
            epoch_end = start_step + steps == steps_per_epoch
            classifier.fit(distributed(epoch_stream.dataset.take(steps)), initial_epoch=epoch, epochs=epoch + 1,
                           steps_per_epoch=steps, validation_data=validation if epoch_end else None,
                           validation_steps=validation_steps, callbacks=keras_callbacks,
                           verbose=1 if sys.stdout.isatty() else 2)
            train_seconds += time.time() - fit_start
            global_step = int(classifier.optimizer.iterations.numpy())
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    saver.save(global_step)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    if saver.stop_requested:
        logging.warning("stopped by SIGTERM at step %d of %d; checkpoint saved: rerun the same command to resume",
                        global_step, total_steps)
        return {"global_step": global_step, "examples_seen": global_step * global_batch_size, "interrupted": True}

    stats = {"global_step": global_step, "examples_seen": global_step * global_batch_size,
             "global_batch_size": global_batch_size, "replicas": strategy.num_replicas_in_sync,
             "strategy": distribute.strategy_name(strategy), "mixed_precision": precision, "xla": config.xla,
             "padding": config.padding, "distinct_shapes": len(shapes),
             "padding_efficiency": float(sum(r for r, _ in efficiency) / max(1, sum(p for _, p in efficiency))),
             "first_step_seconds": step_logger.first_step_seconds, "train_seconds": round(train_seconds, 1),
             "resumed_from_step": resumed_from_step,
             "worker": {"index": worker_index, "count": num_workers, "rows_sha256": rows_digest.hexdigest()},
             "weights_sha256": weights_digest(classifier)}
    if step_logger.totals["seconds"]:
        stats["examples_per_sec"] = step_logger.totals["examples"] / step_logger.totals["seconds"]
        stats["real_tokens_per_sec"] = step_logger.totals["real_tokens"] / step_logger.totals["seconds"]
    export_dir = os.path.join(config.output_dir, "export")
    if chief:
        _export(classifier, tokenizer, export_dir)
    if chief and "test" in data and len(data["test"]):
        # Multi-worker: predicting is collective there, so the chief scores its export on its own.
        scorer = classifier if num_workers == 1 else model_lib.load_export(export_dir)
        stats.update(evaluate_lib.evaluate_split(scorer, tokenizer, data["test"], global_batch_size=global_batch_size,
                                                 max_length=max_length, label_names=label_names))
    if chief:
        stats["seconds"] = round(time.time() - start, 1)
        stats["config"] = dataclasses.asdict(config)
        files.write_json(os.path.join(config.output_dir, METRICS), stats)
    return stats


def weights_digest(classifier) -> str:
    """sha256 over every weight: equal on every worker of a multi-worker run, and across identical runs."""
    digest = hashlib.sha256()
    for weight in classifier.weights:
        digest.update(np.asarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def _split(data, name: str, data_dir: str):
    if name not in data or len(data[name]) == 0:
        raise UsageError(f"{data_dir} has no rows in its {name!r} split: prepare it with --splits giving "
                         f"{name} a share")
    return data[name]


def _export(classifier, tokenizer, export_dir: str) -> None:
    """save_pretrained model + tokenizer, staged beside export_dir and renamed into place."""
    staged = files.staging_dir(export_dir, ".export-")
    classifier.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    files.replace_dir(staged, export_dir)


def _main(argv):
    del argv
    stats = run(trainer_flags.train_config())
    if "accuracy" in stats:
        print(evaluate_lib.format_table(stats))
    print(json.dumps({k: stats[k] for k in ("global_step", "examples_seen", "padding_efficiency", "train_seconds",
                                            "worker", "weights_sha256") if k in stats}))


def main():
    trainer_flags.define_train_flags()
    cli.run(_main)


if __name__ == "__main__":
    main()
