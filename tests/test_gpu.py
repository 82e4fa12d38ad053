"""Tests that need a real GPU (`make test-gpu`); skipped where none is visible. The rest of the suite hides the
GPUs (conftest), so these start trainer-train in a fresh process with the host's GPUs visible again."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import GPU_ENV, run_cli

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_env():
    """The host's environment with its GPUs visible, and how many TensorFlow sees."""
    if GPU_ENV["CUDA_VISIBLE_DEVICES"] == "" or shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU visible (no nvidia-smi, or CUDA_VISIBLE_DEVICES is empty)")
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    if not any(line.startswith("GPU ") for line in listed.splitlines()):
        pytest.skip("no GPU visible (nvidia-smi lists none)")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if GPU_ENV["CUDA_VISIBLE_DEVICES"] is not None:
        env["CUDA_VISIBLE_DEVICES"] = GPU_ENV["CUDA_VISIBLE_DEVICES"]
    seen = subprocess.run([sys.executable, "-c", "import trainer, tensorflow as tf; "
                           "print(len(tf.config.list_physical_devices('GPU')))"], capture_output=True, text=True,
                          env=env)
    count = int(seen.stdout.strip().splitlines()[-1]) if seen.returncode == 0 else 0
    assert count > 0, "nvidia-smi lists GPUs but TensorFlow sees none: install the gpu extra (make test-gpu does)"
    return env, count


def test_mirrored_fp16_xla_bucket_training_on_the_gpus(gpu_env, tmp_path, small_prepared, tiny_model_dir):
    env, count = gpu_env
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "trainer.cli.train", f"--data_dir={small_prepared}",
                             f"--model={tiny_model_dir}", f"--output_dir={out}", "--strategy=mirrored",
                             "--mixed_precision=fp16", "--xla", "--padding=bucket", "--per_replica_batch_size=16",
                             "--max_steps=24", "--log_every_steps=4"], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicas"] == count and metrics["strategy"] == "mirrored"
    assert metrics["mixed_precision"] == "fp16" and metrics["xla"] and metrics["distinct_shapes"] <= 8
    with open(out / "steps.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 6 and np.isfinite(losses).all()          # the loss is computed in float32
    check = run_cli("predict", f"--model_dir={out / 'export'}", "a lovely day", env=env)
    assert check.returncode == 0 and check.stdout.strip().split("\t")[0] in ("negative", "positive")
