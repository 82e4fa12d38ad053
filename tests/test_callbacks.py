"""What the loop calls: the meter counts each step once (also with several steps per call) and its windows are
exact rows-weighted means; the logger writes them; checkpoints are never written from non-finite values. The
loop's own decisions (which step logs, validates, saves, stops) are tested in test_train."""
import csv

import numpy as np
import pytest
import tensorflow as tf

from conftest import MODEL_CONFIG, batches_of, fake_plan, small_model
from trainer import callbacks, flops, rundir, train


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
    loop = train.Loop(meter=meter, logger=logger, saver=callbacks.Checkpoints(model, manager, "", 0, keep=100),
                      sums=model.optimizer_step.read_and_reset, **{**settings, **loop_settings})
    loop.start_epoch(plan, plan.steps)
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
    assert meter.done["steps"] == 10 and meter.done["normed_steps"] == 10            # the device's own count
    real, padded = flops.plan_flops(MODEL_CONFIG, plan, np.full(40, 7), slice(0, 10))
    assert meter.done["flops"] == pytest.approx(padded) and meter.done["real_flops"] == pytest.approx(real)
    assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [6, 9, 10]      # and at the last step


def single_steps(model, sizes, seed=0):
    """Each batch's mean loss and accuracy under the model's (fixed) weights."""
    from trainer import step
    found = []
    for x, y in batches_of(sizes, seed):
        logits = model(x, training=False)
        found.append((float(tf.reduce_mean(step.loss_fn(y, logits))),
                      float(tf.reduce_mean(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == y, tf.float32)))))
    return np.asarray(found)


def test_window_means_are_exact_and_weighted_by_rows(tmp_path):
    """With a learning rate of 0 every step sees the same weights: each 4-step window's loss and accuracy are the
    rows-weighted means of its steps' own, as the device summed them (no step is read on the host alone)."""
    sizes = [4, 12, 8, 4, 16, 4, 8, 12, 4, 8, 16, 4]
    plan, model = fake_plan(sizes), small_model(learning_rate=0.0)
    every_4, _ = logged_loop(tmp_path, "b", plan, 4, model)
    model.fit(batches_of(sizes), epochs=1, steps_per_epoch=len(sizes), callbacks=[every_4], verbose=0)
    single, weights = single_steps(model, sizes), np.asarray(sizes, dtype=float)
    logged = rows(tmp_path / "b.csv")
    assert [int(r["step"]) for r in logged] == [4, 8, 12]
    for row in logged:
        window = slice(int(row["step"]) - 4, int(row["step"]))
        for column, key in ((0, "loss"), (1, "accuracy")):
            expected = np.average(single[window, column], weights=weights[window])
            assert float(row[key]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert float(row["grad_norm"]) > 0 and float(row["clipped_fraction"]) == 0


def test_a_window_spanning_two_fits_counts_both(tmp_path):
    """Each epoch is a fit of its own; a log window across the boundary still averages every row since the last
    log."""
    sizes = [4, 8, 4, 8]
    plan, model = fake_plan(sizes), small_model(learning_rate=0.0)
    every_3, _ = logged_loop(tmp_path, "b", plan, 3, model, total_steps=8)
    for epoch in range(2):
        if epoch:
            every_3.start_epoch(plan, 4)
        model.fit(batches_of(sizes), epochs=1, steps_per_epoch=4, callbacks=[every_3], verbose=0)
    single = dict(zip(range(1, 9), [*single_steps(model, sizes)[:, 0]] * 2))
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
    whole.count(0, 3)
    split.count(0, 1)
    split.count(1, 3)
    assert whole.rows_digest.hexdigest() == split.rows_digest.hexdigest()
    stopped = callbacks.Meter(MODEL_CONFIG, np.full(9, 7))
    stopped.start_epoch(plan, 0)
    stopped.count(0, 2)       # a run stopped after step 2 did not see the last batch's rows
    stopped.sync(1.0, dict.fromkeys(callbacks.SUMMED, 0.0))
    assert stopped.rows_digest.hexdigest() != whole.rows_digest.hexdigest()
    assert stopped.done["examples"] == 5


def trained_saver(directory, max_to_keep, resumed=0):
    """Checkpoints of a small model that has taken one step."""
    model = small_model()
    model.fit(batches_of([4]), epochs=1, verbose=0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory), max_to_keep=max_to_keep)
    return model, manager, callbacks.Checkpoints(model, manager, "RUN/checkpoints", resumed, keep=max_to_keep)


