"""Model FLOPs against a hand count, the peak table, the override, and the calibration cache."""
import json

import pytest
import transformers

from trainer import flops, storage

TINY = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               num_labels=2, vocab_size=100)
# By hand: Q, K, V, O 4 x (32*32 + 32) = 4224; feed-forward in 32*64 + 64 = 2112, out 64*32 + 32 = 2080;
# two LayerNorms 2 x (32 + 32) = 128; layer 8544. Pooler 32*32 + 32 = 1056; classifier 32*2 + 2 = 66.
TINY_PARAMS = 8544 + 1056 + 66


def test_flops_per_token_is_the_hand_count():
    assert flops.non_embedding_params(TINY) == TINY_PARAMS == 9666
    # 6 N + 12 L H T at T = 16: 6 * 9666 + 12 * 1 * 32 * 16
    assert flops.flops_per_token(TINY, 16) == 57996 + 6144


def test_the_count_matches_the_keras_model_without_its_embeddings():
    model = transformers.TFBertForSequenceClassification(TINY)
    model.build_in_name_scope()
    counted = sum(int(w.shape.num_elements()) for w in model.weights if "/embeddings/" not in w.name)
    assert counted == TINY_PARAMS


def test_padded_and_real_flops():
    per_token = {t: flops.flops_per_token(TINY, t) for t in (4, 8, 16)}
    # two steps: 2 rows padded to 16, then 3 rows padded to 8
    assert flops.padded_flops(TINY, [2, 3], [16, 8]) == 2 * 16 * per_token[16] + 3 * 8 * per_token[8]
    # real lengths: each sequence at its own length
    assert flops.sequence_flops(TINY, [16, 4, 8]) == 16 * per_token[16] + 4 * per_token[4] + 8 * per_token[8]
    assert flops.mfu(25.0, 100.0) == 0.25


@pytest.mark.parametrize("name, precision, tflops, source", [
    ("NVIDIA A100-SXM4-40GB", "bf16", 312, "table: A100 bf16"),
    ("NVIDIA A100-SXM4-40GB", "none", 156, "table: A100 none"),
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5, "table: H100 bf16"),
    ("NVIDIA H100 PCIe", "fp16", 756, "table: H100 PCIE fp16"),
    ("NVIDIA H200", "bf16", 989.5, "table: H200 bf16"),
    ("NVIDIA L4", "bf16", 121, "table: L4 bf16"),
    ("Tesla V100-SXM2-16GB", "fp16", 125, "table: V100 fp16"),
    ("Tesla T4", "fp16", 65, "table: T4 fp16"),
    ("TPU v4-8", "bf16", 275, "table: TPU V4 bf16"),
    ("TPU v5litepod-8", "bf16", 197, "table: TPU V5E bf16"),
    ("TPU v5p-8", "bf16", 459, "table: TPU V5P bf16"),
    ("TPU v6e-8", "bf16", 918, "table: TPU V6E bf16"),
])
def test_table(name, precision, tflops, source):
    assert flops.peak_flops(precision, name) == (tflops * 1e12, source)


@pytest.mark.parametrize("name, precision", [("Tesla T4", "bf16"), ("NVIDIA L40S", "bf16"), ("cpu", "none")])
def test_unknown_devices_and_precisions_are_not_in_the_table(name, precision):
    assert flops.table_peak(name, precision) is None


@pytest.fixture
def calibrations(tmp_path, monkeypatch):
    """The cache in tmp_path; every measurement counted (matmul: 1e11 FLOP/s; bf16 steps 1.5x float32's)."""
    calls = []
    monkeypatch.setattr(storage, "CACHE", str(tmp_path))
    monkeypatch.setitem(flops.MEASURES, "matmul", lambda precision: calls.append(("matmul", precision)) or 1e11)
    monkeypatch.setitem(flops.MEASURES, "step speedup", lambda precision: calls.append(("step", precision)) or 1.5)
    return calls


@pytest.fixture
def quiet(monkeypatch):
    """A machine whose CPU (name, cores and flags) and load the test sets: `quiet.load`, `quiet.flags`."""
    machine = type("Machine", (), {"load": 0.1, "flags": {"avx2", "fma", "sse2"}})()
    monkeypatch.setattr(flops, "load_per_core", lambda: machine.load)
    monkeypatch.setattr(flops, "cpu_flags", lambda: set(machine.flags))
    monkeypatch.setattr(flops, "machine", lambda: "AMD EPYC, 2 cores")
    return machine


def test_calibration_is_cached_per_precision(calibrations, tmp_path, quiet):
    rate, source = flops.peak_flops("bf16", "cpu")
    assert rate == 1e11 and source.startswith("calibrated: 20") and calibrations == [("matmul", "bf16")]
    rate, source = flops.peak_flops("bf16", "cpu")
    assert rate == 1e11 and source.startswith("calibrated: cached ") and calibrations == [("matmul", "bf16")]
    assert "at load 0.10/core" in source
    flops.peak_flops("none", "Some NPU")
    assert calibrations == [("matmul", "bf16"), ("matmul", "none")]
    cache = json.loads((tmp_path / flops.CACHE_FILE).read_text())
    assert len(cache) == 2 and all("AMD EPYC, 2 cores | flags avx2,fma | tensorflow" in key for key in cache)
    assert all(entry["load_per_core"] == 0.1 for entry in cache.values())


