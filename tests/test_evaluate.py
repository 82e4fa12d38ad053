"""Metrics, and trainer-evaluate on a prepared split and on a raw Sentiment140 file."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_sentiment140
from trainer import evaluate


def test_binary_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    predictions = np.array([0, 1, 0, 1, 1, 0, 1])
    m = evaluate.classification_metrics(labels, predictions, ["negative", "positive"])
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75) and m["per_class"]["negative"]["f1"] == pytest.approx(2 / 3)
    assert "accuracy 0.7143" in evaluate.format_table(m)


def test_three_classes_use_macro_averages():
    m = evaluate.classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]),
                                        ["negative", "neutral", "positive"])
    assert m["recall"] == pytest.approx((1 + 1 + 0) / 3) and m["examples"] == 3


def run_cli(module, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, input=stdin)


def test_evaluate_prepared_split_matches_training_metrics(one_device_run, small_prepared, tmp_path):
    out, stats = one_device_run
    result = run_cli("trainer.evaluate", f"--model_dir={out / 'export'}", f"--data_dir={small_prepared}",
                     "--split=test", f"--output={tmp_path / 'm.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == pytest.approx(stats["accuracy"]) and metrics["examples"] == 64
    assert "confusion (rows: true, columns: predicted)" in result.stdout


def test_evaluate_raw_sentiment140_file_drops_neutral(one_device_run, tmp_path):
    out, _ = one_device_run
    path = write_sentiment140(tmp_path / "testdata.manual.csv",
                              [(4, "love it"), (0, "hate it"), (2, "it is a phone"), (4, "so good")])
    result = run_cli("trainer.evaluate", f"--model_dir={out / 'export'}", f"--input={path}",
                     f"--output={tmp_path / 'm.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dropped {'neutral': 1}" in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["examples"] == 3


def test_evaluate_bad_model_dir_is_one_line(tmp_path):
    result = run_cli("trainer.evaluate", f"--model_dir={tmp_path / 'nope'}", f"--data_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model directory")
