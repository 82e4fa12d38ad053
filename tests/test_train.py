"""run(config): tiny models trained under each strategy and precision; outputs, export, refusals."""
import csv
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from transformers import TFAutoModelForSequenceClassification, pipeline

from conftest import train_config
from trainer import callbacks, hub, model, train
from trainer.cli import UsageError


def epoch_losses(run_dir):
    with open(os.path.join(run_dir, "epochs.csv")) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def scalar_tags(log_dir):
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["tensors"]) | set(accumulator.Tags()["scalars"])
    return tags


def test_one_device_trains_and_writes_every_output(one_device_run):
    out, stats = one_device_run
    losses = epoch_losses(out)
    assert len(losses) == 2 and losses[1] < losses[0]
    metrics = json.load(open(out / "metrics.json"))
    for key in ("accuracy", "precision", "recall", "f1", "confusion_matrix", "global_step", "examples_seen"):
        assert key in metrics
    assert metrics["global_step"] == 32 and metrics["examples_seen"] == 32 * 32
    assert np.asarray(metrics["confusion_matrix"]).sum() == 64       # the whole test split
    assert metrics["strategy"] == "one_device" and metrics["mixed_precision"] == "none"
    assert metrics["distinct_shapes"] <= 8 and metrics["padding_efficiency"] > 0.8
    assert stats["accuracy"] == metrics["accuracy"]


def test_tensorboard_scalars_profile_and_csv(one_device_run):
    out, _ = one_device_run
    assert set(callbacks.STEP_SCALARS) <= scalar_tags(out / "logs" / "train")
    assert {"epoch_loss", "epoch_accuracy"} <= scalar_tags(out / "logs" / "validation")
    assert glob.glob(str(out / "logs" / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(4, 33, 4))   # step 1 (compilation) is timed apart
    assert all(float(r["examples_per_sec"]) > 0 and 0 < float(r["padding_efficiency"]) <= 1 for r in rows)
    assert float(rows[-1]["learning_rate"]) < float(rows[0]["learning_rate"])   # linear decay


def test_checkpoints_hold_the_last_step(one_device_run):
    out, _ = one_device_run
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-32")
    assert tf.train.load_variable(latest, "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE") == 32


def test_export_reloads_with_identical_logits_and_in_a_pipeline(one_device_run, small_prepared):
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


def test_mirrored_over_two_cpus(tmp_path, small_prepared, tiny_model_dir):
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", strategy="mirrored",
                                   per_replica_batch_size=16, epochs=2))
    assert stats["replicas"] == 2 and stats["global_batch_size"] == 32 and stats["global_step"] == 32
    losses = epoch_losses(tmp_path / "run")
    assert losses[1] < losses[0]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_run(tmp_path, small_prepared, tiny_model_dir, precision):
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", mixed_precision=precision,
                                   epochs=1, max_steps=8))
    assert stats["mixed_precision"] == precision and stats["global_step"] == 8
    assert all(np.isfinite(epoch_losses(tmp_path / "run")))
    weights = TFAutoModelForSequenceClassification.from_pretrained(str(tmp_path / "run" / "export")).weights
    assert {w.dtype for w in weights} == {tf.float32}


def test_xla_on_one_device(tmp_path, small_prepared, tiny_model_dir):
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", xla=True, epochs=1,
                                   steps_per_execution=2, padding="max_length"))
    assert stats["xla"] and stats["global_step"] == 16 and stats["distinct_shapes"] == 1
    assert np.isfinite(epoch_losses(tmp_path / "run")).all()


def test_max_steps_and_max_train_examples(tmp_path, small_prepared, tiny_model_dir):
    stats = train.run(train_config(small_prepared, tiny_model_dir, tmp_path / "run", max_train_examples=128,
                                   epochs=3, max_steps=10))
    assert stats["global_step"] == 10 and stats["examples_seen"] == 320   # 4 steps/epoch, stopped in epoch 3


def test_finished_run_is_not_overwritten(one_device_run, small_prepared, tiny_model_dir):
    out, _ = one_device_run
    before = (out / "metrics.json").read_text()
    with pytest.raises(UsageError, match="holds a finished run.*--overwrite_output_dir"):
        train.run(train_config(small_prepared, tiny_model_dir, out))
    assert (out / "metrics.json").read_text() == before


def test_tokenizer_must_match_the_data(tmp_path, prepared_sample, tiny_model_dir):
    with pytest.raises(UsageError, match="tokenizer differs.*prepare the data with --model"):
        train.run(train_config(prepared_sample, tiny_model_dir, tmp_path / "run"))


def test_overwrite_output_dir_keeps_the_old_run_when_the_new_one_is_refused(one_device_run, tiny_model_dir):
    out, _ = one_device_run
    with pytest.raises(UsageError, match="is not a prepared dataset"):
        train.run(train_config(str(out / "logs"), tiny_model_dir, out, overwrite_output_dir=True))
    assert (out / "metrics.json").exists() and (out / "export" / "tf_model.h5").exists()
