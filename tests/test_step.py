"""One optimizer step: K micro-batches give the step of one batch of their rows (same rows, losses and weights
within 1e-5, on full padding and buckets, on one device and over two replicas), with steps_per_execution and
across a resume; clipping acts on the global norm after the all-reduce; sparse embedding updates stay sparse;
under fp16 one loss scale serves the whole step and an overflow skips all of it."""
import csv

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from transformers import TFAutoModelForSequenceClassification

from conftest import train_config
from trainer import model, step, train
from trainer.config import KERAS_POLICY, TrainConfig


def logged(run_dir, column):
    with open(run_dir / "steps.csv") as f:
        return np.asarray([float(row[column]) for row in csv.DictReader(f)])


def exported_weights(run_dir):
    return [w.numpy() for w in TFAutoModelForSequenceClassification.from_pretrained(str(run_dir / "export")).weights]


def pair(tmp_path, data, model_dir, one, accumulated, **common):
    """Two runs of the same data and seed: `one` (a batch of 16 rows per step) and `accumulated`."""
    settings = dict(max_steps=8, log_every_steps=2, checkpoint_every_steps=4, eval_every_steps=8, **common)
    return {name: (train.run(train_config(data, model_dir, tmp_path / name, **settings, **overrides)),
                   tmp_path / name) for name, overrides in (("one", one), ("accumulated", accumulated))}


