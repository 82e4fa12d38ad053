"""The run directory as a state machine, driven by fault matrices (in process, faults injected from inside):

  each file of a run stopped mid-run x {deleted, truncated, garbled, replaced by the file of another run}
      -> the rerun resumes from the newest intact checkpoint and ends at the planned step and examples, or
         refuses in one line touching nothing;
  a kill at each phase boundary -> the same command again ends in the state of an uninterrupted run;
  a change of any identity setting -> one line naming it; a change of a resumable setting -> resumes.
"""
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import built_once, train_config
from trainer import callbacks, rundir, storage, train
from trainer.errors import UsageError

STEPS, STOP_AT = 16, 12          # 8 steps per epoch (256 rows / 32), two epochs; the stopped run saved ckpt-8, 12


class Killed(BaseException):
    """A kill at a chosen point: nothing of the run catches it (it is no Exception)."""


def config(data, model, out, **overrides):
    settings = dict(max_train_examples=256, checkpoint_every_steps=4, eval_every_steps=4, log_every_steps=4,
                    padding="max_length")   # one batch shape: one trace per run
    return train_config(data, model, out, **{**settings, **overrides})


@contextlib.contextmanager
def patched(owner, name, replacement):
    original = getattr(owner, name)
    setattr(owner, name, replacement(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def at_step(step, action):
    """action(loop) once training step `step` is done, before the loop decides what else is due then."""
    def replacement(original):
        def after_step(self, global_step):
            if global_step == step:
                action(self)
            original(self, global_step)
        return after_step
    return patched(train.Loop, "after_step", replacement)


def stop_at(step):
    """Training stops at `step` as after SIGTERM: the checkpoint of that step is saved, nothing is exported."""
    return at_step(step, train.Loop.request_stop)


class Restored(BaseException):
    """Raised where training would begin: restore and the loop's setup have decided about every file."""


def until_restored():
    """The run stops where training would begin, raising Restored with the step it resumed from."""
    def replacement(original):
        def train_loop(run, loop):
            raise Restored(loop.step)
        return train_loop
    return patched(train, "train_loop", replacement)


def stopped(out, data, model, **overrides):
    with stop_at(STOP_AT):
        stats = train.run(config(data, model, out, **overrides))
    assert stats["interrupted"] and stats["global_step"] == STOP_AT
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory, small_prepared, no_dropout_model):
    """A run stopped at step 12, another run (seed 2) stopped there too, and the uninterrupted run."""
    def build(root):
        whole = train.run(config(small_prepared, no_dropout_model, root / "whole"))
        (root / "whole.json").write_text(json.dumps(whole))
        stopped(root / "stopped", small_prepared, no_dropout_model)
        stopped(root / "other", small_prepared, no_dropout_model, seed=2)
    root = built_once(tmp_path_factory, "state", build)
    return dataclasses.make_dataclass("Runs", ["stopped", "other", "whole", "data", "model"])(
        root / "stopped", root / "other", json.loads((root / "whole.json").read_text()), small_prepared,
        no_dropout_model)


def snapshot(root) -> dict:
    """Every file's sha256, the lock's holder record included (a pipe or other special file: never opened)."""
    return {os.path.relpath(path, root): hashlib.sha256(open(path, "rb").read()).hexdigest()
            if os.path.isfile(path) else "special"
            for d, _, names in os.walk(root) for n in names for path in [os.path.join(d, n)]}


def best_file(run, suffix):
    return next(f"best/{p.name}" for p in sorted((run / "best").iterdir()) if p.name.endswith(suffix))


def damage(run_dir, other_dir, relative, how):
    path = run_dir / relative
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif how == "garbled":
        path.write_bytes(b"\x00garbage\xff{[" * 40)
    else:   # replaced by the same file of the other run (the one at the same place among its files)
        name = relative if not relative.startswith("best/ckpt-") else best_file(other_dir, relative.split(".", 1)[1])
        shutil.copy(other_dir / name, path)


def assert_refused(error: UsageError, *words):
    message = str(error)
    assert "\n" not in message and all(word in message for word in words), message


def assert_finished(stats, resumed_from):
    assert stats["global_step"] == STEPS and stats["examples_seen"] == STEPS * 32
    assert stats["resumed_from_step"] == resumed_from and "interrupted" not in stats


CHECKPOINT_FILES = ("checkpoints/ckpt-12.index", "checkpoints/ckpt-12.data-00000-of-00001")
OUTCOMES = {   # file -> (expected outcome, a word its line says); the best files' names depend on the best step
    **{name: ("resume 8", "passed over damaged checkpoints") for name in CHECKPOINT_FILES},
    "checkpoints/checkpoint": ("resume 12", ""),
    "best/.index": ("resume 12", "the best weights so far are forgotten"),
    "best/.data-00000-of-00001": ("resume 12", "the best weights so far are forgotten"),
    "best/best.json": ("resume 12", "the best weights so far are forgotten"),
    "run.json": ("refuse", "run.json"),
    "steps.csv": ("resume 12", ""),
    "validation.csv": ("resume 12", ""),
}
HOWS = ("deleted", "truncated", "garbled", "replaced")
FINISHED = "truncated"      # these run to the end; the other kinds of damage stop once the run has restored


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("relative", OUTCOMES)
def test_a_damaged_file_of_a_stopped_run(relative, how, runs, tmp_path, capsys):
    """Every decision about a damaged file is made, and said, before training begins: all kinds of damage are
    run to there, and the truncated file of each kind to the end of the run."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    name = best_file(run_dir, relative[len("best/"):]) if relative.startswith("best/.") else relative
    damage(run_dir, runs.other, name, how)
    outcome, says = OUTCOMES[relative]
    before = snapshot(run_dir)
    capsys.readouterr()
    if outcome == "refuse":
        with pytest.raises(UsageError) as refused:
            train.run(config(runs.data, runs.model, run_dir))
        assert_refused(refused.value, "--seed was 2, now 1" if how == "replaced" else "run.json", "--overwrite_output_dir")
        assert snapshot(run_dir) == before
        return
    resumed_from = int(outcome.split()[1])
    if how == FINISHED:
        stats = train.run(config(runs.data, runs.model, run_dir))
        assert_finished(stats, resumed_from)
        assert (run_dir / rundir.METRICS).exists() and (run_dir / "export" / "tf_model.h5").exists()
    else:
        with until_restored(), pytest.raises(Restored) as restored:
            train.run(config(runs.data, runs.model, run_dir))
        assert restored.value.args[0] == resumed_from
    out = capsys.readouterr().out
    if how == "replaced" and relative.startswith("best/"):
        says = ""       # the other run's best may name the same step: nothing then tells them apart
    assert says in out, out[-2000:]


def test_no_intact_checkpoint_is_refused_and_nothing_restarts_from_0(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    for index in (run_dir / "checkpoints").glob("*.index"):
        index.write_bytes(b"garbage")
    before = snapshot(run_dir)
    with pytest.raises(UsageError) as refused:
        train.run(config(runs.data, runs.model, run_dir))
    assert_refused(refused.value, "holds no intact checkpoint", "ckpt-12 (", "ckpt-8 (", "--overwrite_output_dir")
    assert snapshot(run_dir) == before
    with until_restored(), pytest.raises(Restored) as restored:       # unless told to
        train.run(config(runs.data, runs.model, run_dir, overwrite_output_dir=True))
    assert restored.value.args[0] == 0


def infinite_moment_at(step):
    """After `step`, one of AdamW's moments becomes infinite while every weight stays finite."""
    def make_infinite(loop):
        moment = next(v for v in loop.model.optimizer.variables() if v.shape.rank == 2)
        moment.assign(tf.fill(moment.shape, float("inf")))
    return at_step(step, make_infinite)


def test_non_finite_optimizer_state_makes_a_checkpoint_unsound(runs, tmp_path, capsys):
    """A checkpoint with finite weights but an infinite AdamW moment (written as a trainer that checked only the
    weights would have): the rerun passes it over and resumes from the older one."""
    from trainer import model as model_lib
    run_dir = tmp_path / "run"
    with infinite_moment_at(STOP_AT), stop_at(STOP_AT), \
            patched(model_lib, "weights_are_finite", lambda original: lambda model: True):
        train.run(config(runs.data, runs.model, run_dir))
    assert "not finite" in rundir.checkpoint_problem(str(run_dir / "checkpoints" / "ckpt-12"))
    capsys.readouterr()
    stats = train.run(config(runs.data, runs.model, run_dir))
    assert "passed over damaged checkpoints, resuming from ckpt-8" in capsys.readouterr().out
    assert_finished(stats, 8)


def test_a_save_refuses_non_finite_optimizer_state(runs, tmp_path):
    from trainer.errors import Diverged
    with infinite_moment_at(8), pytest.raises(Diverged) as diverged:
        train.run(config(runs.data, runs.model, tmp_path / "run", recovery_max_trials=0))
    assert "optimizer state are not all finite at step 8: rerun with --recovery_max_trials=1" in str(diverged.value)
    assert "to resume from ckpt-4 at x0.5 the learning rate" in str(diverged.value)
    assert rundir.checkpoint_numbers(str(tmp_path / "run" / "checkpoints")) == [4]


def nan_weights_twice_at_10(kill_at_6, reached):
    """The weights turn NaN after step 10 the first two times the run gets there (ckpt-8 diverges again within
    its interval, so the second recovery passes it over for ckpt-4); with kill_at_6, the run is killed at step 6
    after that."""
    def replacement(original):
        def after_step(self, step):
            reached[step] += 1
            if step == 10 and reached[10] <= 2:
                weight = self.model.trainable_weights[0]
                weight.assign(weight * float("nan"))
            if kill_at_6 and step == 6 and reached[10] == 2:
                raise Killed
            original(self, step)
        return after_step
    return patched(train.Loop, "after_step", replacement)


def test_a_kill_after_a_recovery_passed_over_a_checkpoint_resumes_where_the_run_went_on(runs, tmp_path):
    """ckpt-8 holds steps the run trains again from ckpt-4: a kill before it saves them anew resumes from ckpt-4
    (ckpt-8 is gone) and ends as the run that was not killed."""
    with nan_weights_twice_at_10(False, collections.Counter()):
        whole = train.run(config(runs.data, runs.model, tmp_path / "whole"))
    assert [r["resumed_from"] for r in whole["recoveries"]] == [8, 4]
    reached = collections.Counter()
    with nan_weights_twice_at_10(True, reached), pytest.raises(Killed):
        train.run(config(runs.data, runs.model, tmp_path / "run"))
    assert rundir.checkpoint_numbers(str(tmp_path / "run" / "checkpoints")) == [4]
    with nan_weights_twice_at_10(False, reached):
        stats = train.run(config(runs.data, runs.model, tmp_path / "run"))
    assert stats["resumed_from_step"] == 4 and stats["recoveries"] == whole["recoveries"]
    assert stats["weights_sha256"] == whole["weights_sha256"]


# ---- identity --------------------------------------------------------------------------------------------

CHANGED = {   # identity settings: a rerun with another value is refused, naming it
    "per_replica_batch_size": 16, "max_length": 32, "padding": "batch", "seed": 3, "learning_rate": 1e-3,
    "epochs": 3, "max_train_examples": 128, "warmup_ratio": 0.2, "embedding_update": "frozen",
    "gradient_accumulation_steps": 2, "max_grad_norm": 0.5,
}
RESUMABLE = {"log_every_steps": 2, "eval_every_steps": 8, "checkpoint_every_steps": 2, "steps_per_execution": 2,
             "recovery_max_trials": 0, "loss_upper_bound": 50.0}


@pytest.mark.parametrize("name", CHANGED)
def test_a_changed_identity_setting_is_refused_naming_both_values(name, runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    before = snapshot(run_dir)
    with pytest.raises(UsageError) as refused:
        train.run(config(runs.data, runs.model, run_dir, **{name: CHANGED[name]}))
    assert_refused(refused.value, f"--{name} was ", f"now {CHANGED[name]}", "--overwrite_output_dir")
    assert snapshot(run_dir) == before


def test_other_data_and_another_model_size_are_refused(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    smaller = tmp_path / "smaller"
    shutil.copytree(runs.model, smaller)
    settings = json.loads((smaller / "config.json").read_text())
    (smaller / "config.json").write_text(json.dumps({**settings, "num_hidden_layers": 1}))
    with pytest.raises(UsageError) as refused:
        train.run(config(runs.data, str(smaller), run_dir))
    assert_refused(refused.value, "--model (its shape) was 2 layers", "now 1 layers")
    data = tmp_path / "data"         # the same rows, one of its files rewritten: other content all the same
    shutil.copytree(runs.data, data)
    listing = data / "dataset_dict.json"
    listing.write_text(json.dumps(json.loads(listing.read_text()), indent=4))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"]["dataset_dict.json"] = {"bytes": listing.stat().st_size,
                                              "sha256": hashlib.sha256(listing.read_bytes()).hexdigest()}
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError) as refused:
        train.run(config(str(data), runs.model, run_dir))
    assert_refused(refused.value, "--data_dir (its content) was ")


def test_resumable_settings_may_change(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    stats = train.run(config(runs.data, runs.model, run_dir, **RESUMABLE))
    assert_finished(stats, STOP_AT)


def test_a_finished_run_is_refused_naming_how_to_train_it_further(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    train.run(config(runs.data, runs.model, run_dir))
    with pytest.raises(UsageError) as refused:
        train.run(config(runs.data, runs.model, run_dir, epochs=3))
    assert_refused(refused.value, "holds a finished run", f"--model={run_dir}/export")


# ---- a kill at each phase boundary -------------------------------------------------------------------------

def _nth_call(n, before=None):
    """A replacement that raises Killed at the n-th call (after `before(self, *args)` if given), else calls on."""
    def replacement(original):
        calls = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                if before:
                    before(*args, **kwargs)
                raise Killed
            return original(*args, **kwargs)
        return wrapper
    return replacement


def _after_call(original):
    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        raise Killed
    return wrapper


def _half_written_checkpoint(original):
    def save(self, checkpoint_number=None, **kwargs):
        path = original(self, checkpoint_number=checkpoint_number, **kwargs)
        if checkpoint_number == 8:
            data = path + ".data-00000-of-00001"
            with open(data, "r+b") as f:
                f.truncate(os.path.getsize(data) // 2)
            raise Killed
        return path
    return save


def _kept_but_not_named(best, step, metrics):
    best.checkpoint.write(os.path.join(best.save_dir, f"ckpt-{step}"))      # written, best.json not yet


def _staging_left_behind(original):
    return lambda path: None        # a killed process removes nothing


PHASES = {
    "after data load": [(train, "load_data", _after_call)],
    "mid-epoch": [(train, "_fit_epoch", _nth_call(2))],
    "during validation": [(callbacks.Validation, "validate", _nth_call(2))],
    "during a checkpoint write": [(tf.train.CheckpointManager, "save", _half_written_checkpoint)],
    "during the best save": [(callbacks.Best, "keep", _nth_call(1, _kept_but_not_named))],
    "during export staging": [(storage, "_replace_dir", _nth_call(1)), (storage, "_remove", _staging_left_behind)],
    "before metrics.json": [(storage, "write_json", lambda original: lambda path, obj: (
        (_ for _ in ()).throw(Killed) if path.endswith(rundir.METRICS) else original(path, obj)))],
}


@pytest.mark.parametrize("phase", PHASES)
def test_a_kill_at_each_phase_then_the_same_command_finishes_as_if_uninterrupted(phase, runs, tmp_path):
    run_dir = tmp_path / "run"
    with contextlib.ExitStack() as stack:
        for owner, name, replacement in PHASES[phase]:
            stack.enter_context(patched(owner, name, replacement))
        with pytest.raises(Killed):
            train.run(config(runs.data, runs.model, run_dir))
    assert not (run_dir / rundir.METRICS).exists()
    stats = train.run(config(runs.data, runs.model, run_dir))
    whole = runs.whole
    assert stats["global_step"] == whole["global_step"] and stats["examples_seen"] == whole["examples_seen"]
    assert stats["best"]["step"] == whole["best"]["step"]
    assert stats["weights_sha256"] == whole["weights_sha256"] or _same_logits(run_dir, runs), phase
    assert not [name for _, _, names in os.walk(run_dir) for name in names if storage.is_staging(name)]
    assert not [path for path in os.listdir(run_dir) if storage.is_staging(path)]
    assert json.loads((run_dir / rundir.METRICS).read_text())["global_step"] == STEPS


def _same_logits(run_dir, runs) -> bool:
    from trainer import hub, model as model_lib
    tokenizer = hub.load_tokenizer(str(run_dir / "export"))
    inputs = dict(tokenizer(["so happy today", "worst day ever", "meh"], padding=True, return_tensors="tf"))
    a = model_lib.load_export(str(run_dir / "export"))(inputs).logits.numpy()
    b = model_lib.load_export(str(runs.stopped.parent / "whole" / "export"))(inputs).logits.numpy()
    return bool(np.allclose(a, b, atol=1e-4))


@pytest.mark.parametrize("name, kind", [("checkpoints", "file"), ("best", "file"), ("run.json", "dir"),
                                        ("steps.csv", "dir")])
def test_a_run_file_of_the_wrong_kind_is_refused(name, kind, runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    path = run_dir / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir() if kind == "dir" else path.write_text("x")
    before = snapshot(run_dir)
    with pytest.raises(UsageError) as refused:
        train.run(config(runs.data, runs.model, run_dir))
    assert_refused(refused.value, f"{name} is not a {'directory' if kind == 'file' else 'file'}")
    assert snapshot(run_dir) == before
    if name == "checkpoints":       # the way out it names (the same for every kind)
        assert_finished(train.run(config(runs.data, runs.model, run_dir, overwrite_output_dir=True)), 0)


def test_a_run_whose_checkpoints_were_removed_says_it_starts_at_0(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    capsys.readouterr()
    with until_restored(), pytest.raises(Restored) as restored:
        train.run(config(runs.data, runs.model, run_dir))
    out = capsys.readouterr().out
    assert "has no checkpoint" in out and "starts at step 0" in out and restored.value.args[0] == 0
    assert not (run_dir / "steps.csv").exists()                        # no row of the steps it will train again


# ---- checkpoints and best weights that are not this run's; finishing; refusals that leave nothing ----------

def _files(directory, prefix):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith(prefix)}


def _set_aside(run_dir):
    return {p.name: p.read_bytes() for p in (run_dir / rundir.SET_ASIDE).rglob("*") if p.is_file()}


def test_another_runs_checkpoint_is_set_aside_and_the_run_resumes_from_its_own(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    foreign = _files(runs.other / "checkpoints", "ckpt-12.")
    for name, content in foreign.items():
        (run_dir / "checkpoints" / name).write_bytes(content)
    capsys.readouterr()
    stats = train.run(config(runs.data, runs.model, run_dir))
    out = capsys.readouterr().out
    assert "ckpt-12 (another run's (run id " in out and "set aside in " in out, out[-2000:]
    assert_finished(stats, 8)
    assert stats["weights_sha256"] == runs.whole["weights_sha256"]
    assert _set_aside(run_dir) == foreign                     # kept whole, out of the run's way


def test_a_misnamed_checkpoint_is_set_aside_never_destroyed_and_never_read(runs, tmp_path, capsys):
    """ckpt-14 holds step 8: intact, but not what its name says. It is passed over without being restored (a
    deferred restore would read it later), set aside whole, and the run resumes from ckpt-12."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    misnamed = {name.replace("ckpt-8.", "ckpt-14."): content
                for name, content in _files(run_dir / "checkpoints", "ckpt-8.").items()}
    for name, content in misnamed.items():
        (run_dir / "checkpoints" / name).write_bytes(content)
    capsys.readouterr()
    stats = train.run(config(runs.data, runs.model, run_dir))
    assert "ckpt-14 (it holds step 8): set aside in " in capsys.readouterr().out
    assert_finished(stats, STOP_AT)
    assert stats["weights_sha256"] == runs.whole["weights_sha256"]
    assert _set_aside(run_dir) == misnamed


def test_another_runs_best_weights_are_set_aside_and_forgotten(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    shutil.rmtree(run_dir / "best")
    shutil.copytree(runs.other / "best", run_dir / "best")
    capsys.readouterr()
    stats = train.run(config(runs.data, runs.model, run_dir))
    out = capsys.readouterr().out
    assert "holds another run's best weights" in out and "the best weights so far are forgotten" in out, out[-2000:]
    assert_finished(stats, STOP_AT)
    assert stats["best"]["step"] == STEPS               # validation picked anew: only step 16 was validated since
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best["run_id"] == json.loads((run_dir / rundir.IDENTITY).read_text())["run_id"]
    assert any(name.endswith(".index") for name in _set_aside(run_dir))


def test_a_run_killed_while_finishing_whose_best_json_is_then_damaged_finishes(runs, tmp_path):
    run_dir = tmp_path / "run"
    with patched(storage, "write_json", lambda original: lambda path, obj: (
            (_ for _ in ()).throw(Killed) if path.endswith(rundir.METRICS) else original(path, obj))):
        with pytest.raises(Killed):
            train.run(config(runs.data, runs.model, run_dir))
    (run_dir / "best" / "best.json").write_text("{")
    stats = train.run(config(runs.data, runs.model, run_dir))
    assert stats["global_step"] == STEPS and stats["best"]["step"] == STEPS and stats["exported"] == "best"


def test_a_resume_whose_best_was_forgotten_trains_on_under_early_stopping(runs, tmp_path):
    """Patience counts the validations logged since the best; with the best forgotten there are none, so the
    resume trains (it used to count every validation since step 0 and stop before a single step)."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    (run_dir / "best" / "best.json").unlink()
    stats = train.run(config(runs.data, runs.model, run_dir, early_stopping_patience=2))
    assert stats["resumed_from_step"] == STOP_AT and stats["global_step"] == STEPS and stats["stopped_early_at"] is None


@pytest.mark.parametrize("window, profiled", [((2, 4), False), ((10, 14), True)])
def test_a_profile_window_already_passed_is_not_an_error(window, profiled, runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    stats = train.run(config(runs.data, runs.model, run_dir, profile_steps=window))
    assert_finished(stats, STOP_AT)
    assert bool(list((run_dir / "logs" / "train").glob("plugins/profile/*/*.xplane.pb"))) == profiled


def test_a_refused_run_leaves_an_existing_empty_directory_empty(runs, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(UsageError, match="lies outside this run's steps 1..16"):
        train.run(config(runs.data, runs.model, run_dir, profile_steps=(40, 50)))
    with pytest.raises(UsageError, match="no TPU found"):         # refused once TensorFlow set up the strategy
        train.run(config(runs.data, runs.model, run_dir, strategy="tpu", tpu="local"))
    assert list(run_dir.iterdir()) == []
    with until_restored(), pytest.raises(Restored) as restored:          # and the next run there starts
        train.run(config(runs.data, runs.model, run_dir))
    assert restored.value.args[0] == 0


@pytest.mark.parametrize("name", ["checkpoints/ckpt-12.index", "run.json", "best/best.json", ".lock"])
def test_a_pipe_in_the_run_directory_is_refused_without_blocking(name, runs, tmp_path):
    from conftest import run_cli
    run_dir = tmp_path / "run"
    shutil.copytree(runs.stopped, run_dir)
    (run_dir / name).unlink(missing_ok=True)
    os.mkfifo(run_dir / name)
    before = snapshot(run_dir)
    result = run_cli("train", f"--data_dir={runs.data}", f"--model={runs.model}", f"--output_dir={run_dir}",
                     "--strategy=one_device", "--max_train_examples=256", "--per_replica_batch_size=32",
                     "--mixed_precision=none", timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert f"{run_dir}/{name} is not a regular file (a pipe, device or socket)" in result.stderr
    assert snapshot(run_dir) == before
