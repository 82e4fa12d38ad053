"""trainer-export: the SavedModel's signatures, its tokens and probabilities against HF's tokenizer
and trainer-predict, loading where transformers cannot be imported, saved_model_cli, and the
command's refusals. One SavedModel (the tiny fine-tuned run's) serves the whole session."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.serving      # make test-serving: CI runs it after make test
pytest.importorskip("tensorflow_text", reason="tensorflow-text is not installed: pip install -e "
                    "'.[serving]' (the test extra has it)")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the SavedModel's ops)

from conftest import MINILM, ROOT, built_once, run_cli  # noqa: E402
from test_errors import assert_refused, snapshot  # noqa: E402
from test_graph_tokenizer import HOSTILE  # noqa: E402
from trainer import hub, predict, serving, serving_checks  # noqa: E402
from trainer import model as model_lib  # noqa: E402
from trainer.config import ExportConfig  # noqa: E402
from trainer.errors import UsageError  # noqa: E402

SAVED_MODEL_CLI = pathlib.Path(sys.executable).parent / "saved_model_cli"


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, one_device_run):
    """trainer-export on the tiny run's export; --max_length=512 is clipped to its 128 positions."""
    def build(root):
        out = root / "sentiment" / "1"
        result = run_cli("export", f"--model_dir={one_device_run[0] / 'export'}", f"--output_dir={out}",
                         "--max_length=512")
        assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
        assert f"wrote {out}" in result.stdout and "max_length 128; float32" in result.stdout
    return built_once(tmp_path_factory, "serving", build) / "sentiment" / "1"


@pytest.fixture(scope="session")
def loaded(saved_model):
    return tf.saved_model.load(str(saved_model))


@pytest.fixture(scope="session")
def export_dir(one_device_run):
    return str(one_device_run[0] / "export")


