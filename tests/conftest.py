"""Shared fixtures: a tiny BERT built offline, the shared Sentiment140 sample prepared with it, two logical CPU
devices so MirroredStrategy can be tested without GPUs, and GPUs hidden so CPU facts hold on any host (tests
that need a real GPU are marked `gpu` and start their own processes with the GPUs visible)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import pytest

GPU_ENV = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}   # as the host had it, for `gpu` tests
os.environ["CUDA_VISIBLE_DEVICES"] = ""       # before TensorFlow starts; inherited by every subprocess
# The trainer's cache (calibrations, bucket copies) of this test process and its children, never the user's: a
# test must not read what another machine or a busy hour measured.
os.environ["TRAINER_CACHE"] = tempfile.mkdtemp(prefix="trainer-test-cache-")

from trainer import runtime  # noqa: E402  (TF_USE_LEGACY_KERAS before TensorFlow)

tf = runtime.import_tensorflow()   # quietly, as the commands do (without it the xdist controller's stderr shows TF's)
import tf_keras  # noqa: E402

from trainer import flops  # noqa: E402

# --mixed_precision=auto, the commands' default: on a CPU with bf16 instructions it measures a bf16 step, and under
# the suite's load one run could pick float32 and the run it is compared with bf16. The cache holds float32's
# speed (1.0x) for this CPU, so auto picks float32 on any CPU; the tests of auto pin their own CPU facts and cache.
pathlib.Path(os.environ["TRAINER_CACHE"], flops.CACHE_FILE).write_text(json.dumps({flops.cache_key(
    "step speedup", "bf16"): {"value": 1.0, "load_per_core": 0.0, "measured": "pinned by tests/conftest.py"}}))

from trainer.data.stream import BatchPlan  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
SAMPLE_CSV = SHARED / "data" / "sentiment140_sample.csv"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"

# Must happen before anything touches the devices.
tf.config.set_visible_devices([], "GPU")
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


# Keras-level stand-ins for the loop's tests: a model config for FLOP counts, plans and batches of chosen sizes.
MODEL_CONFIG = types.SimpleNamespace(num_hidden_layers=1, hidden_size=8, intermediate_size=16, vocab_size=50,
                                     max_position_embeddings=16, type_vocab_size=2, num_labels=2)


def fake_plan(sizes, length=10, real_per_row=7.5):
    sizes = np.asarray(sizes)
    return BatchPlan(rows=np.arange(sizes.sum()), examples=sizes, pad_lengths=np.full((len(sizes), 1), length),
                     real_tokens=(sizes * real_per_row).astype(int), num_shards=1, padding="bucket", max_length=length)


def small_model(steps_per_execution=1, learning_rate=0.1):
    """A Dense(2) on 3 features with the trainer's own train step (step.OptimizerStep), as the loop expects."""
    from trainer import step
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.layers.Dense(2)])
    model.build((None, 3))
    model.compile(optimizer=tf_keras.optimizers.legacy.SGD(learning_rate), steps_per_execution=steps_per_execution)
    model.optimizer_step = step.OptimizerStep(model, step.StepSettings(), lambda m, x, training: m(x, training=training))
    model.train_step = model.optimizer_step.train_step
    return model


def batches_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    data = [(rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 2, n).astype(np.int32)) for n in sizes]
    return tf.data.Dataset.from_generator(lambda: iter(data), output_signature=(
        tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None,), tf.int32)))


