"""The run directory's owner module: staging names, identity, checkpoint files, the lock beside an output."""
import json
import os

import pytest

from trainer import rundir, storage
from trainer.errors import UsageError


def test_identity_is_written_once_then_compared(tmp_path):
    run = rundir.RunDir(str(tmp_path))
    run_id = rundir.check_identity(run, {"seed": 1, "padding": "bucket", "max_steps": None}, {})
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "format": 1, "run_id": run_id, "settings": {"seed": 1, "padding": "bucket", "max_steps": None}}
    assert len(run_id) == 32 and rundir.check_identity(run, {"seed": 1, "padding": "bucket", "max_steps": None},
                                                       {}) == run_id                            # the same: fine
    with pytest.raises(UsageError, match=r"\(--max_grad_norm was 0, now 1.0\)"):       # an old run.json's value
        rundir.check_identity(run, {"seed": 1, "padding": "bucket", "max_steps": None, "max_grad_norm": 1.0}, {
            "max_grad_norm": "--max_grad_norm"}, legacy={"max_grad_norm": 0})
    with pytest.raises(UsageError, match=r"\(max_steps was unset, now 10; --seed was 1, now 2\)"):
        rundir.check_identity(run, {"seed": 2, "padding": "bucket", "max_steps": 10}, {"seed": "--seed"})


def test_a_value_that_only_looks_the_same_is_shown_as_json(tmp_path):
    run = rundir.RunDir(str(tmp_path))
    rundir.check_identity(run, {"seed": "1"}, {})
    with pytest.raises(UsageError, match='seed was "1", now 1'):
        rundir.check_identity(run, {"seed": 1}, {})


def test_checkpoints_without_an_identity_are_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-4.index").write_bytes(b"")
    with pytest.raises(UsageError, match="holds checkpoints but no run.json"):
        rundir.check_identity(rundir.RunDir(str(tmp_path)), {"seed": 1}, {})


def test_checkpoint_numbers_count_any_file_of_a_checkpoint(tmp_path):
    for name in ("ckpt-4.index", "ckpt-8.data-00000-of-00001", "ckpt-12.index", "checkpoint", "ckpt-x.index"):
        (tmp_path / name).write_bytes(b"")
    assert rundir.checkpoint_numbers(str(tmp_path)) == [12, 8, 4]
    rundir.remove_checkpoint(str(tmp_path), 8)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-12.index", "ckpt-4.index", "ckpt-x.index"]
    assert rundir.checkpoint_problem(str(tmp_path / "ckpt-8")) == "its .index file is missing"


def test_staging_names_are_recognised_and_only_they_are_removed(tmp_path):
    keep = ["notes.txt", ".lock", "run.json", "export"]
    stale = [storage.hidden_name(str(tmp_path / "export"), "staged") + "abc", ".metrics.json-tmp-x",
             "ckpt-8_temp", "checkpoint.tmp1234"]
    for name in keep + stale:
        (tmp_path / name).mkdir() if name in ("export", "ckpt-8_temp") else (tmp_path / name).write_text("x")
    assert sorted(os.path.basename(p) for p in storage.remove_staging(str(tmp_path))) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def test_a_staging_name_fits_any_legal_output_name(tmp_path):
    name = storage.hidden_name(str(tmp_path / ("n" * 255)), "staged")
    assert len(name) + 8 < 255 and name.startswith(".n") and name.endswith("-staged-")


def test_the_lock_beside_an_output_refuses_a_second_holder_and_goes_with_the_first(tmp_path):
    with rundir.OutputLock(str(tmp_path / "out")):
        assert (tmp_path / ".out.lock").exists()
        with pytest.raises(UsageError, match=f"{tmp_path / 'out'} is in use by process {os.getpid()}"):
            rundir.OutputLock(str(tmp_path / "out"))
    assert not (tmp_path / ".out.lock").exists()


def test_what_is_a_run_directory(tmp_path):
    assert not rundir.is_run_dir(str(tmp_path))
    (tmp_path / ".lock").write_text("")
    assert not rundir.is_run_dir(str(tmp_path))             # a lock alone is any tool's (pytest has one)
    (tmp_path / "steps.csv").write_text("step\n")
    assert rundir.is_run_dir(str(tmp_path))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text("{}")
    assert rundir.is_run_dir(str(tmp_path / "other"))
