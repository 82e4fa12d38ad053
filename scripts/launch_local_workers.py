#!/usr/bin/env python3
"""Start N trainer-train workers on this machine, on loopback ports, as one MultiWorkerMirroredStrategy cluster.

  python scripts/launch_local_workers.py --num_workers=2 -- --data_dir=D --model=M --output_dir=O ...

Each worker gets TF_CONFIG naming the cluster and its index (worker 0 is the chief) and the
flags after `--` plus --strategy=multi_worker. Output lines are prefixed with the worker. Exits
non-zero, after stopping the others, if any worker fails. On a real cluster, run trainer-train
on every host with its own TF_CONFIG instead (see README).
"""
import dataclasses
import json
import os
import subprocess
import sys
import threading

from absl import flags

from trainer import cli, runtime

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes to start.", lower_bound=1)


def tf_configs(num_workers: int) -> list[str]:
    """One TF_CONFIG per worker: the same loopback cluster, each its own task index."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in runtime.free_ports(num_workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(num_workers)]


def _relay(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[worker {index}] {line}")
        sys.stdout.flush()


def _first_failure(processes: list[subprocess.Popen]) -> int | None:
    """The index of the first process to exit non-zero, as soon as it does; None if all succeed."""
    while any(p.poll() is None for p in processes):
        for index, process in enumerate(processes):
            try:
                if process.wait(timeout=0.5) != 0:
                    return index
            except subprocess.TimeoutExpired:
                pass
    return next((i for i, p in enumerate(processes) if p.returncode != 0), None)


def launch(train_flags: list[str]) -> int:
    """Run the workers to the end; 0 if all succeed, else 1 once the others are stopped."""
    command = [sys.executable, "-m", "trainer.cli.train", *train_flags, "--strategy=multi_worker"]
    workers = []
    for index, tf_config in enumerate(tf_configs(_NUM_WORKERS.value)):
        process = subprocess.Popen(command, env={**os.environ, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        relay = threading.Thread(target=_relay, args=(index, process.stdout), daemon=True)
        relay.start()
        workers.append((process, relay))
    try:      # on a failure or an interrupt (Ctrl-C, SIGTERM) the others are stopped
        failed = _first_failure([process for process, _ in workers])
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.terminate()
    for process, relay in workers:
        process.wait()
        relay.join(timeout=5)
    if failed is not None:
        print(f"error: worker {failed} exited with status {workers[failed][0].returncode}", file=sys.stderr)
        return 1
    return 0


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The launcher's one flag is its own absl flag; the command layer only parses it."""


if __name__ == "__main__":
    cli.run(NoSettings, lambda config, train_flags: sys.exit(launch(train_flags)), __doc__, takes_arguments=True,
            flag_values=flags.FLAGS)
