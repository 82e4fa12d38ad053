"""A real 2-worker MultiWorkerMirroredStrategy run on loopback, two processes, via the launcher."""
import glob
import hashlib
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest

from conftest import ROOT
from trainer.data import stream as stream_lib


def expected_rows_digest(split, shard_index, epochs=2, global_batch_size=32, seed=1):
    digest, lengths = hashlib.sha256(), stream_lib.lengths_of(split)
    for epoch in range(epochs):
        plan = stream_lib.plan_batches(lengths, global_batch_size=global_batch_size, padding="bucket", max_length=64,
                                       shuffle=True, seed=seed, epoch=epoch, drop_remainder=True, num_shards=2)
        digest.update(plan.shard_rows(shard_index).astype(np.int64).tobytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_workers_on_loopback(tmp_path, small_prepared, tiny_model_dir):
    """MultiWorkerMirroredStrategy with gradient accumulation: each worker's rows are its shard of the
    unaccumulated plan's global batches, and both end with the same weights."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "launch_local_workers.py"), "--num_workers=2", "--",
         f"--data_dir={small_prepared}", f"--model={tiny_model_dir}", f"--output_dir={out}",
         "--per_replica_batch_size=8", "--gradient_accumulation_steps=2", "--epochs=2", "--learning_rate=3e-3",
         "--seed=1", "--log_every_steps=4", "--checkpoint_every_steps=10", "--mixed_precision=none"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summaries = {}
    for line in result.stdout.splitlines():
        prefix, _, text = line.partition("] ")
        if text.startswith('{"global_step"'):
            summaries[int(prefix.split()[-1])] = json.loads(text)
    assert sorted(summaries) == [0, 1]
    # same model on both workers, after the same number of steps
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]
    # 2 workers x 2 micro-batches of 8 rows: the global batch of 32, 512 rows / 32 for 2 epochs
    assert summaries[0]["global_step"] == summaries[1]["global_step"] == 32
    # each worker trained exactly its planned shard; the shards are disjoint and cover the split
    split = datasets.load_from_disk(small_prepared)["train"]
    for k in (0, 1):
        assert summaries[k]["worker"] == {"index": k, "count": 2, "rows_sha256": expected_rows_digest(split, k)}
    for epoch in range(2):
        plan = stream_lib.plan_batches(stream_lib.lengths_of(split), global_batch_size=32, padding="bucket",
                                       max_length=64, shuffle=True, seed=1, epoch=epoch, num_shards=2)
        rows = [set(plan.shard_rows(k).tolist()) for k in (0, 1)]
        assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(len(split)))
    # only the chief wrote outputs; the other worker's scratch checkpoints are gone
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["worker"]["index"] == 0 and np.isfinite(metrics["accuracy"])
    writers = {path.split(".")[-3] for path in glob.glob(str(out / "logs" / "*" / "events.out.tfevents.*"))}
    assert len(writers) == 1                                  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
    assert (out / "export" / "tf_model.h5").exists()
    assert [p for p in scratch.rglob("*") if p.is_file()] == []


def test_launcher_reports_a_failed_worker(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "launch_local_workers.py"), "--num_workers=2",
                             "--", f"--data_dir={tmp_path / 'missing'}", "--model=m", f"--output_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "exited with status 2" in result.stderr
    assert "is not a prepared dataset" in result.stdout