def write_sentiment140(path, rows):
    """rows: (target, text) pairs -> a file in Sentiment140's own format."""
    import csv
    with open(path, "w", encoding="latin-1", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i, (target, text) in enumerate(rows):
            writer.writerow([target, 1000 + i, "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", f"user{i}", text])
    return str(path)


def start_with_fault(fault, step, args, ready=None, env=None, cwd=None):
    """trainer-train with a fault at a global step (tests/faults.py), in a process of its own."""
    command = [sys.executable, str(ROOT / "tests" / "faults.py"), fault, str(step), str(ready or "-"), "--", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def wait_until_ready(process, ready):
    """The child writes `ready` once it has reached its step (and hangs there); no sleeping and hoping."""
    deadline = time.monotonic() + 600
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the child ended before its fault: {process.communicate()[1][-3000:]}")
        time.sleep(0.05)


def run_cli(command: str, *args, stdin=None, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """One of the commands (prepare, train, evaluate, predict) in a fresh process."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    result = subprocess.run([sys.executable, "-m", f"trainer.cli.{command}", *map(str, args)], input=stdin,
                            capture_output=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
    result.stdout, result.stderr = (result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"))
    return result


def pytest_collection_modifyitems(items):
    """Tests marked slow first: pytest-xdist's worksteal hands out the collection in order, so the long ones
    start at once and the short ones fill in around them, instead of one long test ending the suite alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """The directory `build(path)` writes, built once per test session by whichever pytest-xdist worker asks
    first; the others wait on its lock, then reuse it. Session fixtures are read-only to the tests, so sharing
    them across workers changes only the time (each worker built its own)."""
    import filelock
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    root = tmp_path_factory.getbasetemp()
    root = root.parent / f"shared-{run}" if run else root / "shared"
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)        # what a failed build left
            build(path)
            done.touch()
    return path


def built_run(tmp_path_factory, name: str, config_of) -> tuple[pathlib.Path, dict]:
    """A training run built once per session (built_once): its directory and the stats train.run returned."""
    def build(path):
        from trainer import train
        stats = train.run(config_of(path / "run"))
        (path / "stats.json").write_text(json.dumps(stats))
    path = built_once(tmp_path_factory, name, build)
    return path / "run", json.loads((path / "stats.json").read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, hidden-32 BERT with a 1000-token WordPiece vocabulary built from the shared sample."""
    from trainer import tiny_bert
    from trainer.config import SourceConfig
    from trainer.data import readers
    rows = readers.read_rows(SourceConfig(input=str(SAMPLE_CSV)), readers.ReadStats())
    return str(built_once(tmp_path_factory, "tiny-bert",
                          lambda path: tiny_bert.build(str(path), (t for t, _ in rows), vocab_size=1000)))


def prepare_config(source, output_dir, model, **kwargs):
    from trainer.config import PrepareConfig
    return PrepareConfig(input=str(source), output_dir=str(output_dir), model=str(model), **kwargs)


@pytest.fixture(scope="session")
def tiny_minilm_vocab_model(tmp_path_factory):
    """The tiny BERT (2 layers, hidden 32) with all-MiniLM-L6-v2's tokenizer files: it reads prepared_sample."""
    import transformers
    from trainer import tiny_bert

    def build(path):
        tiny_bert.save(str(path), transformers.AutoTokenizer.from_pretrained(str(MINILM)))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(MINILM / name, path)             # the very files: the data's tokenizer fingerprint
    return str(built_once(tmp_path_factory, "tiny-minilm-vocab", build))


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory):
    """The 20,000-row shared sample, prepared with the real uncased BERT tokenizer at max_length 64."""
    from trainer.data import prepare
    return str(built_once(tmp_path_factory, "prepared-sample", lambda out: prepare.prepare(
        prepare_config(SAMPLE_CSV, out, MINILM, max_length=64))))


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory, tiny_model_dir):
    """640 rows of the sample (train 512 / validation 64 / test 64): fast training tests."""
    from trainer.config import SourceConfig
    from trainer.data import prepare, readers
    def build(path):
        rows = list(readers.read_rows(SourceConfig(input=str(SAMPLE_CSV)), readers.ReadStats()))
        picked = rows[:320] + rows[-320:]   # the sample is sorted by label: take both ends
        path.mkdir()
        csv_path = write_sentiment140(path / "small.csv", [(0 if label == "negative" else 4, text)
                                                           for text, label in picked])
        prepare.prepare(prepare_config(csv_path, path / "prepared", tiny_model_dir, max_length=64))
    return str(built_once(tmp_path_factory, "small", build) / "prepared")


@pytest.fixture(autouse=True)
def _reset_precision_policy():
    yield
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.clear_session()


def train_config(data_dir, model_dir, output_dir, **overrides):
    """A fast config for the tiny model: 16 steps per epoch on small_prepared."""
    from trainer.config import TrainConfig
    settings = dict(data_dir=data_dir, model=model_dir, output_dir=str(output_dir), strategy="one_device",
                    per_replica_batch_size=32, epochs=2, learning_rate=3e-3, warmup_ratio=0.1, log_every_steps=4,
                    checkpoint_every_steps=10, seed=1,
                    mixed_precision="none")   # auto's choice depends on the CPU: tests of it pin the CPU's facts
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def one_device_run(tmp_path_factory, small_prepared, tiny_model_dir):
    """One finished training run (2 epochs of 16 steps, validation every 8 steps, profile of steps 3-4) whose
    outputs several tests read."""
    return built_run(tmp_path_factory, "one-device-run", lambda out: train_config(
        small_prepared, tiny_model_dir, out, profile_steps=(3, 4), eval_every_steps=8))


@pytest.fixture(scope="session")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
    """The tiny BERT without dropout: training is then a pure function of data order and optimizer state."""
    def build(path):
        shutil.copytree(tiny_model_dir, path)
        config = json.loads((path / "config.json").read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (path / "config.json").write_text(json.dumps(config))
    return str(built_once(tmp_path_factory, "no-dropout", build))
