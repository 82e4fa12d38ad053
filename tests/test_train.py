"""run(config): tiny models trained under each strategy and precision; validation, best weights, early stopping,
per-step windows, outputs, export, refusals."""
import csv
import glob
import json
import re
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from transformers import TFAutoModelForSequenceClassification, pipeline

from conftest import MODEL_CONFIG, batches_of, fake_plan, run_cli, small_model, train_config
from trainer import callbacks, flops, hub, model, storage, train
from trainer.errors import UsageError


def csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def window_losses(run_dir):
    return [float(row["loss"]) for row in csv_rows(os.path.join(run_dir, "steps.csv"))]


def scalars(log_dir):
    """tag -> [(step, value)], read with TensorBoard's own EventAccumulator."""
    found = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            found.setdefault(tag, []).extend((e.step, float(tf.make_ndarray(e.tensor_proto)))
                                             for e in accumulator.Tensors(tag))
    return found


def test_one_device_trains_and_writes_every_output(one_device_run):
    out, stats = one_device_run
    assert len(window_losses(out)) == 8
    metrics = json.load(open(out / "metrics.json"))
    for key in ("accuracy", "precision", "recall", "f1", "loss", "confusion_matrix", "global_step", "examples_seen",
                "best", "exported", "seconds", "train_seconds", "recoveries"):
        assert key in metrics
    assert metrics["max_grad_norm"] == 1.0 and metrics["gradient_accumulation_steps"] == 1
    assert metrics["grad_norm"] > 0 and 0 <= metrics["clipped_fraction"] <= 1 and metrics["recoveries"] == []
    assert metrics["global_step"] == 32 and metrics["examples_seen"] == 32 * 32
    assert np.asarray(metrics["confusion_matrix"]).sum() == 64       # the whole test split
    assert metrics["strategy"] == "one_device" and metrics["mixed_precision"] == "none"   # as configured
    assert metrics["distinct_shapes"] <= 8 and metrics["padding_efficiency"] > 0.8
    assert stats["accuracy"] == metrics["accuracy"] and metrics["exported"] == "best"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < metrics["mfu_real"] < metrics["mfu"] < 1 and metrics["model_flops_per_sec"] > 0
    assert metrics["peak_source"] and metrics["precision_reason"] == "--mixed_precision=none"
    with open(out / "steps.csv") as f:
        assert all(float(row["mfu"]) > 0 for row in csv.DictReader(f) if row["mfu"])
    identity = json.load(open(out / "run.json"))["settings"]
    assert identity["per_replica_batch_size"] == 32 and identity["replicas"] == 1 and identity["seed"] == 1