def texts_of(sample_size: int) -> list[str]:
    from conftest import SAMPLE_CSV
    from trainer.config import SourceConfig
    from trainer.data import readers
    rows = readers.read_rows(SourceConfig(input=str(SAMPLE_CSV)), readers.ReadStats())
    texts = [text for text, _ in rows]
    return texts[:sample_size // 2] + texts[-sample_size // 2:] + HOSTILE


def test_signatures_take_strings(loaded, saved_model):
    serve, tokenize = loaded.signatures["serving_default"], loaded.signatures["tokenize"]
    for signature in (serve, tokenize):
        assert signature.structured_input_signature[1] == {
            "text": tf.TensorSpec([None], tf.string, name="text")}
    assert serve.structured_outputs == {
        "probabilities": tf.TensorSpec([None, 2], tf.float32, name="probabilities"),
        "label": tf.TensorSpec([None], tf.string, name="label")}
    assert tokenize.structured_outputs == {
        "input_ids": tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        "attention_mask": tf.TensorSpec([None, None], tf.int32, name="attention_mask")}
    info = json.loads((saved_model / serving.INFO).read_text())
    assert (info["precision"], info["max_length"], info["labels"]) == ("float32", 128,
                                                                      ["negative", "positive"])


def test_the_saved_graph_tokenizes_as_the_exports_tokenizer(loaded, export_dir):
    texts = texts_of(2000)
    tokens = loaded.signatures["tokenize"](text=tf.constant(texts))
    wanted = hub.load_tokenizer(export_dir)(texts, padding=True, truncation=True, max_length=128,
                                            return_tensors="np")
    assert (tokens["input_ids"].numpy() == wanted["input_ids"]).all()
    assert (tokens["attention_mask"].numpy() == wanted["attention_mask"]).all()


def test_probabilities_match_trainer_predict(loaded, export_dir):
    """trainer.predict.predict (HF tokenizer + TF classifier, batches of 64) within 1e-5."""
    texts = texts_of(1000)
    served = loaded.signatures["serving_default"](text=tf.constant(texts))
    classifier, tokenizer = model_lib.load_export(export_dir), hub.load_tokenizer(export_dir)
    predicted = predict.predict(classifier, tokenizer, texts)
    labels = [label.decode() for label in served["label"].numpy()]
    assert labels == [label for label, _, _ in predicted]
    probabilities = served["probabilities"].numpy().max(axis=1)
    gap = np.abs(probabilities - np.array([p for _, p, _ in predicted]))
    assert gap.max() < 1e-5, gap.max()


def test_an_empty_batch_gives_empty_outputs(loaded):
    served = loaded.signatures["serving_default"](text=tf.constant([], tf.string))
    assert served["probabilities"].shape == (0, 2) and served["label"].shape == (0,)


CLIENT = '''
import json
import sys


class Blocked:
    """Every import of transformers, or of this project, fails."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("transformers", "trainer"):
            raise ImportError(f"{name} is blocked")


sys.meta_path.insert(0, Blocked())
import tensorflow as tf
import tensorflow_text  # registers the tokenizer's ops

try:
    import transformers
    blocked = False
except ImportError:
    blocked = True
model = tf.saved_model.load(sys.argv[1])
texts = tf.constant(json.loads(sys.stdin.read()))
served = model.signatures["serving_default"](text=texts)
tokens = model.signatures["tokenize"](text=texts)
print(json.dumps({"blocked": blocked, "probabilities": served["probabilities"].numpy().tolist(),
                  "input_ids": tokens["input_ids"].numpy().tolist(),
                  "loaded": sorted({name.partition(".")[0] for name in sys.modules}
                                   & {"transformers", "trainer", "tf_keras"})}))
'''


def test_loads_and_runs_where_transformers_cannot_be_imported(loaded, saved_model, tmp_path):
    """TensorFlow and tensorflow-text alone, in a process where `import transformers` fails."""
    (tmp_path / "client.py").write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    texts = texts_of(50)
    result = subprocess.run([sys.executable, "client.py", str(saved_model)],
                            input=json.dumps(texts), capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["blocked"] and answer["loaded"] == []
    here = loaded.signatures["serving_default"](text=tf.constant(texts))["probabilities"].numpy()
    assert np.array_equal(np.array(answer["probabilities"], np.float32), here)
    tokens = loaded.signatures["tokenize"](text=tf.constant(texts))["input_ids"].numpy()
    assert answer["input_ids"] == tokens.tolist()


def test_saved_model_cli_shows_and_runs_it(loaded, saved_model):
    shown = subprocess.run([str(SAVED_MODEL_CLI), "show", "--dir", str(saved_model), "--all"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert ("inputs['text'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)"
            in shown.stdout)
    for output in ("outputs['label']", "outputs['probabilities']", "outputs['input_ids']",
                   "signature_def['tokenize']"):
        assert output in shown.stdout
    ran = subprocess.run([sys.executable, str(ROOT / "scripts" / "saved_model_cli.py"), "run",
                          "--dir", str(saved_model), "--tag_set", "serve", "--signature_def",
                          "serving_default", "--input_exprs", 'text=["good day"]'],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    label = loaded.signatures["serving_default"](text=tf.constant(["good day"]))["label"][0]
    assert f"Result for output key label:\n[{label.numpy()!r}]" in ran.stdout


def test_the_serving_benchmark_runs_end_to_end(saved_model, export_dir, tmp_path):
    """Both contenders, two batch sizes, one timed round each; their probabilities agree."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_throughput", f"--model={export_dir}",
         f"--saved_model={saved_model}", "--batch_sizes=1,3", "--rounds=1",
         "--examples_per_round=3", f"--work_dir={tmp_path / 'work'}",
         f"--output_dir={tmp_path / 'report'}"], cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["rows"]
    assert [(row["batch_size"], row["examples_per_round"]) for row in rows] == [(1, 3), (3, 3)]
    for row in rows:
        assert set(row["examples_per_sec"]) == {"saved_model", "trainer-predict"}
        assert row["ratio"] > 0 and row["max_probability_gap"] < 1e-5
    assert "| 3 |" in (tmp_path / "report" / "results.md").read_text()


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """Staged beside the output and renamed into place: a failure midway leaves no output."""
    module = tf.Module()
    module.serve = tf.function(lambda text: {"echo": text}, input_signature=[serving.TEXT])

    def full_disk(path, obj):
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(serving.storage, "write_json", full_disk)
    with pytest.raises(OSError):
        serving.write(module, {"serving_default": module.serve.get_concrete_function()}, {},
                      str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_help_answers_before_tensorflow_loads():
    result = run_cli("export", "--help")
    assert result.returncode == 0 and result.stderr == "" and "--output_dir" in result.stdout
    probe = ("import runpy, sys\nsys.argv = ['x', '--help']\ntry:\n"
             "    runpy.run_module('trainer.cli.export', run_name='__main__')\n"
             "except SystemExit as e:\n    print('tensorflow' in sys.modules, e.code)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT).stdout.splitlines()[-1] == "False 0"


def test_missing_tensorflow_text_is_one_line(export_dir, tmp_path, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow_text" else find_spec(name, *a))
    with pytest.raises(UsageError, match=r"tensorflow-text is not installed.*\.\[serving\]"):
        serving_checks.for_export(ExportConfig(model_dir=export_dir,
                                               output_dir=str(tmp_path / "o")))


@pytest.fixture(scope="module")
def template(tmp_path_factory, one_device_run, tiny_model_dir, small_prepared):
    """export/ (fine-tuned), model/ (a pretrained encoder), data/ (prepared), run/ (a finished
    run), notes/ (a user's directory)."""
    root = tmp_path_factory.mktemp("export-template")
    shutil.copytree(one_device_run[0] / "export", root / "export")
    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copytree(small_prepared, root / "data")
    (root / "run").mkdir()
    (root / "run" / "run.json").write_text('{"format": 1, "settings": {}}')
    (root / "run" / "metrics.json").write_text('{"accuracy": 0.5}')
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me\n")
    return root


def vocabulary_without_unk(ws):
    shutil.copytree(ws / "export", ws / "nounk")
    (ws / "nounk" / "tokenizer.json").unlink()
    vocab = (ws / "nounk" / "vocab.txt").read_text().splitlines()
    (ws / "nounk" / "vocab.txt").write_text("".join(t + "\n" for t in vocab if t != "[UNK]"))


def whitespace_pre_tokenizer(ws):
    shutil.copytree(ws / "export", ws / "other")
    path = ws / "other" / "tokenizer.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "pre_tokenizer": {"type": "Whitespace"}}))


REFUSALS = {
    "an output that exists": ("{ws}/export", "{ws}/notes", "exists: pass a new directory"),
    "the export itself": ("{ws}/export", "{ws}/export", "is the input --model_dir="),
    "inside the export": ("{ws}/export", "{ws}/export/1", "lies inside the input --model_dir="),
    "inside a training run": ("{ws}/export", "{ws}/run/serving", "lies inside a training run"),
    "inside a prepared dataset": ("{ws}/export", "{ws}/data/1", "lies inside a prepared dataset"),
    "a pretrained encoder": ("{ws}/model", "{ws}/out", "holds no classifier head"),
    "PyTorch-layout weights": (str(MINILM), "{ws}/out", "holds no tf_model.h5"),
    "a directory that is no model": ("{ws}/notes", "{ws}/out", "holds no usable config.json"),
    "a vocabulary without [UNK]": ("{ws}/nounk", "{ws}/out", "cannot encode an unknown word",
                                   vocabulary_without_unk),
    "a tokenizer that is not BERT's": ("{ws}/other", "{ws}/out", "its pre-tokenizer is Whitespace, "
                                       "not BertPreTokenizer: only BERT-style WordPiece tokenizers",
                                       whitespace_pre_tokenizer),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_one_line_and_touches_nothing(case, template, tmp_path):
    model_dir, output_dir, message, *setup = REFUSALS[case]
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    for step in setup:
        step(ws)
    model_dir, output_dir = (path.replace("{ws}", str(ws)) for path in (model_dir, output_dir))
    before = snapshot(tmp_path)
    result = run_cli("export", f"--model_dir={model_dir}", f"--output_dir={output_dir}")
    assert_refused(result.returncode, result.stderr, message, ws)
    assert snapshot(tmp_path) == before
