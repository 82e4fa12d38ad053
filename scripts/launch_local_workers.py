#!/usr/bin/env python3
"""Start N trainer-train workers on this machine, on loopback ports, as one MultiWorkerMirroredStrategy cluster.

  python scripts/launch_local_workers.py --num_workers=2 -- --data_dir=D --model=M --output_dir=O ...

Each worker gets TF_CONFIG naming the cluster and its index (worker 0 is the chief) and the
flags after `--` plus --strategy=multi_worker. Output lines are prefixed with the worker. Exits
non-zero, after stopping the others, if any worker fails. On a real cluster, run trainer-train
on every host with its own TF_CONFIG instead (see README).
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_configs(num_workers: int) -> list[str]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(num_workers)]


def _relay(index: int, stream) -> None:
    for line in stream:
        sys.stdout.write(f"[worker {index}] {line}")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_workers", type=int, default=2, help="Worker processes to start (>= 1).")
    parser.add_argument("train_flags", nargs="*", help="trainer-train flags, after --")
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        print("error: --num_workers must be >= 1", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "trainer.cli.train", *args.train_flags, "--strategy=multi_worker"]
    workers = []
    for index, tf_config in enumerate(tf_configs(args.num_workers)):
        process = subprocess.Popen(command, env={**os.environ, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        relay = threading.Thread(target=_relay, args=(index, process.stdout), daemon=True)
        relay.start()
        workers.append((process, relay))
    failed = None
    while failed is None and any(p.poll() is None for p, _ in workers):
        for index, (process, _) in enumerate(workers):
            try:
                if process.wait(timeout=0.5) != 0:
                    failed = index
                    break
            except subprocess.TimeoutExpired:
                pass
    if failed is None:
        failed = next((i for i, (p, _) in enumerate(workers) if p.returncode != 0), None)
    if failed is not None:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