def test_tensorboard_step_scalars_validation_profile_and_csv(one_device_run):
    out, _ = one_device_run
    train_scalars = scalars(out / "logs" / "train")
    assert set(callbacks.STEP_SCALARS) <= set(train_scalars)
    assert [step for step, _ in train_scalars["loss"]] == list(range(4, 33, 4))   # the global step, in order
    validation = scalars(out / "logs" / "validation")
    assert {tag: [s for s, _ in values] for tag, values in validation.items()} == \
        {tag: [8, 16, 24, 32] for tag in ("loss", "accuracy", "f1")}
    assert [int(r["step"]) for r in csv_rows(out / "validation.csv")] == [8, 16, 24, 32]
    assert glob.glob(str(out / "logs" / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    rows = csv_rows(out / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(4, 33, 4))
    assert all(float(r["examples_per_sec"]) > 0 and 0 < float(r["padding_efficiency"]) <= 1 for r in rows)
    assert float(rows[-1]["learning_rate"]) < float(rows[0]["learning_rate"])   # linear decay


def test_export_holds_exactly_the_best_validation_weights(one_device_run):
    out, stats = one_device_run
    validation = csv_rows(out / "validation.csv")
    best_row = max(validation, key=lambda r: (float(r["accuracy"]), -int(r["step"])))   # the first best
    assert stats["best"] == {"step": int(best_row["step"]), "metric": "accuracy", "value": float(best_row["accuracy"])}
    assert json.loads((out / "best" / "best.json").read_text()) == {**stats["best"],
                                                                    "run_id": json.loads((out / "run.json").read_text())["run_id"]}
    tokenizer = hub.load_tokenizer(str(out / "export"))
    inputs = dict(tokenizer(["what a great day", "this is awful", "meh"], padding=True, return_tensors="tf"))
    exported = TFAutoModelForSequenceClassification.from_pretrained(str(out / "export"))
    best = TFAutoModelForSequenceClassification.from_pretrained(str(out / "export"))   # same architecture ...
    tf.train.Checkpoint(model=best).restore(tf.train.latest_checkpoint(str(out / "best"))).expect_partial()
    np.testing.assert_array_equal(exported(inputs).logits.numpy(), best(inputs).logits.numpy())   # ... best weights
    last = TFAutoModelForSequenceClassification.from_pretrained(str(out / "export"))
    tf.train.Checkpoint(model=last).restore(tf.train.latest_checkpoint(str(out / "checkpoints"))).expect_partial()
    if stats["best"]["step"] != 32:
        assert not np.array_equal(exported(inputs).logits.numpy(), last(inputs).logits.numpy())


def test_checkpoints_hold_the_last_step(one_device_run):
    out, _ = one_device_run
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-32")
    assert tf.train.load_variable(latest, "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE") == 32


def test_export_reloads_in_a_pipeline(one_device_run):
    out, _ = one_device_run
    export = str(out / "export")
    reloaded = TFAutoModelForSequenceClassification.from_pretrained(export)
    tokenizer = hub.load_tokenizer(export)
    inputs = dict(tokenizer(["what a great day", "this is awful"], padding=True, return_tensors="tf"))
    restored = model.build_classifier(export, ["negative", "positive"])    # same weights, other loader path
    np.testing.assert_array_equal(reloaded(inputs).logits.numpy(), restored(inputs).logits.numpy())
    # dtype=None: transformers 4.57's pipeline() otherwise looks the default dtype up on torch, absent here
    classify = pipeline("text-classification", model=export, framework="tf", dtype=None)
    assert classify("what a great day")[0]["label"] in {"negative", "positive"}


@pytest.mark.slow
def test_validation_every_25_steps_over_two_epochs(tmp_path, small_prepared, tiny_model_dir):
    """2 epochs of 51 steps (255 rows, batch 5), validation every 25 steps across the epoch's end."""
    out = tmp_path / "run"
    stats = train.run(train_config(small_prepared, tiny_model_dir, out, per_replica_batch_size=5, eval_every_steps=25,
                                   log_every_steps=25, checkpoint_every_steps=50, learning_rate=1e-3,
                                   max_train_examples=255))
    assert stats["global_step"] == 102
    validation = scalars(out / "logs" / "validation")
    assert [step for step, _ in validation["accuracy"]] == [25, 50, 75, 100, 102]   # and at the end


def test_early_stopping(tmp_path, small_prepared, tiny_model_dir):
    """With a learning rate too small to change anything, validation never improves after its first point."""
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", learning_rate=1e-12,
                                   eval_every_steps=2, early_stopping_patience=2))
    assert stats["stopped_early_at"] == 6 and stats["global_step"] == 6 and stats["best"]["step"] == 2
    assert [int(r["step"]) for r in csv_rows(tmp_path / "run" / "validation.csv")] == [2, 4, 6]


def test_a_run_within_its_limits(tmp_path, small_prepared, tiny_model_dir):
    """--max_train_examples=128 (4 steps per epoch), --max_steps=10 (in epoch 3), --max_length under the data's
    (rows truncated) and --export=last, in one run."""
    out = tmp_path / "run"
    stats = train.run(train_config(small_prepared, tiny_model_dir, out, max_train_examples=128, epochs=3,
                                   max_steps=10, max_length=16, export="last"))
    assert stats["global_step"] == 10 and stats["examples_seen"] == 320 and stats["truncated_rows"] > 0
    assert stats["exported"] == "last"
    assert [int(r["step"]) for r in csv_rows(out / "validation.csv")] == [4, 8, 10]   # validated at the end too
    trainer_json = json.loads((out / "export" / "trainer.json").read_text())
    assert trainer_json["weights"] == "last" and trainer_json["global_step"] == 10


