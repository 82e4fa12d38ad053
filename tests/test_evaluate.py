"""The strategy-independent scorer, and trainer-evaluate on a prepared split and on a raw file."""
import json

import numpy as np
import pytest

from conftest import run_cli, write_sentiment140
from trainer import metrics


def test_scorer_gives_the_same_metrics_on_one_device_and_mirrored(one_device_run, small_prepared):
    """Sums all-reduced over replicas: the same numbers whatever the strategy, and equal to a plain prediction."""
    import tensorflow as tf
    from trainer import distribute, hub, model
    from trainer.data import prepare
    from trainer.data import stream as stream_lib
    out, _ = one_device_run
    tokenizer = hub.load_tokenizer(str(out / "export"))
    split = prepare.open_prepared(small_prepared).load()["test"]
    plan = stream_lib.plan_batches(stream_lib.lengths_of(split), padding="bucket", max_length=64, global_batch_size=10)
    results = []
    for name in ("one_device", "mirrored"):
        strategy = distribute.resolve_strategy(name)
        with strategy.scope():
            classifier = model.load_export(str(out / "export"))
        dataset = stream_lib.batches(split, plan, classifier, tokenizer)
        results.append(metrics.Scorer(classifier, strategy, ["negative", "positive"]).score(
            distribute.per_replica(dataset, strategy, 1)))
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5) and results[0]["examples"] == 64
    logits = np.concatenate([classifier(x).logits.numpy() for x, _ in stream_lib.batches(split, plan, classifier, tokenizer)])
    labels = np.asarray(split["label"])[plan.rows]
    expected = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy().mean()
    assert results[0]["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_evaluate_prepared_split_matches_training_metrics(one_device_run, small_prepared, tmp_path):
    out, stats = one_device_run
    result = run_cli("evaluate", f"--model_dir={out / 'export'}", f"--data_dir={small_prepared}", "--split=test",
                     f"--output={tmp_path / 'm.json'}")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    metrics_json = json.loads((tmp_path / "m.json").read_text())
    assert metrics_json["accuracy"] == pytest.approx(stats["accuracy"]) and metrics_json["examples"] == 64
    assert "confusion (rows: true, columns: predicted)" in result.stdout


def test_evaluate_raw_sentiment140_file_drops_neutral(one_device_run, tmp_path):
    out, _ = one_device_run
    path = write_sentiment140(tmp_path / "testdata.manual.csv",
                              [(4, "love it"), (0, "hate it"), (2, "it is a phone"), (4, "so good")])
    result = run_cli("evaluate", f"--model_dir={out / 'export'}", f"--input={path}", f"--output={tmp_path / 'm.json'}")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert "dropped {'neutral': 1}" in result.stdout and "not held-out" not in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["examples"] == 3


def test_evaluate_warns_when_the_file_is_the_training_source(one_device_run, small_prepared):
    out, _ = one_device_run
    source = json.loads(open(f"{small_prepared}/manifest.json").read())["source"]["path"]
    result = run_cli("evaluate", f"--model_dir={out / 'export'}", f"--input={source}")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert "is the file this model was trained from" in result.stdout and "not held-out" in result.stdout


def test_evaluate_with_packing_gives_the_unpacked_metrics(one_device_run, small_prepared):
    from trainer import evaluate
    from trainer.config import EvaluateConfig
    export = str(one_device_run[0] / "export")
    bucket, packed = (evaluate.evaluate(EvaluateConfig(model_dir=export, data_dir=small_prepared,
                                                       split="test", batch_size=8, padding=padding))
                      for padding in ("bucket", "pack"))
    assert packed["confusion_matrix"] == bucket["confusion_matrix"] and packed["examples"] == 64
    assert packed["loss"] == pytest.approx(bucket["loss"], rel=1e-5)
