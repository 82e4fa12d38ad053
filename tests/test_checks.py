"""The validation layer on its own: what for_train and for_evaluate refuse before any work."""
import shutil

import pytest

from conftest import train_config
from trainer import checks
from trainer.config import EvaluateConfig
from trainer.errors import UsageError


def test_a_run_directory_is_resumed_replaced_only_when_asked_and_a_foreign_one_refused(tmp_path, small_prepared,
                                                                                       tiny_model_dir):
    out = tmp_path / "run"
    assert not checks.for_train(train_config(small_prepared, tiny_model_dir, out)).replace      # new
    out.mkdir()
    (out / ".lock").write_text("")
    assert not checks.for_train(train_config(small_prepared, tiny_model_dir, out)).replace      # a lock only
    (out / "run.json").write_text("{}")
    assert checks.for_train(train_config(small_prepared, tiny_model_dir, out, overwrite_output_dir=True)).replace
    (out / "metrics.json").write_text("{}")
    with pytest.raises(UsageError, match=f"to train it further: --model={out}/export"):
        checks.for_train(train_config(small_prepared, tiny_model_dir, out))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="is not empty and holds no training run"):
        checks.for_train(train_config(small_prepared, tiny_model_dir, tmp_path / "mine"))


def test_evaluate_never_writes_into_a_run_or_a_prepared_dataset(tmp_path, small_prepared, one_device_run):
    run, other = one_device_run[0], tmp_path / "other"
    shutil.copytree(small_prepared, other)                 # a prepared dataset that is not this command's input
    for output, kind in ((run / "logs" / "m.json", "a training run"), (other / "x" / "m.json", "a prepared dataset")):
        with pytest.raises(UsageError, match=f"lies inside {kind}"):
            checks.for_evaluate(EvaluateConfig(model_dir=str(run / "export"), data_dir=small_prepared,
                                               output=str(output)))


def test_a_file_url_output_is_checked_as_its_local_path(tmp_path, small_prepared, tiny_model_dir):
    data = tmp_path / "data"
    shutil.copytree(small_prepared, data)
    with pytest.raises(UsageError, match="is the input --data_dir="):
        checks.for_train(train_config(str(data), tiny_model_dir, f"file://{data}", overwrite_output_dir=True))