def test_a_run_is_the_same_whether_its_calibration_was_cached_or_measured(tmp_path, small_prepared, tiny_model_dir,
                                                                         monkeypatch):
    """With a cold cache, --mixed_precision=auto on a CPU with bf16 instructions first measures a bf16 train step
    and the matrix-product rate (random inputs, new layers). The run seeds after that, so its dropout and new head
    are those of a run that found both cached. (The step measures for real; its result is pinned below 1.1x, so
    both runs train in float32 on any CPU.)"""
    monkeypatch.setattr(storage, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(flops, "cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(flops, "load_per_core", lambda: 0.0)        # a quiet machine: nothing measured again
    measure, measured_steps = flops.MEASURES["step speedup"], []
    monkeypatch.setitem(flops.MEASURES, "step speedup", lambda precision: measured_steps.append(measure(precision))
                        or 1.0)
    config = lambda name: train_config(small_prepared, tiny_model_dir, tmp_path / name, max_steps=4,
                                       mixed_precision="auto")
    measured = train.run(config("measured"))
    cached = train.run(config("cached"))
    assert len(measured_steps) == 1 and "1.00x float32's" in measured["precision_reason"]
    assert "cached" not in measured["peak_source"] and "calibrated: cached" in cached["peak_source"]
    assert cached["weights_sha256"] == measured["weights_sha256"]


@pytest.mark.slow
def test_the_tiny_model_learns(tmp_path, small_prepared, no_dropout_model):
    """It fits its 512 training rows (lr 1e-3, 10 epochs: the window loss falls below half its first value)."""
    train.run(train_config(small_prepared, no_dropout_model, tmp_path / "run", epochs=10, learning_rate=1e-3,
                           log_every_steps=16, embedding_update="dense"))     # from scratch: every row, every step
    losses = window_losses(tmp_path / "run")
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_mirrored_over_two_cpus_matches_one_device(tmp_path, small_prepared, no_dropout_model):
    """Two replicas of 16 rows compute what one device does with 32 (up to float summation order)."""
    runs = {}
    for strategy, per_replica in (("one_device", 32), ("mirrored", 16)):
        runs[strategy] = train.run(train_config(small_prepared, no_dropout_model, tmp_path / strategy,
                                                strategy=strategy, per_replica_batch_size=per_replica))
    assert runs["mirrored"]["replicas"] == 2 and runs["mirrored"]["global_batch_size"] == 32
    assert runs["mirrored"]["global_step"] == 32 and runs["mirrored"]["worker"] == runs["one_device"]["worker"]
    np.testing.assert_allclose(window_losses(tmp_path / "mirrored"), window_losses(tmp_path / "one_device"),
                               rtol=1e-3)


@pytest.mark.slow
def test_packed_token_sized_batches_under_mirrored_with_xla_shapes(tmp_path, small_prepared, tiny_model_dir):
    """--padding=pack with --batch_tokens over two replicas: one shape, tweets counted, the export a plain
    classifier that a pipeline loads."""
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", strategy="mirrored",
                                   padding="pack", batch_tokens=512, epochs=1))
    assert stats["distinct_shapes"] == 1 and stats["padding_efficiency"] > 0.97
    assert stats["examples_seen"] > stats["global_step"] * 16        # 8 packed rows per replica, >1 tweet each
    assert np.isfinite(window_losses(tmp_path / "run")).all() and stats["examples"] == 64
    classify = pipeline("text-classification", model=str(tmp_path / "run" / "export"), framework="tf", dtype=None)
    assert classify("what a great day")[0]["label"] in {"negative", "positive"}


