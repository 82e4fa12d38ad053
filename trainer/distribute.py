"""Strategy resolution: a closed set of names -> a tf.distribute.Strategy, and who the chief is.

  auto          a TPU if one is attached, else MirroredStrategy over all GPUs when more than
                one, else one device
  one_device    the first GPU, or the CPU
  mirrored      the first --num_gpus GPUs (all by default); without GPUs, every logical CPU
                device (how the tests run it)
  multi_worker  MultiWorkerMirroredStrategy over the cluster in TF_CONFIG
  tpu           TPUStrategy on --tpu (a name, or "local" on a TPU VM)
"""
import os

import tensorflow as tf
from absl import logging

from trainer import runtime
from trainer.config import STRATEGIES
from trainer.errors import UsageError


def resolve_strategy(name: str, tpu: str | None = None, num_gpus: int | None = None) -> tf.distribute.Strategy:
    """Call before anything else touches TensorFlow: multi-worker and TPU set the runtime up."""
    if name not in STRATEGIES:
        raise UsageError(f"unknown --strategy={name}: use one of {', '.join(STRATEGIES)}")
    gpus = [f"/gpu:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]  # keeps TF uninitialised
    if num_gpus is not None and num_gpus > len(gpus):
        raise UsageError(f"--num_gpus={num_gpus} but {len(gpus)} GPU(s) are visible: lower --num_gpus "
                         "(or check CUDA_VISIBLE_DEVICES and the tensorflow[and-cuda] install)")
    if name == "auto":
        if tpu or runtime.tpu_attached():        # --tpu names one: never ignored
            name, tpu = "tpu", tpu or os.environ.get("TPU_NAME", "local")
        else:
            name = "mirrored" if len(gpus[:num_gpus]) > 1 else "one_device"
    if name == "tpu":
        strategy = _tpu_strategy(tpu or "local")
    elif name == "multi_worker":
        runtime.multi_worker_task()      # TF_CONFIG names the cluster and this task
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored" and gpus:
        strategy = tf.distribute.MirroredStrategy(gpus[:num_gpus])
    elif name == "mirrored":   # CPU devices: plain reductions (collective ops would gain nothing here)
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")],
                                                  cross_device_ops=tf.distribute.ReductionToOneDevice())
    else:
        strategy = tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    logging.info("strategy %s: %d replica(s)", strategy_name(strategy), strategy.num_replicas_in_sync)
    return strategy


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
    """(number of input pipelines, this one's index; index 0 is the chief, the one that writes): the workers of
    TF_CONFIG for multi-worker, else (1, 0)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return runtime.multi_worker_task()
    return 1, 0


def per_replica(dataset: tf.data.Dataset, strategy: tf.distribute.Strategy, num_workers: int,
                micro_batches: int = 1):
    """This worker's batches as a distributed dataset: each batch (this worker's share of a global batch, of
    any size) is cut into equal parts, one per local replica, so token-sized batches distribute too; with
    micro_batches = K > 1 each replica's part is cut again into [K, rows / K, ...] (one optimizer step)."""
    local = strategy.num_replicas_in_sync // num_workers
    parts = [n for n in (local, micro_batches) if n > 1]
    if parts:
        def split(features, labels):
            return tf.nest.map_structure(lambda t: tf.reshape(t, tf.concat([parts, [-1], tf.shape(t)[1:]], 0)),
                                         (features, labels))
        dataset = dataset.map(split)
        if local > 1:
            dataset = dataset.unbatch()
    return strategy.distribute_datasets_from_function(lambda context: dataset)
