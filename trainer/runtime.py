"""The process around TensorFlow: importing it quietly, and what the machine and cluster are. No TensorFlow
import at module level: the command layer validates everything before TensorFlow is loaded."""
import glob
import importlib.util
import json
import os
import socket
import sys

from trainer.errors import UsageError


def tpu_attached() -> bool:
    """A TPU VM exposes /dev/accel* (v4+) or /dev/vfio (v2/v3); TPU_NAME names a remote one."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("TPU_NAME"))


def accelerators_present() -> bool:
    """An NVIDIA device node, or a TPU."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or tpu_attached()


def import_tensorflow():
    """Import TensorFlow and look for GPUs once. On a machine without accelerators the C++ start-up lines
    this prints straight to stderr ("Could not find cuda drivers", "failed call to cuInit") say nothing,
    so stderr is closed to them; the process's own errors keep stderr to themselves."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    for name, extra in (("tensorflow", "'.[cpu]' (or '.[gpu]'; TPU VMs: see the README)"), ("tf_keras", "'.[cpu]'")):
        if importlib.util.find_spec(name) is None:
            raise UsageError(f"{name} is not installed: pip install -e {extra}")
    if accelerators_present():
        import tensorflow as tf
        return tf
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def multi_worker_task() -> tuple[int, int]:
    """(workers, this worker's index) from TF_CONFIG, checked before TensorFlow starts; index 0 is the chief."""
    text = os.environ.get("TF_CONFIG")
    if text is None:
        raise UsageError("--strategy=multi_worker needs TF_CONFIG naming the cluster and this task: set it on each "
                         "host, or start local workers with scripts/launch_local_workers.py")
    example = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
    try:
        config = json.loads(text)
        cluster, kind, index = config["cluster"], config["task"]["type"], int(config["task"]["index"])
        jobs = {k: cluster.get(k, []) for k in ("chief", "worker")}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"TF_CONFIG must be JSON like {example}") from None
    for job, addresses in jobs.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise UsageError(f"TF_CONFIG's cluster {job} must be a list of \"host:port\" strings, not "
                             f"{json.dumps(addresses)}: write it as {example}")
    count = len(jobs["chief"]) + len(jobs["worker"])
    if kind not in ("chief", "worker") or not 0 <= index < count:
        raise UsageError(f"TF_CONFIG's task {kind}/{index} is not in its cluster of {count} worker(s)")
    return count, index + (1 if kind == "worker" and "chief" in cluster else 0)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that were free when asked: the kernel picks each, and all are held
    until the last is picked, so they differ. For local clusters and emulators."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
