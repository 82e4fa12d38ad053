"""trainer-prepare: a real run over the shared sample, determinism, reuse, refusals, nothing half-written."""
import json
import os
import subprocess
import sys

import datasets
import pytest

from conftest import SAMPLE_CSV, write_sentiment140
from trainer.cli import UsageError
from trainer.config import PrepareConfig
from trainer.data import prepare, readers


def config(source, output_dir, model, **kwargs):
    return PrepareConfig(source=readers.Source(str(source)), output_dir=str(output_dir), model=model, **kwargs)


def test_real_run_over_shared_sample(prepared_sample):
    manifest = json.load(open(os.path.join(prepared_sample, "manifest.json")))
    assert manifest["rows_read"] == 20_000 and manifest["rows_kept"] == 20_000 and manifest["dropped"] == {}
    assert manifest["splits"] == {"train": 16_000, "validation": 2_000, "test": 2_000}
    for split, counts in manifest["labels_per_split"].items():
        assert sum(counts.values()) == manifest["splits"][split]
        assert 0.4 < counts["positive"] / manifest["splits"][split] < 0.6   # shuffled before splitting
    assert len(manifest["source"]["sha256"]) == 64 and manifest["max_length"] == 64
    assert sum(manifest["token_length"]["histogram"].values()) == 20_000
    dataset = datasets.load_from_disk(prepared_sample)
    train = dataset["train"]
    assert train.features["label"].names == ["negative", "positive"]
    assert {"text", "label", "input_ids", "attention_mask", "token_type_ids", "length"} <= set(train.column_names)
    first = train[:50]
    assert first["length"] == [len(ids) for ids in first["input_ids"]]
    assert max(train.with_format("numpy")["length"]) <= 64


def test_label_mapping_4_to_1_and_neutral_dropped(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad"), (4, "good"), (2, "meh"), (4, "nice")])
    manifest = prepare.prepare(config(path, tmp_path / "out", tiny_model_dir, splits=(1.0, 0.0, 0.0)))
    assert manifest["dropped"] == {"neutral": 1} and manifest["splits"] == {"train": 3}
    train = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    assert sorted(zip(train["text"], train["label"])) == [("bad", 0), ("good", 1), ("nice", 1)]


def test_split_is_deterministic_and_seeded(tmp_path, tiny_model_dir):
    texts = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        prepare.prepare(config(SAMPLE_CSV, tmp_path / name, tiny_model_dir, seed=seed, max_length=64))
        texts[name] = datasets.load_from_disk(str(tmp_path / name))["test"]["text"][:100]
    assert texts["a"] == texts["b"] and texts["a"] != texts["c"]


def test_whole_file_into_one_named_split(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad"), (4, "good")])
    manifest = prepare.prepare(config(path, tmp_path / "out", tiny_model_dir, split_name="test"))
    assert manifest["splits"] == {"test": 2}
    assert list(datasets.load_from_disk(str(tmp_path / "out"))) == ["test"]


def test_rerun_reuses_and_other_settings_need_overwrite(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad day"), (4, "good day")] * 10)
    out = tmp_path / "out"
    first = prepare.prepare(config(path, out, tiny_model_dir))
    stamp = os.stat(out / "train").st_mtime_ns
    again = prepare.prepare(config(path, out, tiny_model_dir))
    assert again["reused"] and again["settings"] == first["settings"]
    assert os.stat(out / "train").st_mtime_ns == stamp
    with pytest.raises(UsageError, match="already exists.*--overwrite"):
        prepare.prepare(config(path, out, tiny_model_dir, max_length=32))
    assert json.load(open(out / "manifest.json"))["max_length"] == 128      # untouched
    replaced = prepare.prepare(config(path, out, tiny_model_dir, max_length=32, overwrite=True))
    assert replaced["max_length"] == 32 and json.load(open(out / "manifest.json"))["max_length"] == 32
    assert sorted(os.listdir(tmp_path)) == ["out", "s.csv"]                  # no temporary leftovers


def test_failure_leaves_nothing_behind(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "fine")] * 10 + [(9, "bad label")])
    with pytest.raises(UsageError, match="unknown label"):
        prepare.prepare(config(path, tmp_path / "out", tiny_model_dir))
    assert sorted(os.listdir(tmp_path)) == ["s.csv"]


def test_no_usable_rows(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(2, "meh")] * 3)
    with pytest.raises(UsageError, match="no usable rows.*neutral"):
        prepare.prepare(config(path, tmp_path / "out", tiny_model_dir))


def test_max_length_above_model_positions(tmp_path, tiny_model_dir):
    with pytest.raises(UsageError, match="above the 128 positions"):
        prepare.prepare(config(SAMPLE_CSV, tmp_path / "out", tiny_model_dir, max_length=512))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer.data.prepare", *args], capture_output=True, text=True)


def test_cli_prepares_and_bad_input_is_one_line_exit_2(tmp_path, tiny_model_dir):
    path = tmp_path / "reviews.tsv"
    path.write_text("great phone\t1\nterrible battery\t0\n" * 20)
    ok = run_cli(f"--input={path}", "--format=tsv", "--text_column=0", "--label_column=1",
                 f"--output_dir={tmp_path / 'out'}", f"--model={tiny_model_dir}")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["rows_kept"] == 40
    for args, message in [
        ([f"--input={tmp_path / 'nope.csv'}"], "does not exist"),
        ([f"--input={path}", "--format=csv"], "needs --text_column and --label_column"),
        ([f"--input={path}", "--splits=0.5,0.1"], "--splits must be three fractions"),
        ([f"--input={path}", "--format=tsv", "--text_column=0", "--label_column=1", "--max_length=32"],
         "already exists"),
    ]:
        bad = run_cli(*args, f"--output_dir={tmp_path / 'out'}", f"--model={tiny_model_dir}")
        last = bad.stderr.strip().splitlines()[-1]
        assert bad.returncode == 2 and last.startswith("error: ") and message in last, bad.stderr
        assert "Traceback" not in bad.stderr
