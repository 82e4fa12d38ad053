"""Callbacks count global steps themselves, also when Keras runs several steps per call."""
import csv

import numpy as np
import tensorflow as tf
import tf_keras

from trainer import callbacks
from trainer.data.stream import BatchPlan


def fake_plan(steps, batch=4):
    return BatchPlan(rows=np.arange(steps * batch), global_batch_size=batch, num_shards=1,
                     pad_lengths=np.full((steps, 1), 10), real_tokens=np.full(steps, 30),
                     examples=np.full(steps, batch))


def test_logging_and_checkpoints_with_steps_per_execution(tmp_path):
    model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
    model.compile(optimizer=tf_keras.optimizers.legacy.SGD(0.1), steps_per_execution=3,
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    data = tf.data.Dataset.from_tensors((tf.ones((4, 3)), tf.zeros(4, tf.int32))).repeat(10)
    checkpoint = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "ckpt"), max_to_keep=None)
    logger = callbacks.StepLogger(str(tmp_path / "logs"), str(tmp_path / "steps.csv"), log_every_steps=4)
    saver = callbacks.Checkpoint(manager, every_steps=4, is_chief=True)
    for callback in (logger, saver):
        callback.start_epoch(fake_plan(10), first_step=0)
    model.fit(data, epochs=1, callbacks=[logger, saver], verbose=0)
    # Keras reports steps 3, 6, 9, 10; step 3 (compilation) is timed apart; logs when a multiple of 4 is crossed
    with open(tmp_path / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [6, 9]
    assert all(float(r["padding_efficiency"]) == 0.75 for r in rows)     # 30 real of 4 x 10 padded
    assert logger.totals["examples"] == 6 * 4 and logger.totals["padded_tokens"] == 6 * 40
    assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [6, 9]


def test_non_chief_empties_its_scratch_directory(tmp_path):
    checkpoint = tf.train.Checkpoint(step=tf.Variable(3))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "scratch"), max_to_keep=1)
    saver = callbacks.Checkpoint(manager, every_steps=1, is_chief=False)
    saver.save(3)
    saver.save(4)
    assert list((tmp_path / "scratch").iterdir()) == []
