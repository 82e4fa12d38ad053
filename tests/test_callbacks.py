"""Callbacks count global steps themselves (also with several steps per call), log exact window means, and never
checkpoint non-finite weights."""
import csv

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from trainer import callbacks
from trainer.data.stream import BatchPlan
from trainer.errors import Diverged


def fake_plan(sizes, length=10, real_per_row=7.5):
    sizes = np.asarray(sizes)
    return BatchPlan(rows=np.arange(sizes.sum()), examples=sizes, pad_lengths=np.full((len(sizes), 1), length),
                     real_tokens=(sizes * real_per_row).astype(int), num_shards=1, padding="bucket", max_length=length)


def small_model(steps_per_execution=1):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
    model.compile(optimizer=tf_keras.optimizers.legacy.SGD(0.1), steps_per_execution=steps_per_execution,
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def batches_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    data = [(rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 2, n).astype(np.int32)) for n in sizes]
    return tf.data.Dataset.from_generator(lambda: iter(data), output_signature=(
        tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None,), tf.int32)))


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_logging_and_checkpoints_with_steps_per_execution(tmp_path):
    model = small_model(steps_per_execution=3)
    checkpoint = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "ckpt"), max_to_keep=None)
    logger = callbacks.StepLogger(str(tmp_path / "logs"), str(tmp_path / "steps.csv"), log_every_steps=4,
                                  total_steps=10)
    saver = callbacks.Checkpoint(manager, every_steps=4, is_chief=True)
    plan = fake_plan([4] * 10)
    for callback in (logger, saver):
        callback.start_epoch(plan, first_step=0)
    model.fit(batches_of([4] * 10), epochs=1, steps_per_epoch=10, callbacks=[logger, saver], verbose=0)
    # Keras reports steps 3, 6, 9, 10; logs when a multiple of 4 is crossed, and at the last step
    logged = rows(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in logged] == [6, 9, 10]
    assert all(float(r["padding_efficiency"]) == 0.75 for r in logged)     # 7.5 real of 10 padded per row
    assert logger.totals["examples"] == 7 * 4 and logger.totals["padded_tokens"] == 7 * 40   # step 1-3 compiled
    assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [6, 9]


def test_window_means_are_exact_and_weighted_by_rows(tmp_path):
    """Two loggers on one run: every 4-step window equals the rows-weighted mean of its single steps, which
    is not Keras' running mean since the epoch began."""
    sizes = [4, 12, 8, 4, 16, 4, 8, 12, 4, 8, 16, 4]
    plan, model = fake_plan(sizes), small_model()
    every_step = callbacks.StepLogger(str(tmp_path / "a"), str(tmp_path / "a.csv"), 1, len(sizes))
    every_4 = callbacks.StepLogger(str(tmp_path / "b"), str(tmp_path / "b.csv"), 4, len(sizes))
    for logger in (every_step, every_4):
        logger.start_epoch(plan, first_step=0)
    model.fit(batches_of(sizes), epochs=1, steps_per_epoch=len(sizes), callbacks=[every_step, every_4], verbose=0)
    single = {int(r["step"]): (float(r["loss"]), float(r["accuracy"])) for r in rows(tmp_path / "a.csv")}
    assert sorted(single) == list(range(1, 13))
    weights = np.asarray(sizes, dtype=float)
    for row in rows(tmp_path / "b.csv"):
        step = int(row["step"])
        window = slice(step - 4, step)
        for column, key in ((0, "loss"), (1, "accuracy")):
            values = np.asarray([single[s][column] for s in range(1, 13)])
            expected = np.average(values[window], weights=weights[window])
            assert float(row[key]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    losses = np.asarray([single[s][0] for s in range(1, 13)])
    running = np.cumsum(losses * weights) / np.cumsum(weights)
    assert float(rows(tmp_path / "b.csv")[2]["loss"]) != pytest.approx(running[11], rel=1e-3)


def trained_saver(directory, every_steps, is_chief, max_to_keep):
    """A Checkpoint callback on a small model that has taken one step."""
    model = small_model()
    model.fit(batches_of([4]), epochs=1, verbose=0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory), max_to_keep=max_to_keep)
    saver = callbacks.Checkpoint(manager, every_steps=every_steps, is_chief=is_chief)
    saver.set_model(model)
    return model, manager, saver


def test_a_checkpoint_of_non_finite_weights_is_never_written(tmp_path):
    model, manager, saver = trained_saver(tmp_path / "ckpt", every_steps=2, is_chief=True, max_to_keep=5)
    saver.save(2)
    model.weights[0].assign(tf.fill(model.weights[0].shape, np.nan))       # the loss before this was finite
    with pytest.raises(Diverged, match=r"the weights or the optimizer state are not all finite after step 4: lower --learning_rate.*"
                                       r"the last checkpoint, ckpt-2, holds finite weights"):
        saver.save(4)
    assert [p.rsplit("/", 1)[1] for p in manager.checkpoints] == ["ckpt-2"]
    with pytest.raises(Diverged, match="the loss became nan at step 5"):
        saver.start_epoch(fake_plan([4] * 5), first_step=4)
        saver.on_train_batch_end(0, {"loss": float("nan")})


def test_non_chief_empties_its_scratch_directory(tmp_path):
    _, _, saver = trained_saver(tmp_path / "scratch", every_steps=1, is_chief=False, max_to_keep=1)
    saver.save(3)
    saver.save(4)
    assert list((tmp_path / "scratch").iterdir()) == []