def test_a_checkpoint_of_non_finite_weights_is_never_written(tmp_path):
    model, manager, saver = trained_saver(tmp_path / "ckpt", max_to_keep=5)
    assert saver.save(2)
    model.weights[0].assign(tf.fill(model.weights[0].shape, np.nan))       # the loss before this was finite
    assert not saver.save(4)                                                 # a divergence: the loop recovers
    assert [p.rsplit("/", 1)[1] for p in manager.checkpoints] == ["ckpt-2"]


def test_the_checkpoints_a_recovery_may_resume_from(tmp_path):
    """The one resumed from, then each saved since, as many as the manager keeps; a recovery rewinds them."""
    _, manager, saver = trained_saver(tmp_path / "ckpt", max_to_keep=2, resumed=10)
    assert saver.kept == [(10, "RUN/checkpoints")]
    saver.save(20)
    saver.save(30)
    assert saver.kept == [(20, manager.directory), (30, manager.directory)]
    saver.rewind(20)
    assert saver.kept == [(20, manager.directory)] and saver.saved_step == 20


def test_a_recovery_removes_the_checkpoints_of_the_steps_it_trains_again(tmp_path):
    """Resumed from ckpt-10 (ckpt-20 diverged again), the run trains 11-20 anew: a kill before it saves ckpt-20
    again must resume from ckpt-10, as the uninterrupted run goes on from it. The manager forgets them too."""
    directory = tmp_path / "ckpt"
    _, manager, saver = trained_saver(directory, max_to_keep=2)
    saver.save(10)
    saver.save(20)
    saver.rewind(10)
    assert rundir.checkpoint_numbers(str(directory)) == [10]
    assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-10")
    saver.save(20)
    saver.save(30)                                   # the manager keeps 2: ckpt-10 goes in its turn
    assert rundir.checkpoint_numbers(str(directory)) == [30, 20]
    saver.rewind(0)                                  # back to the initial weights: no checkpoint is left
    assert rundir.checkpoint_numbers(str(directory)) == [] and tf.train.latest_checkpoint(str(directory)) is None
    saver.save(10)
    assert tf.train.get_checkpoint_state(str(directory)).all_model_checkpoint_paths == [str(directory / "ckpt-10")]


def test_recovery_passes_over_a_checkpoint_that_diverged_again_within_its_interval(tmp_path):
    path = str(tmp_path / "recoveries.json")
    recovery = callbacks.Recovery(path, "RUN", max_trials=3, checkpoint_every=10, is_chief=True)
    kept = [(10, "d"), (20, "d")]
    assert recovery.choose(27, kept) == (20, "d")
    line = recovery.record(27, "the loss became non-finite at step 27", 20)
    assert line == ("recovery 1/3: the loss became non-finite at step 27; resuming from ckpt-20 with the learning "
                    "rate x0.5")
    assert recovery.choose(29, kept) == (10, "d")          # ckpt-20 diverged again by step 30: the one before it
    recovery.record(29, "why", 10)
    assert recovery.choose(35, kept) == (20, "d")          # ckpt-10 lasted past 20: ckpt-20 is newest again
    assert recovery.choose(15, [(10, "d")]) == (0, None)   # ckpt-10 diverged again within 10 steps: initial weights
    recovery.record(15, "why", 0)
    assert recovery.rate_factor == 0.125 and not recovery.trials_left
    again = callbacks.Recovery(path, "RUN", max_trials=3, checkpoint_every=10, is_chief=True)   # the run's state
    assert again.summary() == recovery.summary() and again.rate_factor == 0.125
    stopped = again.stop(18, "the loss became non-finite at step 18", 0)
    assert str(stopped) == ("the loss became non-finite at step 18: 3 of --recovery_max_trials=3 recoveries spent "
                            "(learning rate x0.125); rerun with --recovery_max_trials=4 (or more) to resume from the "
                            "initial weights at x0.0625 the learning rate, or start afresh with other settings "
                            "(--overwrite_output_dir)")
    assert callbacks.Recovery(path, "RUN", 4, 10, True).stopped == {"step": 18,
                                                                   "why": "the loss became non-finite at step 18"}
