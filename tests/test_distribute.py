"""Strategy resolution: every branch on CPU (mirrored over the 2 logical CPUs from conftest)."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from trainer import distribute, runtime
from trainer.errors import UsageError


def test_one_device():
    strategy = distribute.resolve_strategy("one_device")
    assert distribute.strategy_name(strategy) == "one_device" and strategy.num_replicas_in_sync == 1
    assert distribute.worker_count_and_index(strategy) == (1, 0)


def test_mirrored_over_two_logical_cpus():
    strategy = distribute.resolve_strategy("mirrored")
    assert distribute.strategy_name(strategy) == "mirrored" and strategy.num_replicas_in_sync == 2
    with strategy.scope():
        variable = tf.Variable(1.0)
    assert len(strategy.experimental_local_results(variable)) == 2


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_per_replica_cuts_each_step_into_replicas_and_micro_batches_keeping_static_shapes(micro_batches):
    """A worker's step of 12 rows over 2 replicas and K micro-batches: each replica gets [K, 6 / K, length],
    its share of the rows, with every dimension static (TPUs compile one program per shape)."""
    strategy = distribute.resolve_strategy("mirrored")
    rows = tf.reshape(tf.range(12 * 4), (12, 4))
    dataset = tf.data.Dataset.from_tensors(({"input_ids": rows}, tf.range(12))).repeat(2)
    batches = distribute.per_replica(dataset, strategy, 1, micro_batches)
    features, labels = next(iter(batches))
    expected = (micro_batches, 6 // micro_batches, 4) if micro_batches > 1 else (6, 4)
    parts = strategy.experimental_local_results(features["input_ids"])
    assert [tuple(p.shape) for p in parts] == [expected] * 2
    assert sorted(tf.concat([tf.reshape(p, [-1, 4]) for p in parts], 0)[:, 0].numpy().tolist()) == list(
        range(0, 48, 4))                                        # every row once
    specs = batches.element_spec[0]["input_ids"]
    assert all(spec.shape.is_fully_defined() for spec in getattr(specs, "_value_specs", [specs]))


def test_auto_without_accelerators_is_one_device(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert isinstance(distribute.resolve_strategy("auto"), tf.distribute.OneDeviceStrategy)


def test_auto_with_a_tpu_attached_goes_to_tpu(monkeypatch):
    monkeypatch.setattr(runtime, "tpu_attached", lambda: True)
    with pytest.raises(UsageError, match="no TPU found at --tpu=local"):   # tried the TPU branch
        distribute.resolve_strategy("auto")


def test_tpu_without_a_tpu_is_one_line_error():
    with pytest.raises(UsageError, match="no TPU found at --tpu=my-tpu.*choose another --strategy"):
        distribute.resolve_strategy("tpu", tpu="my-tpu")


def test_more_gpus_than_present():
    with pytest.raises(UsageError, match="--num_gpus=2 but 0 GPU"):
        distribute.resolve_strategy("mirrored", num_gpus=2)


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="needs TF_CONFIG.*launch_local_workers"):
        distribute.resolve_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UsageError, match="TF_CONFIG must be JSON"):
        distribute.resolve_strategy("multi_worker")


def test_multi_worker_with_tf_config_in_a_fresh_process():
    """MultiWorkerMirroredStrategy must be made before TensorFlow starts, so in its own process."""
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{runtime.free_ports(1)[0]}"]}, "task": {"type": "worker", "index": 0}}
    code = ("import trainer; from trainer import distribute; s = distribute.resolve_strategy('multi_worker'); "
            "print(distribute.strategy_name(s), s.num_replicas_in_sync, distribute.worker_count_and_index(s))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "multi_worker 1 (1, 0)"
