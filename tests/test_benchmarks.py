"""The throughput benchmark runs end to end (tiny model, two steps) and reports every field the issue names."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

FIELDS = ("padding", "max_length", "xla", "precision", "global_batch_size", "steps", "examples_per_sec",
          "real_tokens_per_sec", "padded_tokens_per_sec", "padding_efficiency", "step_time_ms_median",
          "step_time_ms_p90", "distinct_shapes", "compile_seconds", "speedup_vs_full", "fraction_of_ideal")


@pytest.mark.slow
def test_padding_throughput_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.padding_throughput", "--model_size=tiny", "--steps=2", "--warmup_steps=1",
         "--interleave=1", "--max_lengths=64", "--pipeline_epochs=1", f"--work_dir={tmp_path / 'data'}",
         f"--output_dir={tmp_path / 'report'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    rows = report["rows"] if isinstance(report, dict) else report
    assert {row["padding"] for row in rows} >= {"max_length", "batch", "bucket"}
    for row in rows:
        assert set(FIELDS) <= set(row), set(FIELDS) - set(row)
    assert (tmp_path / "report" / "results.md").exists() and (tmp_path / "report" / "throughput.png").exists()