def assert_same_steps(runs, examples=8 * 16):
    (one, one_dir), (accumulated, accumulated_dir) = runs["one"], runs["accumulated"]
    assert one["worker"]["rows_sha256"] == accumulated["worker"]["rows_sha256"]        # the same rows per step
    assert one["examples_seen"] == accumulated["examples_seen"] == (examples or one["examples_seen"])
    np.testing.assert_allclose(logged(accumulated_dir, "loss"), logged(one_dir, "loss"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(logged(accumulated_dir, "grad_norm"), logged(one_dir, "grad_norm"), rtol=1e-5)
    for a, b in zip(exported_weights(accumulated_dir), exported_weights(one_dir)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["max_length", "bucket", "pack"])
def test_four_micro_batches_of_4_are_one_batch_of_16(padding, tmp_path, small_prepared, no_dropout_model):
    """Float32, dropout off; the accumulated run also calls 2 steps per execution. Packed: 16 packed rows, the
    micro-batches holding different numbers of tweets, and still the mean over the step's tweets."""
    runs = pair(tmp_path, small_prepared, no_dropout_model, dict(per_replica_batch_size=16),
                dict(per_replica_batch_size=4, gradient_accumulation_steps=4, steps_per_execution=2),
                padding=padding)
    assert runs["accumulated"][0]["gradient_accumulation_steps"] == 4
    assert runs["accumulated"][0]["global_batch_size"] == runs["one"][0]["global_batch_size"] == 16
    assert_same_steps(runs, None if padding == "pack" else 8 * 16)
    if padding == "pack":       # tweets, not rows: about twice as many as the 8 x 16 rows
        assert runs["one"][0]["examples_seen"] > 8 * 16 and runs["one"][0]["distinct_shapes"] == 1
        assert runs["one"][0]["padding_efficiency"] > 0.97


@pytest.mark.slow
def test_two_replicas_of_two_micro_batches_clip_as_one_device(tmp_path, small_prepared, no_dropout_model):
    """2 replicas x 2 micro-batches of 4 against 1 replica x 16, with a norm bound every step passes: the norm
    is the global one, taken after the all-reduce, so both clip every step alike."""
    runs = pair(tmp_path, small_prepared, no_dropout_model, dict(per_replica_batch_size=16),
                dict(strategy="mirrored", per_replica_batch_size=4, gradient_accumulation_steps=2),
                max_grad_norm=0.05, padding="max_length")
    assert runs["accumulated"][0]["replicas"] == 2
    assert runs["one"][0]["clipped_fraction"] == runs["accumulated"][0]["clipped_fraction"] == 1.0
    assert_same_steps(runs)


@pytest.mark.slow
def test_a_kill_mid_accumulation_resumes_exactly(tmp_path, small_prepared, no_dropout_model):
    """Checkpoints hold optimizer steps only: stopped after step 5 (of 4 micro-batches each) and resumed, the run
    ends with the uninterrupted run's weights."""
    from test_run_state import stop_at
    settings = dict(per_replica_batch_size=4, gradient_accumulation_steps=4, max_steps=8, checkpoint_every_steps=4,
                    padding="bucket")
    whole = train.run(train_config(small_prepared, no_dropout_model, tmp_path / "whole", **settings))
    with stop_at(5):
        assert train.run(train_config(small_prepared, no_dropout_model, tmp_path / "run", **settings))["interrupted"]
    resumed = train.run(train_config(small_prepared, no_dropout_model, tmp_path / "run", **settings))
    assert resumed["resumed_from_step"] == 5 and resumed["weights_sha256"] == whole["weights_sha256"]


def compiled(model_dir, precision="none", **settings):
    tf_keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    classifier = model.build_classifier(model_dir, ["negative", "positive"])
    model.compile_classifier(classifier, TrainConfig(**{"warmup_ratio": 0.0, **settings}), total_steps=10)
    return classifier


def micro_batches(k, rows, length, ids):
    """[k, rows, length] token ids drawn from `ids` (after [CLS]) and labels [k, rows]."""
    rng = np.random.default_rng(0)
    input_ids = rng.choice(ids, (k, rows, length)).astype(np.int32)
    input_ids[..., 0] = 2
    features = {"input_ids": tf.constant(input_ids), "attention_mask": tf.ones((k, rows, length), tf.int32)}
    return features, tf.constant(rng.integers(0, 2, (k, rows)), tf.int32)


def test_lazy_embedding_updates_stay_sparse_when_accumulated(tiny_model_dir):
    classifier = compiled(tiny_model_dir, gradient_accumulation_steps=3, learning_rate=1e-2)
    table = classifier.bert.embeddings.weights[0]
    before = table.numpy()
    used = np.arange(40, 60)
    classifier.fit(tf.data.Dataset.from_tensors(micro_batches(3, 4, 8, used)), verbose=0)
    after, moments = table.numpy(), classifier.optimizer.get_slot(table, "m").numpy()
    untouched = np.setdiff1d(np.arange(len(before)), np.r_[used, 2])
    np.testing.assert_array_equal(after[untouched], before[untouched])     # no decay, no update
    assert (moments[untouched] == 0).all() and not np.allclose(after[used], before[used])


def test_under_fp16_one_scale_serves_the_step_and_an_overflow_skips_it_all(tiny_model_dir):
    classifier = compiled(tiny_model_dir, "fp16", gradient_accumulation_steps=4)
    optimizer = classifier.optimizer
    assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    weights = [w.numpy() for w in classifier.trainable_weights]
    optimizer.dynamic_counter.assign(0)
    optimizer._loss_scale._current_loss_scale.assign(2.0 ** 120)        # every micro-batch's gradient overflows
    classifier.fit(tf.data.Dataset.from_tensors(micro_batches(4, 4, 8, np.arange(40, 60))), verbose=0)
    assert int(optimizer.iterations.numpy()) == 1                       # a step, skipped whole ...
    assert float(optimizer.loss_scale.numpy()) == 2.0 ** 119            # ... and the scale lowered once, not 4 times
    for before, after in zip(weights, classifier.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    sums = classifier.optimizer_step.read_and_reset()
    assert sums["steps"] == 1 and sums["normed_steps"] == 0 and sums["divergence"] is None   # an overflow: no divergence


def test_the_norm_counts_a_repeated_embedding_row_once():
    """A sparse gradient with a row twice has the norm of its sum: what AdamW applies."""
    gradient = tf.IndexedSlices(tf.constant([[3.0, 0.0], [4.0, 0.0], [1.0, 1.0]]), tf.constant([5, 5, 2]),
                                tf.constant([8, 2]))
    deduplicated = step._deduplicated(gradient)
    assert float(tf.linalg.global_norm([deduplicated])) == pytest.approx(np.sqrt(7 ** 2 + 2))     # row 5: [7, 0]
    assert float(tf.linalg.global_norm([gradient])) == pytest.approx(np.sqrt(3 ** 2 + 4 ** 2 + 2))   # not the norm
