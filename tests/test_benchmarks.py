"""The throughput benchmark runs end to end (tiny model, two steps) and reports every field; its flag errors are
one line."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

FIELDS = {"contender", "max_length", "precision", "xla", "batch_tokens", "global_batch_size", "steps",
          "examples_per_sec", "mean_rows_per_step", "real_tokens_per_sec", "padded_tokens_per_sec",
          "padding_efficiency", "step_time_ms_median", "step_time_ms_p90", "distinct_shapes", "compile_seconds",
          "compile_seconds_per_shape", "model_flops_per_sec", "model_flops_per_sec_real", "peak_flops_per_sec",
          "peak_source", "mfu", "mfu_real", "step_ms", "step_lengths", "speedup"}


def benchmark(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "benchmarks.padding_throughput", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_padding_throughput_smoke(tmp_path, tiny_model_dir):
    result = benchmark(f"--model={tiny_model_dir}", "--steps=2", "--warmup_steps=1", "--max_lengths=32", "--precisions=none",
                       "--xla=false", "--peak_tflops=0.5", f"--work_dir={tmp_path / 'data'}",
                       f"--output_dir={tmp_path / 'report'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    rows = report["rows"]
    # every contender (other settings add the same contenders again: the float32 baseline is measured first)
    assert sorted(r["contender"] for r in rows) == sorted(("full", "batch", "bucket", "equal tokens", "ideal",
                                                           "packed"))
    for row in rows:
        assert set(row) == FIELDS, set(row) ^ FIELDS
        assert row["max_length"] == 32 and row["xla"] is False and row["steps"] == len(row["step_ms"]) >= 1
        assert row["peak_flops_per_sec"] == 5e11 and row["peak_source"] == "flag"
        assert 0 < row["mfu_real"] <= row["mfu"] and 0 < row["padding_efficiency"] <= 1
        assert row["model_flops_per_sec_real"] <= row["model_flops_per_sec"]
        assert max(row["step_lengths"]) <= 32 and row["distinct_shapes"] >= 1
        assert (row["batch_tokens"] is None) == (row["contender"] in ("full", "batch", "bucket"))
    baseline = next(r for r in rows if r["contender"] == "full" and r["precision"] == "none")
    assert baseline["speedup"] == 1.0 and baseline["padding_efficiency"] < 1 and baseline["step_lengths"] == [32, 32]
    assert report["settings"]["steps"] == 2 and "cores" in report["settings"]["machine"]
    assert "| full | none | False |" in (tmp_path / "report" / "results.md").read_text()
    assert (tmp_path / "report" / "throughput.png").exists()


def test_the_float32_baseline_is_measured_first_whatever_is_asked():
    from benchmarks import padding_throughput as bench
    bench.FLAGS(["benchmark", "--precisions=bf16,none", "--xla=true,false"])
    try:
        assert bench.matrix() == [("none", False), ("bf16", True), ("bf16", False), ("none", True)]
    finally:
        bench.FLAGS.unparse_flags()


@pytest.mark.parametrize("flag, message", [
    ("--steps=0", "flag --steps=0: 0 is not a positive integer"),
    ("--global_batch_size=-5", "flag --global_batch_size=-5: -5 is not a positive integer"),
    ("--precisions=none,fp8", "takes none, fp16, bf16"),
    ("--max_lengths=64,abc", "takes lengths from 8 to 512"),
])
def test_bad_flags_are_one_line(tmp_path, flag, message):
    result = benchmark(flag, f"--output_dir={tmp_path / 'report'}", timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr and not (tmp_path / "report").exists()


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "report").write_text("")
    result = benchmark(f"--output_dir={tmp_path / 'report'}", timeout=300)
    assert result.returncode == 2 and result.stderr == f"error: --output_dir={tmp_path / 'report'} is a file: pass a directory\n"


@pytest.mark.slow
def test_accumulation_smoke(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "benchmarks.accumulation", f"--model={tiny_model_dir}",
                             "--max_length=16", "--micro_batch=2", "--micro_batches=2", "--rounds=1",
                             "--memory_rounds=1", "--memory_steps=1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("  2 rows x 2 micro-batches: peak RSS ") for line in lines), lines[-8:]
    assert any(line.startswith("  4 rows x 1: peak RSS ") for line in lines), lines[-8:]
    assert any("accumulated / plain = " in line for line in lines), lines[-8:]


@pytest.mark.slow
def test_host_sync_smoke(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "benchmarks.host_sync", f"--model={tiny_model_dir}",
                             f"--work_dir={tmp_path / 'data'}", "--max_length=32", "--batch_size=8", "--steps=4",
                             "--rounds=1"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for name in ("every step", "at boundaries", "4 per call"):
        assert any(line.startswith(f"  {name}: ") and "x reading every step" in line for line in lines), lines[-6:]
