"""Every key of every JSON file the trainer reads x {removed, wrong type, out of range}: one line naming the
file and the key, generated from the schemas themselves (so a key added to a schema is tested too)."""
import copy
import json
import shutil

import pytest

from trainer import checks, hub, rundir, schema
from trainer.data import prepare
from trainer.errors import UsageError


def mutations(spec, value, key=""):
    """(case name, the whole value with one key mutated, the key as the message names it)."""
    if isinstance(spec, schema.Maybe):
        yield from mutations(spec.spec, value, key)
        return
    if isinstance(spec, dict):
        for name, sub in spec.items():
            path = f"{key}.{name}" if key else name
            if not isinstance(sub, schema.Maybe):
                removed = copy.deepcopy(value)
                removed.pop(name)
                yield f"{path} removed", removed, path
            for case, inner, named in mutations(sub, value[name], path):
                yield case, {**value, name: inner}, named
        return
    if isinstance(spec, schema.Map):
        first = next(iter(value))
        yield f"{key} a list", [value[first]], key
        path = f"{key}.{first}"
        for case, inner, named in mutations(spec.values, value[first], path):
            yield case, {**value, first: inner}, named
        return
    if isinstance(spec, schema.Seq):
        yield f"{key} an object", {"0": value}, key
        return
    wrong = [1] if isinstance(spec, schema.Str) else str(value)      # a list for a text; a number written as text
    yield f"{key} of the wrong type", wrong, key
    if isinstance(spec, schema.Int) and spec.lower is not None:
        yield f"{key} out of range", spec.lower - 1, key
    if isinstance(spec, schema.Str) and spec.choices:
        yield f"{key} not a choice", "other", key


def cases(spec, valid):
    return {case: (mutated, key) for case, mutated, key in mutations(spec, valid)}


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_prepared):
    path = tmp_path_factory.mktemp("schema") / "data"
    shutil.copytree(small_prepared, path)
    return path


@pytest.fixture(scope="module")
def manifest_cases(small_prepared):
    return cases(schema.MANIFEST, json.loads(open(f"{small_prepared}/manifest.json").read()))


def test_every_manifest_key_is_mutated(manifest_cases):
    keys = {key for _, key in manifest_cases.values()}
    assert {"settings.format_version", "source.bytes", "max_length", "labels", "splits", "files"} <= keys
    assert len(manifest_cases) >= 25


def test_a_mutated_manifest_is_one_line_naming_the_file_and_the_key(data, manifest_cases):
    original = (data / "manifest.json").read_text()
    try:
        for case, (mutated, key) in manifest_cases.items():
            (data / "manifest.json").write_text(json.dumps(mutated))
            with pytest.raises(UsageError) as refused:
                prepare.open_prepared(str(data))
            message = str(refused.value)
            assert "\n" not in message and "manifest.json" in message, (case, message)
            named = key.split(".")[-1] if "format_version" not in key else "format_version"
            assert named in message or "incompatible version" in message, (case, message)
            assert "trainer-prepare" in message, (case, message)
    finally:
        (data / "manifest.json").write_text(original)


def test_a_version_written_as_text_does_not_contradict_itself(data):
    original = json.loads((data / "manifest.json").read_text())
    try:
        (data / "manifest.json").write_text(json.dumps({**original, "settings": {**original["settings"],
                                                                                 "format_version": "2"}}))
        with pytest.raises(UsageError) as refused:
            prepare.open_prepared(str(data))
        assert "key 'settings.format_version' is a text '2', not an integer" in str(refused.value)
    finally:
        (data / "manifest.json").write_text(json.dumps(original))


BEST = {"step": 8, "metric": "accuracy", "value": 0.7, "run_id": "5f0c"}
EXPORT_INFO = {"data_source_sha256": "ab" * 32, "global_step": 16, "weights": "best", "best": None}
IDENTITY = {"format": 1, "run_id": "5f0c", "settings": {"seed": 1, "padding": "bucket"}}
RECOVERIES = {"recoveries": [{"step": 9, "why": "the loss became non-finite at step 9", "resumed_from": 0,
                              "rate_factor": 0.5}], "stopped": {"step": 20, "why": "the loss became non-finite"}}


@pytest.mark.parametrize("case", list(cases(schema.BEST, BEST)))
def test_best_json(case):
    mutated, key = cases(schema.BEST, BEST)[case]
    found = schema.problem(mutated, schema.BEST)
    assert found and f"'{key}'" in found, found


@pytest.mark.parametrize("case", list(cases(schema.EXPORT_INFO, EXPORT_INFO)))
def test_an_exports_trainer_json(case, tmp_path, one_device_run):
    mutated, key = cases(schema.EXPORT_INFO, EXPORT_INFO)[case]
    export = tmp_path / "export"
    shutil.copytree(one_device_run[0] / "export", export)
    (export / "trainer.json").write_text(json.dumps(mutated))
    with pytest.raises(UsageError) as refused:
        checks.model(str(export), "--model_dir", tf_only=True)
    assert "trainer.json" in str(refused.value) and f"'{key}'" in str(refused.value)


@pytest.mark.parametrize("case", list(cases(schema.RUN_IDENTITY, IDENTITY)))
def test_the_run_identity(case, tmp_path):
    mutated, key = cases(schema.RUN_IDENTITY, IDENTITY)[case]
    (tmp_path / rundir.IDENTITY).write_text(json.dumps(mutated))
    run = rundir.RunDir(str(tmp_path), is_chief=False)
    with pytest.raises(UsageError) as refused:
        rundir.check_identity(run, IDENTITY["settings"], {})
    message = str(refused.value)
    assert "\n" not in message and "--overwrite_output_dir" in message, message
    if "other settings" in message:            # a value of another type: a difference, shown apart
        assert 'was "1", now 1' in message or "was 1, now" in message, message
    else:
        assert "run.json" in message and f"'{key.split('.')[0]}" in message, message


@pytest.mark.parametrize("case", list(cases(schema.RECOVERIES, RECOVERIES)))
def test_the_runs_recoveries(case, tmp_path):
    from trainer import callbacks
    mutated, key = cases(schema.RECOVERIES, RECOVERIES)[case]
    (tmp_path / rundir.RECOVERIES).write_text(json.dumps(mutated))
    with pytest.raises(UsageError) as refused:
        callbacks.Recovery(str(tmp_path / rundir.RECOVERIES), "RUN", 3, 10, is_chief=True)
    message = str(refused.value)
    assert "\n" not in message and "RUN/recoveries.json" in message and f"'{key}'" in message, message
    assert "--overwrite_output_dir" in message


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"])
@pytest.mark.parametrize("value", ["32", 32.5, -1, None])
def test_model_config_sizes(key, value, tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    settings = json.loads((model / "config.json").read_text())
    settings[key] = value
    (model / "config.json").write_text(json.dumps(settings))
    with pytest.raises(UsageError) as refused:
        hub.load_config(str(model))
    assert "\n" not in str(refused.value) and (f"'{key}'" in str(refused.value) or "config.json" in str(refused.value))


def test_an_exports_label_count_must_match_its_head(tmp_path, one_device_run):
    export = tmp_path / "export"
    shutil.copytree(one_device_run[0] / "export", export)
    settings = json.loads((export / "config.json").read_text())
    settings.update(id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})
    (export / "config.json").write_text(json.dumps(settings))
    with pytest.raises(UsageError) as refused:
        checks.model(str(export), "--model_dir", tf_only=True)
    assert "names 3 labels but the weights' head has 2" in str(refused.value)