def test_token_sized_batches_under_mirrored(tmp_path, small_prepared, tiny_model_dir):
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", strategy="mirrored",
                                   batch_tokens=256, epochs=1))
    assert stats["batch_tokens"] == 256 and stats["distinct_shapes"] <= 8 and stats["global_batch_size"] is None
    assert 480 <= stats["examples_seen"] <= 512 and np.isfinite(window_losses(tmp_path / "run")).all()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_run(tmp_path, small_prepared, tiny_model_dir, precision):
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", mixed_precision=precision,
                                   epochs=1, max_steps=8))
    assert stats["mixed_precision"] == precision and stats["global_step"] == 8
    assert all(np.isfinite(window_losses(tmp_path / "run")))
    weights = TFAutoModelForSequenceClassification.from_pretrained(str(tmp_path / "run" / "export")).weights
    assert {w.dtype for w in weights} == {tf.float32}


@pytest.mark.slow
def test_xla_on_one_device(tmp_path, small_prepared, tiny_model_dir):
    """Packed rows (one shape: one compilation) and 2 micro-batches per step, compiled with XLA."""
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", xla=True, epochs=1,
                                   steps_per_execution=2, padding="pack", per_replica_batch_size=8,
                                   gradient_accumulation_steps=2))
    assert stats["xla"] and stats["global_step"] >= 8 and stats["distinct_shapes"] == 1
    assert np.isfinite(window_losses(tmp_path / "run")).all()


def test_finished_run_is_not_overwritten(one_device_run, small_prepared, tiny_model_dir):
    out, _ = one_device_run
    before = (out / "metrics.json").read_text()
    with pytest.raises(UsageError, match="holds a finished run.*--overwrite_output_dir"):
        train.run(train_config(small_prepared, tiny_model_dir, out))
    assert (out / "metrics.json").read_text() == before


def test_tokenizer_must_match_the_data(tmp_path, prepared_sample, tiny_model_dir):
    with pytest.raises(UsageError, match="tokenizer differs.*prepare the data with --model"):
        train.run(train_config(prepared_sample, tiny_model_dir, tmp_path / "run"))


def test_overwrite_output_dir_keeps_the_old_run_when_the_new_one_is_refused(one_device_run, tiny_model_dir, tmp_path):
    out, _ = one_device_run
    with pytest.raises(UsageError, match="is not a prepared dataset"):
        train.run(train_config(str(tmp_path), tiny_model_dir, out, overwrite_output_dir=True))
    assert (out / "metrics.json").exists() and (out / "export" / "tf_model.h5").exists()


@pytest.mark.slow
def test_the_command_prints_progress_lines_without_a_terminal(tmp_path, small_prepared, tiny_model_dir):
    result = run_cli("train", f"--data_dir={small_prepared}", f"--model={tiny_model_dir}",
                     f"--output_dir={tmp_path / 'run'}", "--strategy=one_device", "--max_steps=20",
                     "--log_every_steps=10", "--eval_every_steps=10")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    progress = [line.split("] ", 1)[1] for line in result.stdout.splitlines() if "] step " in line]
    assert [line.split()[1] for line in progress] == ["10/20", "20/20"]
    assert all(re.search(r" grad_norm \d+\.\d{3}  \d+\.\d examples/s  MFU \d+\.\d%  ETA ", line)
               for line in progress), progress
    assert "epoch 1/2: steps 1-16," in result.stdout and "epoch 2/2: steps 17-20," in result.stdout   # global steps


DIVERGING = dict(per_replica_batch_size=16, mixed_precision="fp16", learning_rate=1.0, warmup_ratio=0.0,
                 max_train_examples=1024, max_steps=40, checkpoint_every_steps=8, log_every_steps=4,
                 eval_every_steps=20, recovery_max_trials=8)


