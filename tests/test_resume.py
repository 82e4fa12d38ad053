"""Reliability, with every fault injected at a known step from inside the process (tests/faults.py): kill -9 and
rerun resumes exactly; SIGTERM saves and exits 0; non-finite weights are never checkpointed; one process per
run directory."""
import csv
import hashlib
import json
import signal

import datasets
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli, start_with_fault, wait_until_ready
from trainer import hub, model as model_lib, rundir
from trainer.data import stream as stream_lib


def train_args(data_dir, model_dir, output_dir, *extra):
    # 512 rows / 8 = 64 steps per epoch, 128 in all
    return [f"--data_dir={data_dir}", f"--model={model_dir}", f"--output_dir={output_dir}", "--strategy=one_device",
            "--per_replica_batch_size=8", "--epochs=2", "--learning_rate=1e-3", "--seed=1", "--log_every_steps=16",
            "--checkpoint_every_steps=16", "--eval_every_steps=32", *extra]


def kill_9(process):
    process.send_signal(signal.SIGKILL)
    process.communicate()


def steps_in(path):
    with open(path) as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_resumes_exactly(tmp_path, small_prepared, no_dropout_model):
    out, ready = tmp_path / "killed", tmp_path / "ready"
    args = train_args(small_prepared, no_dropout_model, out)
    process = start_with_fault("hang", 90, args, ready)    # epoch 2; the last checkpoint is step 80
    wait_until_ready(process, ready)
    kill_9(process)
    assert not (out / "metrics.json").exists()
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-80")

    rerun = run_cli("train", *args)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 80
    assert resumed["global_step"] == 128 and resumed["examples_seen"] == 128 * 8
    # the rerun trained exactly the planned rows from the checkpoint on: nothing twice, nothing skipped
    split = datasets.load_from_disk(small_prepared)["train"]
    plan = stream_lib.plan_batches(stream_lib.lengths_of(split), global_batch_size=8, padding="bucket",
                                   max_length=64, shuffle=True, seed=1, epoch=1, drop_remainder=True)
    expected = plan.rows[(80 - 64) * 8:].astype(np.int64).tobytes()
    assert resumed["worker"]["rows_sha256"] == hashlib.sha256(expected).hexdigest()
    # the killed run's rows past step 80 were dropped, not repeated
    assert steps_in(out / "steps.csv") == list(range(16, 129, 16))
    assert steps_in(out / "validation.csv") == [32, 64, 96, 128]
    # the killed run's checkpoints (64, 80) were rotated out like the rerun's own: only the newest two are left
    assert rundir.checkpoint_numbers(str(out / "checkpoints")) == [128, 112]

    uninterrupted = run_cli("train", *train_args(small_prepared, no_dropout_model, tmp_path / "whole"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert abs(resumed["accuracy"] - whole["accuracy"]) <= 0.01 and resumed["best"]["step"] == whole["best"]["step"]
    a, b = (model_lib.load_export(str(d / "export")) for d in (out, tmp_path / "whole"))
    tokenizer = hub.load_tokenizer(str(out / "export"))
    inputs = dict(tokenizer(["so happy today", "worst day ever", "meh"], padding=True, return_tensors="tf"))
    np.testing.assert_allclose(a(inputs).logits.numpy(), b(inputs).logits.numpy(), atol=1e-4)


@pytest.mark.slow
def test_sigterm_saves_at_once_exits_0_and_resumes(tmp_path, small_prepared, no_dropout_model):
    out = tmp_path / "run"
    args = train_args(small_prepared, no_dropout_model, out, "--max_steps=48")
    process = start_with_fault("sigterm", 40, args)               # 40 is not on the 16-step schedule
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0 and stderr == "", stderr[-2000:]
    assert "stopped by SIGTERM at step 40 of 48" in stdout and not (out / "metrics.json").exists()
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-40")
    rerun = run_cli("train", *args)
    assert rerun.returncode == 0 and json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 40
    # the stopped run's older checkpoint (32) goes in its turn, as in an uninterrupted run
    assert rundir.checkpoint_numbers(str(out / "checkpoints")) == [48, 40]


@pytest.mark.slow
def test_non_finite_weights_are_never_checkpointed(tmp_path, small_prepared, tiny_model_dir):
    """The loss of step 6 is finite (computed before its update) but the weights after it are not. Without a
    recovery trial the run stops in one line naming the rerun that resumes it."""
    out = tmp_path / "run"
    process = start_with_fault("nan_weights", 6, train_args(small_prepared, tiny_model_dir, out,
                                                             "--checkpoint_every_steps=2", "--recovery_max_trials=0"))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2 and stderr.count("\n") == 1, stderr
    assert stderr == ("error: the weights or the optimizer state are not all finite at step 6: rerun with "
                      "--recovery_max_trials=1 (or more) to resume from ckpt-4 at x0.5 the learning rate, or start "
                      "afresh with other settings (--overwrite_output_dir)\n")
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-4")
    reader = tf.train.load_checkpoint(latest)
    for name, _ in tf.train.list_variables(latest):
        value = np.asarray(reader.get_tensor(name))
        if np.issubdtype(value.dtype, np.floating):
            assert np.isfinite(value).all(), name
    assert not (out / "export").exists() and not (out / "metrics.json").exists()


@pytest.mark.slow
def test_one_process_per_run_directory_and_kill_9_frees_it(tmp_path, small_prepared, tiny_model_dir):
    out, ready = tmp_path / "run", tmp_path / "ready"
    args = train_args(small_prepared, tiny_model_dir, out, "--max_steps=40")
    first = start_with_fault("hang", 20, args, ready)
    wait_until_ready(first, ready)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    second = run_cli("train", *args)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(f"error: {out} is in use by process {first.pid} on ")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()} == before
    kill_9(first)
    third = run_cli("train", *args)               # the kernel released the lock with the process
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 16
    assert steps_in(out / "steps.csv") == [16, 32, 40]


def test_evaluate_refuses_labels_the_head_cannot_hold(tmp_path, one_device_run):
    from conftest import write_sentiment140
    path = write_sentiment140(tmp_path / "three.csv", [(0, "bad"), (2, "meh"), (4, "good")])
    export = one_device_run[0] / "export"
    result = run_cli("prepare", f"--input={path}", f"--output_dir={tmp_path / 'data'}", f"--model={export}",
                     "--keep_neutral", "--split_name=test")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("evaluate", f"--model_dir={export}", f"--data_dir={tmp_path / 'data'}")
    assert result.returncode == 2
    assert "has labels ['negative', 'neutral', 'positive'] but the model's head has" in result.stderr
