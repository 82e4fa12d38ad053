"""trainer-prepare: a real run over the shared sample, determinism, reuse, refusals, nothing half-written."""
import json
import os

import shutil

import datasets
import pytest

from conftest import SAMPLE_CSV, run_cli, write_sentiment140
from conftest import prepare_config as config
from trainer.data import prepare
from trainer.errors import UsageError


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


def test_cli_prepares_and_bad_input_is_one_line_exit_2(tmp_path, tiny_model_dir):
    path = tmp_path / "reviews.tsv"
    path.write_text("great phone\t1\nterrible battery\t0\n" * 20)
    ok = run_cli("prepare", f"--input={path}", "--format=tsv", "--text_column=0", "--label_column=1",
                 f"--output_dir={tmp_path / 'out'}", f"--model={tiny_model_dir}")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["rows_kept"] == 40
    for args, message in [
        ([f"--input={tmp_path / 'nope.csv'}"], "does not exist"),
        ([f"--input={path}", "--format=csv"], "needs --text_column and --label_column"),
        ([f"--input={path}", "--splits=0.5,0.1"], "--splits=0.5,0.1: give 3 comma-separated numbers"),
        ([f"--input={path}", "--format=tsv", "--text_column=0", "--label_column=1", "--max_length=32"],
         "already exists"),
    ]:
        bad = run_cli("prepare", *args, f"--output_dir={tmp_path / 'out'}", f"--model={tiny_model_dir}")
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1


def test_manifest_lists_every_file_and_damage_is_found(tmp_path, small_prepared):
    data = tmp_path / "data"
    shutil.copytree(small_prepared, data)
    manifest = json.loads((data / "manifest.json").read_text())
    arrow = [name for name in manifest["files"] if name.startswith("train/") and name.endswith(".arrow")][0]
    assert manifest["files"][arrow]["bytes"] == (data / arrow).stat().st_size
    assert prepare.open_prepared(str(data)).manifest == manifest
    content = (data / arrow).read_bytes()
    (data / arrow).write_bytes(content[:len(content) // 2])                     # truncated
    with pytest.raises(UsageError, match=f"is damaged \\({arrow} has .* bytes, the manifest says"):
        prepare.open_prepared(str(data))
    (data / arrow).write_bytes(content[:100] + bytes(b ^ 0xFF for b in content[100:110]) + content[110:])
    with pytest.raises(UsageError, match="does not match its sha256.*run trainer-prepare again with --overwrite"):
        prepare.open_prepared(str(data))


def test_utf8_bom_long_fields_and_cr_line_endings(tmp_path, tiny_model_dir):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbftext,label\ncaf\xc3\xa9 is great,1\nbad coffee,0\n")
    manifest = prepare.prepare(config(bom, tmp_path / "a", tiny_model_dir, format="csv", text_column="text",
                                      label_column="label", splits=(1.0, 0.0, 0.0)))
    assert manifest["rows_kept"] == 2 and manifest["dropped"] == {}
    s140 = tmp_path / "s140.csv"
    write_sentiment140(s140, [(0, "bad"), (4, "good " * 20 + "x" * (2 << 20))])  # 16x csv's field limit
    s140.write_bytes(b"\xef\xbb\xbf" + s140.read_bytes().replace(b"\r\n", b"\r"))   # BOM, CR-only lines
    manifest = prepare.prepare(config(s140, tmp_path / "b", tiny_model_dir, splits=(1.0, 0.0, 0.0), max_length=16))
    assert manifest["rows_kept"] == 2 and manifest["dropped"] == {} and manifest["token_length"]["max"] == 16


def test_outputs_follow_the_umask(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad day"), (4, "good day")] * 5)
    previous = os.umask(0o022)
    try:
        prepare.prepare(config(path, tmp_path / "out", tiny_model_dir))
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_the_lock_holder_removes_a_killed_prepares_staging(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad day"), (4, "good day")] * 10)
    for stale in (".out-staged-abc123", ".out-work-def456"):      # what kill -9 leaves beside the output
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "rows.arrow").write_bytes(b"partial")
    (tmp_path / ".other-staged-x").mkdir()                        # another output's: not this lock's to remove
    prepare.prepare(config(path, tmp_path / "out", tiny_model_dir))
    assert sorted(os.listdir(tmp_path)) == [".other-staged-x", "out", "s.csv"]


def test_a_second_prepare_of_the_same_output_is_refused_while_the_first_runs(tmp_path, tiny_model_dir):
    from trainer import rundir
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad day"), (4, "good day")] * 10)
    with rundir.OutputLock(str(tmp_path / "out")):
        with pytest.raises(UsageError, match=f"{tmp_path / 'out'} is in use by process {os.getpid()}"):
            prepare.prepare(config(path, tmp_path / "out", tiny_model_dir))
    assert sorted(os.listdir(tmp_path)) == ["s.csv"]


def test_a_legal_250_byte_output_name(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad day"), (4, "good day")] * 10)
    out = tmp_path / ("n" * 250)
    prepare.prepare(config(path, out, tiny_model_dir))
    assert (out / "manifest.json").exists() and sorted(os.listdir(tmp_path)) == ["n" * 250, "s.csv"]


def test_a_file_url_is_the_local_path(tmp_path, tiny_model_dir):
    path = write_sentiment140(tmp_path / "s.csv", [(0, "bad day"), (4, "good day")] * 10)
    prepare.prepare(config(path, f"file://{tmp_path}/out", tiny_model_dir))
    assert prepare.open_prepared(f"{tmp_path}/out").manifest["splits"]["train"] == 16
