"""Reliability: kill -9 and rerun resumes exactly; SIGTERM saves and exits 0; NaN stops cleanly; bad input."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import tensorflow as tf

from conftest import train_config
from trainer import hub, model as model_lib, train
from trainer.cli import UsageError
from trainer.data import stream as stream_lib


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
    """The tiny BERT without dropout: training is then a pure function of data order and optimizer state."""
    path = tmp_path_factory.mktemp("no-dropout")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def train_command(data_dir, model_dir, output_dir):
    # 512 rows / 4 = 128 steps per epoch, 256 in all: slow enough to stop mid-epoch
    return [sys.executable, "-m", "trainer.train", f"--data_dir={data_dir}", f"--model={model_dir}",
            f"--output_dir={output_dir}", "--strategy=one_device", "--per_replica_batch_size=4", "--epochs=2",
            "--learning_rate=1e-3", "--seed=1", "--log_every_steps=16", "--checkpoint_every_steps=16",
            "--classifier_dropout=0"]


def start_and_wait_for_checkpoint(command, output_dir, min_step):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        latest = tf.train.latest_checkpoint(os.path.join(output_dir, "checkpoints"))
        if latest and int(latest.rsplit("-", 1)[1]) >= min_step:
            return process, int(latest.rsplit("-", 1)[1])
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint >= {min_step} appeared: {process.communicate()[1][-2000:]}")


def test_kill_9_mid_epoch_then_rerun_resumes_exactly(tmp_path, small_prepared, no_dropout_model):
    out = tmp_path / "killed"
    command = train_command(small_prepared, no_dropout_model, out)
    process, _ = start_and_wait_for_checkpoint(command, out, min_step=160)   # epoch 2, step 32 of 128
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()
    killed_at = int(tf.train.latest_checkpoint(str(out / "checkpoints")).rsplit("-", 1)[1])
    assert 160 <= killed_at < 256, "the first run finished before it was killed"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == killed_at
    assert resumed["global_step"] == 256 and resumed["examples_seen"] == 256 * 4
    # the rerun trained exactly the planned rows from the checkpoint on: nothing twice, nothing skipped
    split = datasets.load_from_disk(small_prepared)["train"]
    plan = stream_lib.plan_batches(stream_lib.lengths_of(split), global_batch_size=4, padding="bucket",
                                   max_length=64, shuffle=True, seed=1, epoch=1, drop_remainder=True)
    expected = plan.rows[(killed_at - 128) * 4:].astype(np.int64).tobytes()
    assert resumed["worker"]["rows_sha256"] == hashlib.sha256(expected).hexdigest()

    uninterrupted = subprocess.run(train_command(small_prepared, no_dropout_model, tmp_path / "whole"),
                                   capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert abs(resumed["accuracy"] - whole["accuracy"]) <= 0.01
    a, b = (model_lib.load_export(str(d / "export")) for d in (out, tmp_path / "whole"))
    tokenizer = hub.load_tokenizer(str(out / "export"))
    inputs = dict(tokenizer(["so happy today", "worst day ever", "meh"], padding=True, return_tensors="tf"))
    np.testing.assert_allclose(a(inputs).logits.numpy(), b(inputs).logits.numpy(), atol=1e-4)


def test_sigterm_saves_at_once_and_exits_0(tmp_path, small_prepared, no_dropout_model):
    out = tmp_path / "run"
    command = train_command(small_prepared, no_dropout_model, out)
    process, seen = start_and_wait_for_checkpoint(command, out, min_step=32)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    saved = int(tf.train.latest_checkpoint(str(out / "checkpoints")).rsplit("-", 1)[1])
    assert saved >= seen and saved % 16 != 0 or saved > seen     # saved at the signal, not only on schedule
    assert "stopped by SIGTERM at step" in stderr and not (out / "metrics.json").exists()


def test_injected_nan_stops_and_keeps_the_last_checkpoint(tmp_path, small_prepared, tiny_model_dir, monkeypatch):
    calls = tf.Variable(0)
    real_loss = model_lib.loss_fn

    def poisoned_loss(labels, logits):      # NaN from the 7th training step on (a constant: gradients stay finite)
        calls.assign_add(1)
        return real_loss(labels, logits) + tf.where(calls >= 7, np.nan, 0.0)
    monkeypatch.setattr(model_lib, "loss_fn", poisoned_loss)
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=r"the loss became nan at step 7: .*ckpt-6 is intact"):
        train.run(train_config(small_prepared, tiny_model_dir, out, checkpoint_every_steps=2))
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-6")
    reader = tf.train.load_checkpoint(latest)
    for name, _ in tf.train.list_variables(latest):
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name
    assert not (out / "export").exists() and not (out / "metrics.json").exists()


def _empty_split_data(tmp_path, tiny_model_dir):
    from conftest import SAMPLE_CSV
    from trainer.config import PrepareConfig
    from trainer.data import prepare, readers
    out = tmp_path / "test-only"
    prepare.prepare(PrepareConfig(source=readers.Source(str(SAMPLE_CSV)), output_dir=str(out), model=tiny_model_dir,
                                  max_length=128, split_name="test"))
    return str(out)


def _old_version(tmp_path, small_prepared):
    old = tmp_path / "old"
    shutil.copytree(small_prepared, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["settings"]["format_version"] = 0
    (old / "manifest.json").write_text(json.dumps(manifest))
    return str(old)


@pytest.mark.parametrize("case, message", [
    ("unprepared", "is not a prepared dataset"),
    ("old_version", "incompatible version"),
    ("missing_model", "does not exist"),
    ("no_weights", "holds no tf_model.h5"),
    ("offline_hub", "cannot reach the model hub .*pass a local directory"),
    ("max_length", "above the 128 positions"),
    ("tpu", "no TPU found"),
    ("gpus", "--num_gpus=2 but 0 GPU"),
    ("profile", "--profile_steps=40,50 lies outside this run's steps 1..32"),
    ("empty_split", "no rows in its 'train' split"),
])
def test_bad_input_is_refused_and_nothing_is_written(case, message, tmp_path, small_prepared, tiny_model_dir,
                                                     monkeypatch):
    data, model_dir, overrides = small_prepared, tiny_model_dir, {}
    if case == "unprepared":
        data = str(tmp_path)
    elif case == "old_version":
        data = _old_version(tmp_path, small_prepared)
    elif case == "missing_model":
        model_dir = str(tmp_path / "no-such-model")
    elif case == "no_weights":
        model_dir = str(tmp_path / "weightless")
        shutil.copytree(tiny_model_dir, model_dir, ignore=shutil.ignore_patterns("*.h5"))
    elif case == "offline_hub":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model_dir = "bert-base-uncased"
    elif case == "max_length":
        overrides = {"max_length": 256}
    elif case == "tpu":
        overrides = {"strategy": "tpu", "tpu": "local"}
    elif case == "gpus":
        overrides = {"strategy": "mirrored", "num_gpus": 2}
    elif case == "profile":
        overrides = {"profile_steps": (40, 50)}
    elif case == "empty_split":
        data = _empty_split_data(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        train.run(train_config(data, model_dir, out, **overrides))
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--flagfile=/no/such/preset.cfg"], "preset.cfg"),
    (["--per_replica_batch_size=0"], "per_replica_batch_size"),
    (["--max_steps=-1"], "max_steps"),
])
def test_cli_bad_flags_are_one_line_exit_2(tmp_path, small_prepared, tiny_model_dir, args, message):
    result = subprocess.run([sys.executable, "-m", "trainer.train", f"--data_dir={small_prepared}",
                             f"--model={tiny_model_dir}", f"--output_dir={tmp_path / 'out'}", *args],
                            capture_output=True, text=True, timeout=120)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: ") and message in last
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_evaluate_refuses_labels_the_head_cannot_hold(tmp_path, one_device_run):
    from conftest import write_sentiment140
    path = write_sentiment140(tmp_path / "three.csv", [(0, "bad"), (2, "meh"), (4, "good")])
    export = one_device_run[0] / "export"
    result = subprocess.run([sys.executable, "-m", "trainer.data.prepare", f"--input={path}",
                             f"--output_dir={tmp_path / 'data'}", f"--model={export}", "--keep_neutral",
                             "--split_name=test"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-m", "trainer.evaluate", f"--model_dir={export}",
                             f"--data_dir={tmp_path / 'data'}"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "has labels ['negative', 'neutral', 'positive'] but the model's head has" in result.stderr