@pytest.mark.slow
def test_a_real_divergence_is_recovered_and_the_run_finishes(tmp_path, prepared_sample, tiny_minilm_vocab_model,
                                                             capsys):
    """fp16 at a learning rate of 1.0 diverges within ~10 steps: the run resumes from its newest checkpoint (or
    the initial weights) at half the rate, as often as it takes, and finishes every planned step with finite
    weights; each recovery is said, recorded in recoveries.json and metrics.json, and drawn in TensorBoard. A
    kill after a recovery keeps the lowered rate; the finished run is refused like any finished run."""
    out, config = tmp_path / "run", train_config(prepared_sample, tiny_minilm_vocab_model, tmp_path / "run",
                                                 **DIVERGING)
    first_recovery = train.recover

    def recover_then_stop(run, loop):
        first_recovery(run, loop)
        loop.request_stop()               # killed (SIGTERM) right after the first recovery
    train.recover = recover_then_stop
    try:
        stopped = train.run(config)
    finally:
        train.recover = first_recovery
    assert stopped["interrupted"] and len(stopped["recoveries"]) == 1 and stopped["rate_factor"] == 0.5
    stats = train.run(config)
    out_text = capsys.readouterr().out
    assert stats["global_step"] == 40 and stats["recoveries"][0] == stopped["recoveries"][0]
    assert "recovery 1/8: the " in out_text and "with the learning rate x0.5" in out_text
    recoveries = json.loads((out / "recoveries.json").read_text())["recoveries"]
    assert recoveries == stats["recoveries"] == json.loads((out / "metrics.json").read_text())["recoveries"]
    assert stats["rate_factor"] == 0.5 ** len(recoveries)
    model.load_export(str(out / "export"))                     # refuses non-finite weights
    assert "recovery_rate_factor" in scalars(out / "logs" / "train")
    resumed_at = stopped["global_step"]
    first_after = next(row for row in csv_rows(out / "steps.csv") if int(row["step"]) > resumed_at)
    assert float(first_after["learning_rate"]) <= 0.5 * (1 - int(first_after["step"]) / 40) + 1e-6   # kept
    with pytest.raises(UsageError, match="holds a finished run"):
        train.run(config)


@pytest.mark.slow
def test_without_trials_a_divergence_stops_in_one_line_and_more_trials_resume_it(tmp_path, small_prepared,
                                                                                 tiny_model_dir, capsys):
    """A loss above --loss_upper_bound at step 1, no trial: the run stops naming what resumes it; the same command
    is refused as it stands (touching nothing); with a trial (and a sane bound: both may change) it resumes at
    half the rate and finishes."""
    from test_run_state import snapshot
    from trainer.errors import Diverged
    out = tmp_path / "run"
    settings = dict(max_steps=6, checkpoint_every_steps=2, recovery_max_trials=0, loss_upper_bound=0.01)
    with pytest.raises(Diverged) as diverged:
        train.run(train_config(small_prepared, tiny_model_dir, out, **settings))
    assert str(diverged.value) == (
        "the loss passed --loss_upper_bound at step 1: rerun with --recovery_max_trials=1 (or more) to resume from "
        "the initial weights at x0.5 the learning rate, or start afresh with other settings (--overwrite_output_dir)")
    before = snapshot(out)
    with pytest.raises(UsageError, match=r"stopped diverged \(the loss passed --loss_upper_bound at step 1\): rerun "
                                         r"with --recovery_max_trials=1"):
        train.run(train_config(small_prepared, tiny_model_dir, out, **settings))
    assert snapshot(out) == before
    capsys.readouterr()
    stats = train.run(train_config(small_prepared, tiny_model_dir, out, **{**settings, "recovery_max_trials": 1,
                                                                           "loss_upper_bound": 100.0}))
    assert "recovery 1/1: the loss passed --loss_upper_bound at step 1; resuming from the initial weights with the " \
           "learning rate x0.5" in capsys.readouterr().out
    assert stats["global_step"] == 6 and stats["rate_factor"] == 0.5 and stats["recoveries"][0]["resumed_from"] == 0


