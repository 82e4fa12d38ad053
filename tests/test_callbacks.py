"""What the loop calls: the meter counts each step once (also with several steps per call) and its windows are
exact rows-weighted means; the logger writes them; checkpoints are never written from non-finite values. The
loop's own decisions (which step logs, validates, saves, stops) are tested in test_train."""
import csv

import numpy as np
import pytest
import tensorflow as tf

from conftest import MODEL_CONFIG, batches_of, fake_plan, small_model
from trainer import callbacks, flops, train
from trainer.errors import Diverged


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def logged_loop(tmp_path, name, plan, log_every, model, **loop_settings):
    """A Loop over a small model that logs to tmp_path/name.csv and saves into tmp_path/name-ckpt."""
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / f"{name}-ckpt"),
                                         max_to_keep=None)
    meter = callbacks.Meter(MODEL_CONFIG, np.full(plan.rows.size, 7))
    logger = callbacks.StepLogger(str(tmp_path / name), str(tmp_path / f"{name}.csv"), plan.steps, peak_flops=1e12)
    settings = dict(total_steps=plan.steps, log_every=log_every, eval_every=10**6, checkpoint_every=10**6)
    loop = train.Loop(meter=meter, logger=logger, saver=callbacks.Checkpoints(model, manager, is_chief=True),
                      **{**settings, **loop_settings})
    loop.start_epoch(plan)
    return loop, manager


def test_steps_per_execution_counts_every_step_once(tmp_path):
    model, plan = small_model(steps_per_execution=3), fake_plan([4] * 10)
    loop, manager = logged_loop(tmp_path, "a", plan, log_every=4, model=model, checkpoint_every=4)
    model.fit(batches_of([4] * 10), epochs=1, steps_per_epoch=10, callbacks=[loop], verbose=0)
    # Keras reports steps 3, 6, 9, 10; the loop logs when a multiple of 4 is crossed, and at the last step
    logged = rows(tmp_path / "a.csv")
    assert [int(r["step"]) for r in logged] == [6, 9, 10]
    assert all(float(r["padding_efficiency"]) == 0.75 for r in logged)     # 7.5 real of 10 padded per row
    meter = loop.meter
    assert meter.done["examples"] == 40 and meter.done["padded_tokens"] == 400       # every step, once
    assert meter.timed["examples"] == 7 * 4 and meter.timed["padded_tokens"] == 7 * 40   # steps 1-3 compiled
    real, padded = flops.plan_flops(MODEL_CONFIG, plan, np.full(40, 7), slice(0, 10))
    assert meter.done["flops"] == pytest.approx(padded) and meter.done["real_flops"] == pytest.approx(real)
    assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [6, 9]


def test_window_means_are_exact_and_weighted_by_rows(tmp_path):
    """Two loops on one run: every 4-step window equals the rows-weighted mean of its single steps, which
    is not Keras' running mean since the epoch began."""
    sizes = [4, 12, 8, 4, 16, 4, 8, 12, 4, 8, 16, 4]
    plan, model = fake_plan(sizes), small_model()
    every_step, _ = logged_loop(tmp_path, "a", plan, 1, model)
    every_4, _ = logged_loop(tmp_path, "b", plan, 4, model)
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


def test_a_window_spanning_two_fits_counts_both(tmp_path):
    """Keras restarts its running means at each fit (one per epoch); a log window across the boundary still
    averages every row since the last log."""
    sizes = [4, 8, 4, 8]
    plan, model = fake_plan(sizes), small_model()
    every_step, _ = logged_loop(tmp_path, "a", plan, 1, model, total_steps=8)
    every_3, _ = logged_loop(tmp_path, "b", plan, 3, model, total_steps=8)
    for epoch in range(2):
        if epoch:
            for loop in (every_step, every_3):
                loop.start_epoch(plan)
        model.fit(batches_of(sizes), epochs=1, steps_per_epoch=4, callbacks=[every_step, every_3], verbose=0)
    single = {int(r["step"]): float(r["loss"]) for r in rows(tmp_path / "a.csv")}
    weights = dict(zip(range(1, 9), sizes * 2))
    window = {int(r["step"]): float(r["loss"]) for r in rows(tmp_path / "b.csv")}
    assert sorted(window) == [3, 6, 8]
    expected = np.average([single[s] for s in (4, 5, 6)], weights=[weights[s] for s in (4, 5, 6)])
    assert window[6] == pytest.approx(expected, rel=1e-5)


def test_the_rows_digest_covers_the_steps_done_in_order(tmp_path):
    plan = fake_plan([2, 3, 4])
    whole, split = callbacks.Meter(MODEL_CONFIG, np.full(9, 7)), callbacks.Meter(MODEL_CONFIG, np.full(9, 7))
    for meter in (whole, split):
        meter.start_epoch(plan, 0)
    whole.count(0, 3, 1.0, {})
    split.count(0, 1, 1.0, {})
    split.count(1, 3, 1.0, {})
    assert whole.rows_digest.hexdigest() == split.rows_digest.hexdigest()
    stopped = callbacks.Meter(MODEL_CONFIG, np.full(9, 7))
    stopped.start_epoch(plan, 0)
    stopped.count(0, 2, 1.0, {})       # a run stopped after step 2 did not see the last batch's rows
    assert stopped.rows_digest.hexdigest() != whole.rows_digest.hexdigest()
    assert stopped.done["examples"] == 5


def trained_saver(directory, is_chief, max_to_keep):
    """Checkpoints of a small model that has taken one step."""
    model = small_model()
    model.fit(batches_of([4]), epochs=1, verbose=0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory), max_to_keep=max_to_keep)
    return model, manager, callbacks.Checkpoints(model, manager, is_chief=is_chief)


def test_a_checkpoint_of_non_finite_weights_is_never_written(tmp_path):
    model, manager, saver = trained_saver(tmp_path / "ckpt", is_chief=True, max_to_keep=5)
    saver.save(2)
    model.weights[0].assign(tf.fill(model.weights[0].shape, np.nan))       # the loss before this was finite
    with pytest.raises(Diverged, match=r"the weights or the optimizer state are not all finite after step 4: lower "
                                       r"--learning_rate.*the last checkpoint, ckpt-2, holds finite weights"):
        saver.save(4)
    assert [p.rsplit("/", 1)[1] for p in manager.checkpoints] == ["ckpt-2"]
    with pytest.raises(Diverged, match="the loss became nan at step 5"):
        saver.check_loss(float("nan"), 5)


def test_non_chief_empties_its_scratch_directory(tmp_path):
    _, _, saver = trained_saver(tmp_path / "scratch", is_chief=False, max_to_keep=1)
    saver.save(3)
    saver.save(4)
    assert list((tmp_path / "scratch").iterdir()) == []