def test_two_cpus_of_one_name_have_entries_of_their_own(calibrations, tmp_path, quiet):
    """A Zen 3 and a Zen 4 are both 'AMD EPYC': a cache shared between them (a home directory on a cluster) keeps
    one entry each, keyed by the flags that decide the result."""
    flops.calibrated("step speedup", "bf16")
    quiet.flags |= {"avx512f", "avx512_bf16"}
    flops.calibrated("step speedup", "bf16")
    assert calibrations == [("step", "bf16")] * 2
    keys = sorted(json.loads((tmp_path / flops.CACHE_FILE).read_text()))
    assert [key.split(" | ")[2] for key in keys] == ["flags avx2,avx512_bf16,avx512f,fma", "flags avx2,fma"]


def test_a_value_measured_under_load_is_measured_again_when_quieter(calibrations, quiet):
    quiet.load = 3.0                                          # busy: measured, and remembered as busy
    assert flops.calibrated("matmul", "none")[2] is False
    assert flops.calibrated("matmul", "none")[2] is True      # no quieter than then: kept
    quiet.load = 0.2
    assert flops.calibrated("matmul", "none")[2] is False     # quieter: measured again ...
    quiet.load = 0.1
    assert flops.calibrated("matmul", "none")[2] is True      # ... and, measured quiet, kept
    assert flops.calibrated("matmul", "none", fresh=True)[2] is False    # trainer-calibrate: always anew
    assert calibrations == [("matmul", "none")] * 3


def test_trainer_calibrate_measures_anew_and_says_so(calibrations, quiet, capsys):
    from trainer.cli import calibrate
    flops.calibrated("matmul", "none")
    calibrate._main(calibrate.CalibrateConfig(), [])
    lines = capsys.readouterr().out.splitlines()
    assert calibrations == [("matmul", "none"), ("matmul", "none"), ("matmul", "bf16"), ("step", "bf16")]
    assert len(lines) == 3 and lines[0].endswith("| none: 100.0 GFLOP/s (measured " + lines[0].split("measured ")[1])
    assert "step speedup" in lines[2] and "1.50x float32's" in lines[2] and "at load 0.10/core" in lines[2]


def test_a_cache_that_is_not_a_regular_file_is_refused(calibrations, tmp_path, quiet):
    import os
    from trainer.errors import UsageError
    os.mkfifo(tmp_path / flops.CACHE_FILE)
    with pytest.raises(UsageError, match="peak_flops.json is not a regular file"):
        flops.calibrated("matmul", "none")          # never blocks on the pipe
    assert calibrations == []


def test_a_corrupt_cache_is_measured_again(calibrations, tmp_path, quiet):
    (tmp_path / flops.CACHE_FILE).write_text("{not json")
    speedup, _, cached = flops.calibrated("step speedup", "bf16")
    assert (speedup, cached) == (1.5, False) and calibrations == [("step", "bf16")]
    speedup, _, cached = flops.calibrated("step speedup", "bf16")
    assert (speedup, cached) == (1.5, True) and calibrations == [("step", "bf16")]


def test_an_unknown_tpu_is_not_calibrated_on_its_host(calibrations):
    rate, source = flops.peak_flops("bf16", "TPU tpu")
    assert rate != rate and "pass --peak_tflops" in source and calibrations == []


def test_the_override_wins(calibrations):
    assert flops.peak_flops("bf16", "NVIDIA A100", override_tflops=100.0) == (1e14, "flag")
    assert flops.peak_flops("none", "cpu", override_tflops=0.5) == (5e11, "flag") and calibrations == []


def test_device_name_without_accelerators():
    assert flops.device_name() == "cpu"


def test_a_batch_plans_window_flops():
    """Two shards; step 0: 4 rows (2 per shard at 10 and 12 tokens), step 1: 2 rows (1 per shard at 8 and 8)."""
    import numpy as np
    from trainer.data.stream import BatchPlan
    lengths = np.array([5, 10, 12, 9, 8, 3])
    plan = BatchPlan(rows=np.array([0, 1, 2, 3, 4, 5]), examples=np.array([4, 2]),
                     pad_lengths=np.array([[10, 12], [8, 8]]), real_tokens=np.array([36, 11]), num_shards=2,
                     padding="batch", max_length=12)
    per_token = 6 * TINY_PARAMS
    attention = 12 * 1 * 32
    real, padded = flops.plan_flops(TINY, plan, lengths, slice(0, 2))
    assert real == sum(t * (per_token + attention * t) for t in lengths)
    assert padded == sum(n * t * (per_token + attention * t) for n, t in ((2, 10), (2, 12), (1, 8), (1, 8)))
    assert flops.plan_flops(TINY, plan, lengths, slice(1, 2))[0] == sum(t * (per_token + attention * t) for t in (8, 3))


def test_a_packed_plans_flops():
    """Packed rows: padded FLOPs at max_length per packed row (the attention spans the whole row),
    real FLOPs per tweet at its own length."""
    import numpy as np
    from trainer.data.stream import plan_batches
    lengths = np.array([5, 10, 12, 9, 8, 3, 16, 7])
    plan = plan_batches(lengths, padding="pack", max_length=16, global_batch_size=2)
    per_token, attention = 6 * TINY_PARAMS, 12 * 1 * 32
    real, padded = flops.step_flops(TINY, plan, lengths)
    assert real.sum() == pytest.approx(sum(t * (per_token + attention * t) for t in lengths))
    assert (padded == 2 * 16 * (per_token + attention * 16)).all()
    assert len(padded) == plan.steps == 3