class Recorder:
    """Stands in for each part the loop calls, recording (step, what) in call order."""

    def __init__(self, events, what, improves=lambda step: False):
        self.events, self.what, self.improves = events, what, improves
        self.without_improvement, self.best = 0, type("Best", (), {"step": 0})()

    def log(self, step, window, optimizer):
        self.events.append((step, self.what))

    def validate(self, step):
        self.events.append((step, self.what))
        self.without_improvement = 0 if self.improves(step) else self.without_improvement + 1

    def save(self, step):
        self.events.append((step, self.what))
        return True


def recorded_loop(events, total_steps, improves=lambda step: False, **settings):
    model, plan = small_model(settings.pop("steps_per_execution", 1)), fake_plan([4] * total_steps)
    loop = train.Loop(total_steps=total_steps, meter=callbacks.Meter(MODEL_CONFIG, np.full(plan.rows.size, 7)),
                      logger=Recorder(events, "log"), validation=Recorder(events, "validate", improves),
                      saver=Recorder(events, "save"), sums=model.optimizer_step.read_and_reset, **settings)
    loop.start_epoch(plan, total_steps)
    return loop, model


def fit(loop, model, steps):
    model.fit(batches_of([4] * steps), epochs=1, steps_per_epoch=steps, callbacks=[loop], verbose=0)


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_the_loop_decides_what_happens_at_each_step_in_one_order(steps_per_execution):
    """log every 2, validate every 3, save every 4, and at the last step a log: each when a multiple is
    crossed (a call of 4 steps crosses several at once), in the order log, validate, save."""
    events = []
    loop, model = recorded_loop(events, 12, log_every=2, eval_every=3, checkpoint_every=4,
                                steps_per_execution=steps_per_execution)
    fit(loop, model, 12)
    if steps_per_execution == 1:
        expected = [(2, "log"), (3, "validate"), (4, "log"), (4, "save"), (6, "log"), (6, "validate"), (8, "log"),
                    (8, "save"), (9, "validate"), (10, "log"), (12, "log"), (12, "validate"), (12, "save")]
    else:   # Keras calls back after steps 4, 8, 12
        expected = [(4, "log"), (4, "validate"), (4, "save"), (8, "log"), (8, "validate"), (8, "save"),
                    (12, "log"), (12, "validate"), (12, "save")]
    assert events == expected
    assert loop.step == 12 and loop.stopped_early_at is None and not loop.stopping


def test_the_loop_stops_early_after_patience_and_on_request():
    events = []
    loop, model = recorded_loop(events, 12, log_every=100, eval_every=2, checkpoint_every=100, patience=2,
                                improves=lambda step: step == 2)
    fit(loop, model, 12)
    assert loop.stopped_early_at == 6 and loop.step == 6            # validations at 2 (best), 4, 6: stop
    assert [step for step, what in events if what == "validate"] == [2, 4, 6]

    events.clear()
    loop, model = recorded_loop(events, 12, log_every=100, eval_every=100, checkpoint_every=100)
    stop_after = loop.after_step

    def after_step(step):
        if step == 5:
            loop.request_stop()          # as the SIGTERM handler does
        stop_after(step)
    loop.after_step = after_step
    fit(loop, model, 12)
    assert loop.step == 5 and loop.sigterm and events == [(5, "save")]   # saved at once, then stopped


def test_a_resumed_loop_whose_patience_was_spent_stops_at_once():
    events = []
    loop, _ = recorded_loop(events, 12, log_every=2, eval_every=2, checkpoint_every=4, patience=2,
                            resumed_from_step=8)
    assert loop.stopped_early_at is None        # a recorder's count starts at 0: patience not spent
    validation = Recorder(events, "validate")
    validation.without_improvement = 3
    loop = train.Loop(total_steps=12, log_every=2, eval_every=2, checkpoint_every=4, meter=loop.meter, saver=loop.saver,
                      sums=loop.sums, validation=validation, patience=2, resumed_from_step=8)
    assert loop.stopped_early_at == 8 and loop.stopping
