"""The storage layer: atomic local outputs that follow the umask, overlap and writability checks, run-directory
locks, and the bucket path end to end against a real GCS API on loopback (gcp-storage-emulator)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import run_cli, start_with_fault, wait_until_ready, write_sentiment140
from trainer import rundir, runtime, storage
from trainer.errors import UsageError


def test_write_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "m.json"
    storage.write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        storage.write_json(str(target), {"a": object()})       # fails while serialising: nothing written
    with pytest.raises(IsADirectoryError):
        storage.write_bytes(str(tmp_path), b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"] and json.loads(target.read_text()) == {"a": 1}


def test_staged_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with storage.staged_dir(str(target)) as staged:
        (open(os.path.join(staged, "a"), "w")).write("1")
    with pytest.raises(RuntimeError):
        with storage.staged_dir(str(target)) as staged:
            (open(os.path.join(staged, "a"), "w")).write("2")
            raise RuntimeError("half way")
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        with storage.staged_dir(str(tmp_path / "out")) as staged:
            storage.write_json(os.path.join(staged, "manifest.json"), {})
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "out" / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_overlap_relations(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "raw.csv").write_text("x")
    inputs = {"--data_dir": str(tmp_path / "data"), "--input": str(tmp_path / "raw.csv"), "--model": "bert-base-uncased"}
    for output, relation in ((tmp_path / "data", "is"), (tmp_path / "data" / "x", "lies inside"), (tmp_path, "holds"),
                             (tmp_path / "raw.csv", "is")):
        with pytest.raises(UsageError, match=f"{relation} the input"):
            storage.check_no_overlap(str(output), "--output_dir", inputs)
    storage.check_no_overlap(str(tmp_path / "other"), "--output_dir", inputs)          # a sibling is fine


def test_one_lock_per_run_directory(tmp_path):
    first = rundir.FileLock(str(tmp_path / "run"))
    with pytest.raises(UsageError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
        rundir.FileLock(str(tmp_path / "run"))
    first.release()
    rundir.FileLock(str(tmp_path / "run")).release()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """gcp-storage-emulator on a free loopback port, with a bucket `bkt`; yields the env that points gcsfs at it."""
    port = runtime.free_ports(1)[0]
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    process = subprocess.Popen([emulator, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory", "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:                               # ready when its health endpoint answers
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as response:
                if response.read() == b"OK":
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("the storage emulator did not start")
            time.sleep(0.05)
    env = {"STORAGE_EMULATOR_HOST": url, "TRAINER_CACHE": str(tmp_path_factory.mktemp("cache"))}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    storage.filesystem("gs://bkt")[0].mkdir("bkt")
    yield env
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.update({key: value})
    process.terminate()
    process.wait()


def test_bucket_files_and_lease(gcs):
    storage.write_json("gs://bkt/t/m.json", {"a": 1})
    assert storage.read_json("gs://bkt/t/m.json") == {"a": 1} and storage.exists("gs://bkt/t/m.json")
    lease = rundir.BucketLock("gs://bkt/t/run")
    with pytest.raises(UsageError, match=f"gs://bkt/t/run is in use by process {os.getpid()}"):
        rundir.BucketLock("gs://bkt/t/run")            # its holder is alive
    lease.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.write_json("gs://bkt/t/run/.lock", {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "-",
                                                 "renewed": time.time()})
    rundir.BucketLock("gs://bkt/t/run").release()      # a dead holder on this host: taken over


@pytest.mark.slow
def test_prepare_train_kill_resume_evaluate_through_a_bucket(gcs, tmp_path, tiny_model_dir):
    """The issue's end-to-end path; nothing local may appear under ./gs: (the working directory is tmp_path)."""
    env = {**os.environ, **gcs}
    raw = write_sentiment140(tmp_path / "raw.csv", [(0, "awful day"), (4, "lovely day"), (0, "so sad"),
                                                    (4, "great news")] * 60)
    prepared = run_cli("prepare", f"--input={raw}", f"--model={tiny_model_dir}", "--output_dir=gs://bkt/data",
                       "--max_length=32", env=gcs, cwd=tmp_path)
    assert prepared.returncode == 0 and prepared.stderr == "", prepared.stderr[-2000:]
    train_args = ["--data_dir=gs://bkt/data", f"--model={tiny_model_dir}", "--output_dir=gs://bkt/run",
                  "--strategy=one_device", "--per_replica_batch_size=8", "--epochs=2", "--checkpoint_every_steps=10",
                  "--log_every_steps=10", "--eval_every_steps=20"]       # 192 rows / 8 = 24 steps per epoch
    ready = tmp_path / "ready"
    process = start_with_fault("hang", 25, train_args, ready, env=env, cwd=tmp_path)
    wait_until_ready(process, ready)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not storage.exists("gs://bkt/run/metrics.json") and storage.exists("gs://bkt/run/checkpoints/checkpoint")

    rerun = run_cli("train", *train_args, env=gcs, cwd=tmp_path)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr[-3000:]
    metrics = storage.read_json("gs://bkt/run/metrics.json")
    assert metrics["resumed_from_step"] == 20 and metrics["global_step"] == 48
    assert storage.exists("gs://bkt/run/export/tf_model.h5") and storage.exists("gs://bkt/run/best/best.json")
    assert storage.exists("gs://bkt/run/validation.csv") and not storage.exists("gs://bkt/run/.lock")

    evaluated = run_cli("evaluate", "--model_dir=gs://bkt/run/export", "--data_dir=gs://bkt/data",
                        "--output=gs://bkt/eval.json", env=gcs, cwd=tmp_path)
    assert evaluated.returncode == 0 and evaluated.stderr == "", evaluated.stderr[-2000:]
    assert storage.read_json("gs://bkt/eval.json")["accuracy"] == pytest.approx(metrics["accuracy"])
    assert not (tmp_path / "gs:").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw.csv", "ready"]
