"""Strategy resolution: a closed set of names -> a tf.distribute.Strategy, and who the chief is.

  auto          a TPU if one is attached, else MirroredStrategy over all GPUs when more than
                one, else one device
  one_device    the first GPU, or the CPU
  mirrored      the first --num_gpus GPUs (all by default); without GPUs, every logical CPU
                device (how the tests run it)
  multi_worker  MultiWorkerMirroredStrategy over the cluster in TF_CONFIG
  tpu           TPUStrategy on --tpu (a name, or "local" on a TPU VM)
"""
import glob
import json
import os

import tensorflow as tf
from absl import logging

from trainer.cli import UsageError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def tpu_attached() -> bool:
    """A TPU VM exposes /dev/accel* (v4+) or /dev/vfio (v2/v3); TPU_NAME names a remote one."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("TPU_NAME"))


def resolve_strategy(name: str, tpu: str | None = None, num_gpus: int | None = None) -> tf.distribute.Strategy:
    """Call before anything else touches TensorFlow: multi-worker and TPU set the runtime up."""
    if name not in STRATEGIES:
        raise UsageError(f"unknown --strategy={name}: use one of {', '.join(STRATEGIES)}")
    gpus = [f"/gpu:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]  # keeps TF uninitialised
    if num_gpus is not None and num_gpus > len(gpus):
        raise UsageError(f"--num_gpus={num_gpus} but {len(gpus)} GPU(s) are visible: lower --num_gpus "
                         "(or check CUDA_VISIBLE_DEVICES and the tensorflow[and-cuda] install)")
    if name == "auto":
        if tpu_attached():
            name, tpu = "tpu", tpu or os.environ.get("TPU_NAME", "local")
        else:
            name = "mirrored" if len(gpus[:num_gpus]) > 1 else "one_device"
    if name == "tpu":
        strategy = _tpu_strategy(tpu or "local")
    elif name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy=multi_worker needs TF_CONFIG naming the cluster and this task: set it on "
                             "each host, or start local workers with scripts/launch_local_workers.py")
        _check_tf_config(os.environ["TF_CONFIG"])
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        devices = gpus[:num_gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    logging.info("strategy %s: %d replica(s)", strategy_name(strategy), strategy.num_replicas_in_sync)
    return strategy


def _check_tf_config(text: str) -> None:
    try:
        config = json.loads(text)
        config["cluster"], config["task"]["type"], config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise UsageError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
                         '"task": {"type": "worker", "index": 0}}') from None


def _tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError):
        raise UsageError(f"no TPU found at --tpu={tpu}: run on a TPU VM with tensorflow-tpu installed, "
                         "or choose another --strategy") from None
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The --strategy name of a resolved strategy (auto resolved)."""
    for name, kind in (("tpu", tf.distribute.TPUStrategy), ("multi_worker", tf.distribute.MultiWorkerMirroredStrategy),
                       ("mirrored", tf.distribute.MirroredStrategy), ("one_device", tf.distribute.OneDeviceStrategy)):
        if isinstance(strategy, kind):
            return name
    return type(strategy).__name__


def worker_count_and_index(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(number of input pipelines, this one's index): workers for multi-worker, else (1, 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        workers = resolver.cluster_spec().as_dict()
        count = sum(len(workers.get(kind, [])) for kind in ("chief", "worker"))
        index = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in workers else 0)
        return count, index
    return 1, 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one task that writes summaries, checkpoints, metrics and exports."""
    return worker_count_and_index(strategy)[1] == 0
