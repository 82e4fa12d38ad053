"""What the training loop (`train.Loop`) calls when a step is due: the meter that counts what the steps did,
per-step scalars and progress lines, checkpoints that are never written from non-finite values, validation
with the best weights. None of these decides *when*: the loop does, in one place.
"""
import csv
import datetime
import hashlib
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from trainer import model as model_lib
from trainer import flops, rundir, schema, storage
from trainer.data.stream import BatchPlan
from trainer.errors import Diverged, UsageError

STEP_SCALARS = ("loss", "accuracy", "grad_norm", "clipped_fraction", "learning_rate", "examples_per_sec",
                "real_tokens_per_sec", "padded_tokens_per_sec", "padding_efficiency", "model_flops_per_sec",
                "model_flops_per_sec_real", "mfu", "mfu_real")
VALIDATION_SCALARS = ("loss", "accuracy", "f1")
COUNTED = ("examples", "real_tokens", "padded_tokens", "flops", "real_flops")      # by the host, from the plan
SUMMED = ("loss", "correct", "grad_norm", "normed_steps", "clipped", "steps")       # by the device (step.SUMS)


def append_csv(path: str, fields, row: dict) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read_csv(path: str) -> tuple[list[str], list[dict], int]:
    """(header, the rows whose step reads as a number and that have every field, how many rows there are)."""
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    readable = [row for row in rows if None not in row.values() and None not in row
                and str(row.get("step", "")).isdigit()]
    return header, readable, len(rows)


def csv_steps(path: str) -> list[dict]:
    """The rows of one of the run's CSVs that read back (not a row cut short by a kill, nor garbage); [] for a
    missing file."""
    return _read_csv(path)[1] if os.path.exists(path) else []


def drop_csv_rows_after(path: str, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop the killed run's rows for them, and any row
    (or a whole file) that does not read back."""
    if not os.path.exists(path):
        return
    header, rows, count = _read_csv(path)
    kept = [row for row in rows if int(row["step"]) <= step]
    if "step" in header and len(kept) == count:
        return
    os.remove(path)
    for row in kept:
        append_csv(path, header, row)


class Meter:
    """Counts, once, what the steps done processed: rows (examples), real and padded tokens, model FLOPs (real and
    padded) and this worker's rows in order (a digest), from the plan, on the host, at every step; and, at the
    loop's sync points, what the device summed over the steps since the last one (loss, correct predictions,
    examples, the gradient's norms and how many steps were clipped: step.OptimizerStep) and the seconds they took.
    The run's first sync (tracing and compilation) is timed apart: `timed` leaves it out, `done` does not. A
    progress line reads the `window` since the last one; the run's stats read the totals."""

    def __init__(self, model_config, lengths: np.ndarray, worker_index: int = 0):
        self.model_config, self.lengths, self.worker_index = model_config, lengths, worker_index   # lengths: clipped
        self.done = dict.fromkeys(COUNTED + SUMMED, 0.0)
        self.timed = dict.fromkeys(COUNTED + ("seconds",), 0.0)
        self.pending = dict.fromkeys(COUNTED, 0.0)          # counted since the last sync, not yet timed
        self.first_step_seconds, self.shapes, self.truncated_rows = None, set(), 0
        self.rows_digest = hashlib.sha256()
        self.marks = (dict(self.done), dict(self.timed))

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        """A fit over `plan` begins after global step `first_step`."""
        self.first_step = first_step
        real_flops, padded_flops = flops.step_flops(self.model_config, plan, self.lengths)
        per_step = {"examples": plan.examples, "real_tokens": plan.real_tokens, "padded_tokens": plan.padded_tokens,
                    "real_flops": real_flops, "flops": padded_flops}
        self.before = {key: np.concatenate([[0], np.cumsum(values)]) for key, values in per_step.items()}  # k steps
        self.shard_rows, self.shard_rows_before = (plan.shard_rows(self.worker_index),
                                                   np.concatenate([[0], np.cumsum(plan.shard_example_counts(self.worker_index))]))
        self.shapes |= plan.shapes()
        self.truncated_rows = plan.truncated_rows

    def count(self, previous: int, step: int) -> None:
        """Steps previous+1..step are done (host counts only: nothing waits for the device)."""
        start, stop = previous - self.first_step, step - self.first_step
        for key, before in self.before.items():
            self.pending[key] += float(before[stop] - before[start])
        self.rows_digest.update(self.shard_rows[self.shard_rows_before[start]:self.shard_rows_before[stop]]
                                .astype(np.int64).tobytes())

    def sync(self, seconds: float, sums: dict) -> None:
        """The steps counted since the last sync took `seconds`; `sums`: what the device summed over them."""
        for key in SUMMED:
            self.done[key] += sums[key]
        for key, value in self.pending.items():
            self.done[key] += value
            if self.first_step_seconds is not None:
                self.timed[key] += value
        if self.first_step_seconds is None:
            self.first_step_seconds = seconds
        else:
            self.timed["seconds"] += seconds
        self.pending = dict.fromkeys(COUNTED, 0.0)

    def window(self) -> dict:
        """Mean loss, accuracy and gradient norm over the window since the last one, and its timed rates."""
        done, timed = ({key: now[key] - mark[key] for key in now} for now, mark in zip((self.done, self.timed),
                                                                                         self.marks))
        self.marks = (dict(self.done), dict(self.timed))
        return {**means(done), **rates(timed)} if timed["seconds"] > 0 else means(done)


def means(sums: dict) -> dict:
    """Loss and accuracy per example, the gradient's norm per step (steps with a finite one), clipped steps' share."""
    return {"loss": sums["loss"] / max(1, sums["examples"]), "accuracy": sums["correct"] / max(1, sums["examples"]),
            "grad_norm": sums["grad_norm"] / sums["normed_steps"] if sums["normed_steps"] else float("nan"),
            "clipped_fraction": sums["clipped"] / max(1, sums["steps"])}


def rates(counts: dict) -> dict:
    """Per-second rates of counts that hold their seconds (MFU divides model_flops_per_sec by the peak)."""
    seconds = counts["seconds"]
    return {"examples_per_sec": counts["examples"] / seconds, "real_tokens_per_sec": counts["real_tokens"] / seconds,
            "padded_tokens_per_sec": counts["padded_tokens"] / seconds,
            "padding_efficiency": counts["real_tokens"] / max(1, counts["padded_tokens"]),
            "model_flops_per_sec": counts["flops"] / seconds, "model_flops_per_sec_real": counts["real_flops"] / seconds}


class StepLogger:
    """A log step's scalars (the meter's window, the learning rate, MFU against `peak_flops`) to TensorBoard
    (logs/train), steps.csv and a progress line with an ETA (wall clock: validation and checkpoints count)."""

    def __init__(self, log_dir: str, csv_path: str, total_steps: int, peak_flops: float, first_step: int = 0):
        self.csv_path, self.total_steps, self.peak_flops = csv_path, total_steps, peak_flops
        self.writer = tf.summary.create_file_writer(log_dir)
        self.wall = (first_step, time.perf_counter())

    def log(self, step: int, window: dict, optimizer) -> None:
        rate = optimizer.learning_rate
        row = {"step": step, **window, "learning_rate": float(rate(optimizer.iterations) if callable(rate) else rate)}
        progress = ""
        if "model_flops_per_sec" in row:
            row.update(mfu=flops.mfu(row["model_flops_per_sec"], self.peak_flops),
                       mfu_real=flops.mfu(row["model_flops_per_sec_real"], self.peak_flops))
            wall_step, wall_start = self.wall
            eta = datetime.timedelta(seconds=round((self.total_steps - step) * (time.perf_counter() - wall_start)
                                                   / max(1, step - wall_step)))
            mfu = f"  MFU {row['mfu']:.1%}" if row["mfu"] == row["mfu"] else ""
            progress = f"  {row['examples_per_sec']:.1f} examples/s{mfu}  ETA {eta}"
        self.wall = (step, time.perf_counter())
        logging.info("step %d/%d  loss %.4f  accuracy %.4f  grad_norm %.3f%s", step, self.total_steps, row["loss"],
                     row["accuracy"], row["grad_norm"], progress)
        with self.writer.as_default(step=step):
            for name in STEP_SCALARS:
                if name in row:
                    tf.summary.scalar(name, row[name])
        self.writer.flush()
        append_csv(self.csv_path, ["step", *STEP_SCALARS], row)


    def recovered(self, step: int, factor: float) -> None:
        """A recovery resumed the run at `step` with the learning rate times `factor` (TensorBoard)."""
        with self.writer.as_default(step=step):
            tf.summary.scalar("recovery_rate_factor", factor)
        self.writer.flush()
        self.wall = (step, time.perf_counter())


class EpochProgbar(tf_keras.callbacks.ProgbarLogger):
    """Keras' progress bar (on a terminal), headed `Epoch e/E` of the whole run although each fit is one epoch."""

    def __init__(self, epochs: int):
        super().__init__(count_mode="steps")
        self.run_epochs = epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.run_epochs


class RunStamp(tf.train.experimental.PythonState):
    """The run id a checkpoint carries (rundir.STAMP), so that another run's checkpoints or best weights copied
    into a run directory are known as such before anything is restored from them."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id or ""

    def serialize(self):
        return self.run_id

    def deserialize(self, value):
        pass                     # a run keeps its own id; rundir reads a file's id without restoring it


class Checkpoints:
    """Saves weights, optimizer and step, never from non-finite values (weights or optimizer state not all finite
    at a save are a divergence: `save` says so and writes nothing), and knows which checkpoints a recovery may
    resume from: the one the run resumed from and the ones saved since, as many as the manager keeps.

    Every worker must take part in a save (it runs collective ops), with the same calls: the chief's
    manager writes to the run's directory, the others' to a scratch directory of their own (each worker restores
    its own copy when the run recovers from a divergence). `on_saved` runs after each save (a bucket run
    directory uploads it).
    """

    def __init__(self, model, manager: tf.train.CheckpointManager, run_checkpoints: str, resumed_step: int,
                 keep: int = 2, on_saved=lambda: None):
        self.model, self.manager, self.keep, self.on_saved = model, manager, keep, on_saved   # keep: max_to_keep
        self.saved_step = resumed_step or None
        self.kept = [(resumed_step, run_checkpoints)] if resumed_step else []      # (step, directory), oldest first

    def save(self, step: int) -> bool:
        """Save the step's checkpoint; False (nothing written) if the weights or optimizer state are not finite."""
        if step in (self.saved_step, 0):              # saved already, or nothing trained yet
            return True
        if not model_lib.weights_are_finite(self.model):
            return False
        try:
            self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise storage.no_space(e, self.manager.directory) or e
        self.saved_step = step
        self.kept = [*self.kept, (step, self.manager.directory)][-self.keep:]
        self.on_saved()
        return True

    def rewind(self, step: int) -> None:
        """A recovery resumed from checkpoint `step` (0: the initial weights). Later ones hold steps it trains anew:
        they go, and the manager forgets them, so that a kill before they are saved again resumes from `step`, as
        the run itself goes on from it."""
        self.kept = [(n, directory) for n, directory in self.kept if n <= step]
        self.saved_step = step or None
        directory, numbers = self.manager.directory, rundir.checkpoint_numbers(self.manager.directory)
        later = [n for n in numbers if n > step]
        if not later:
            return
        for number in later:
            rundir.remove_checkpoint(directory, number)
        logging.info("removed %s: the recovery trains their steps again", ", ".join(f"ckpt-{n}" for n in later))
        rundir.point_to(directory, sorted(n for n in numbers if n <= step))
        self.manager = tf.train.CheckpointManager(self.manager.checkpoint, directory, max_to_keep=self.keep)


class Recovery:
    """Recovery from divergence (TF Model Garden's RecoveryAction). A divergence (a non-finite loss, weights or
    optimizer state, or a step's loss above the bound) resumes the run from the newest checkpoint it may (one that
    diverged again within the checkpoint interval after a recovery from it is passed over for the one before it;
    the initial weights when none is left) with the learning rate times FACTOR, at most `max_trials` times; then
    the run stops in one line naming what resumes it. The recoveries are the run's state (RUN/recoveries.json):
    a resume keeps the lowered rate, and a run that stopped diverged is resumed by the same command with more
    trials allowed."""
    FACTOR = 0.5

    def __init__(self, path: str, url: str, max_trials: int, checkpoint_every: int, is_chief: bool):
        self.path, self.max_trials, self.every, self.is_chief = path, max_trials, checkpoint_every, is_chief
        state = rundir.read_state(path, f"{url}/{rundir.RECOVERIES}", schema.RECOVERIES) or {"recoveries": []}
        self.entries, self.stopped = state["recoveries"], state.get("stopped")

    @property
    def rate_factor(self) -> float:
        return self.entries[-1]["rate_factor"] if self.entries else 1.0

    @property
    def trials_left(self) -> bool:
        return len(self.entries) < self.max_trials

    def choose(self, step: int, kept: list[tuple[int, str]]) -> tuple[int, str | None]:
        """(checkpoint step, its directory) to resume from after a divergence at `step`; (0, None): initial."""
        for number, directory in reversed(kept):
            if not self._diverged_again(number, step):
                return number, directory
        return 0, None

    def _diverged_again(self, number: int, step: int) -> bool:
        """The last recovery resumed from `number`, and the run diverged again within the checkpoint interval
        after it. (Checkpoints newer than the one a recovery resumed from were saved after it: other files.)"""
        last = self.entries[-1]["resumed_from"] if self.entries else None
        return last == number and step <= number + self.every

    def record(self, step: int, why: str, resumed_from: int) -> str:
        """Record a recovery; the line that says it."""
        self.entries.append({"step": step, "why": why, "resumed_from": resumed_from,
                             "rate_factor": self.rate_factor * self.FACTOR})
        self.stopped = None
        self._write()
        return (f"recovery {len(self.entries)}/{self.max_trials}: {why}; resuming from {_named(resumed_from)} with "
                f"the learning rate x{self.rate_factor:g}")

    def stop(self, step: int, why: str, resumable_from: int) -> Diverged:
        """No trial left: record where the run stopped; the one line that says what resumes it."""
        self.stopped = {"step": step, "why": why}
        self._write()
        return Diverged(f"{why}: {self.resume_hint(resumable_from)}")

    def resume_hint(self, resumable_from: int) -> str:
        spent = (f"{len(self.entries)} of --recovery_max_trials={self.max_trials} recoveries spent (learning rate "
                 f"x{self.rate_factor:g}); " if self.max_trials else "")
        return (f"{spent}rerun with --recovery_max_trials={len(self.entries) + 1} (or more) to resume from "
                f"{_named(resumable_from)} at x{self.rate_factor * self.FACTOR:g} the learning rate, or start afresh "
                "with other settings (--overwrite_output_dir)")

    def summary(self) -> list[dict]:
        return list(self.entries)

    def _write(self) -> None:
        if self.is_chief:
            storage.write_json(self.path, {"recoveries": self.entries, "stopped": self.stopped})


def _named(step: int) -> str:
    return f"ckpt-{step}" if step else "the initial weights"


class Best:
    """The best weights by a validation metric, kept apart from the rolling checkpoints (RUN/best/ckpt-STEP, with
    best/best.json naming their step, metric and value), so max_to_keep never deletes them and a resume keeps them.
    A new best is written whole before best.json names it, and only then is the old one removed, so a kill at any
    point leaves a best.json naming an intact checkpoint.

    Every worker reads the run's best.json (all must take the same decisions) and saves at the same steps
    (saving is collective): the chief into RUN/best, the others into a scratch directory of their own.
    """

    def __init__(self, classifier, run_best_dir: str, metric: str, resumed_step: int, run_id: str | None = None,
                 save_dir: str | None = None, set_aside=None):
        self.metric, self.run_best_dir, self.resumed_step, self.run_id = metric, run_best_dir, resumed_step, run_id
        self.checkpoint = tf.train.Checkpoint(layers=list(classifier.layers), run=RunStamp(run_id))   # no optimizer
        self.save_dir, self.is_chief = save_dir or run_best_dir, save_dir is None
        self.step = self.value = None
        kept, problem = self._kept()
        if problem and problem.startswith("holds another run's") and set_aside:
            problem += f": set aside in {set_aside(run_best_dir, kept['step'])}"
        if problem:
            print(f"{run_best_dir} {problem}: the best weights so far are forgotten; validation picks anew", flush=True)
        else:
            self.rewind(resumed_step, kept)

    def rewind(self, step: int, kept: dict | None = None) -> None:
        """The run goes on from `step` (a resume, a recovery): the best so far is the kept one, if it is from a step
        up to `step` (else from steps the run will train again)."""
        kept = kept or self._kept()[0]
        self.step = self.value = None
        if kept and kept["step"] <= step and (kept.get("run_id") == self.run_id or not self.run_id):
            self.step, self.value = kept["step"], kept["value"]

    def _kept(self) -> tuple[dict | None, str | None]:
        """best.json if it is sound and names an intact checkpoint of this metric and this run, and else what is
        wrong (with best.json, if it is sound, for another run's)."""
        path = os.path.join(self.run_best_dir, rundir.BEST_INFO)
        if not os.path.exists(path):
            return None, ("(best.json is missing)" if rundir.checkpoint_numbers(self.run_best_dir) else None)
        kept = storage.read_json(path)
        problem = schema.problem(kept, schema.BEST) if kept is not None else "best.json is not JSON"
        if problem:
            return None, f"({rundir.BEST_INFO}: {problem})"
        if kept["metric"] != self.metric:
            return None, f"holds the best by {kept['metric']}, not {self.metric}"
        prefix = os.path.join(self.run_best_dir, f"ckpt-{kept['step']}")
        damage = rundir.checkpoint_problem(prefix)
        if damage:
            return None, f"(ckpt-{kept['step']}: {damage})"
        owner = {kept.get("run_id"), rundir.checkpoint_run_id(prefix)}
        if self.run_id and owner != {self.run_id}:
            return kept, f"holds another run's best weights (run id {' / '.join(sorted(map(str, owner)))})"
        return kept, None

    def improves(self, metrics: dict) -> bool:
        value = metrics[self.metric]
        return self.value is None or (value < self.value if self.metric == "loss" else value > self.value)

    def keep(self, step: int, metrics: dict) -> None:
        try:
            self.checkpoint.write(os.path.join(self.save_dir, f"ckpt-{step}"))
        except (tf.errors.OpError, OSError) as e:
            raise storage.no_space(e, self.save_dir) or e
        self.step, self.value = step, metrics[self.metric]
        if self.is_chief:
            storage.write_json(os.path.join(self.run_best_dir, rundir.BEST_INFO), {**self.summary(),
                                                                                 "run_id": self.run_id})
        for number in rundir.checkpoint_numbers(self.save_dir):
            if number != step:
                rundir.remove_checkpoint(self.save_dir, number)

    def summary(self) -> dict:
        return {"step": self.step, "metric": self.metric, "value": self.value}

    def restore(self) -> None:
        """Put the best weights back into the model (from this worker's own save)."""
        self.checkpoint.read(os.path.join(self.save_dir, f"ckpt-{self.step}")).expect_partial()


class Validation:
    """Scores the validation split: loss, accuracy and f1 to TensorBoard (logs/validation, at the global step),
    validation.csv and a log line; keeps the best weights; counts validations without improvement. Every worker
    validates (it is collective under multi-worker and its sums are all-reduced, so every worker takes the same
    decisions); the chief writes."""

    def __init__(self, scorer, batches, best: Best, log_dir: str, csv_path: str, is_chief: bool,
                 after_validation=lambda: None):
        self.scorer, self.batches, self.best, self.csv_path = scorer, batches, best, csv_path
        self.is_chief, self.after_validation = is_chief, after_validation
        self.writer = tf.summary.create_file_writer(log_dir) if is_chief else None
        self._count(best.resumed_step)

    def rewind(self, step: int) -> None:
        """The run goes on from `step` (a recovery), its CSV rows after it dropped."""
        self.best.rewind(step)
        self._count(step)

    def _count(self, resumed: int) -> None:
        best_step = self.best.step
        logged = [int(row["step"]) for row in csv_steps(self.csv_path)]     # the rows up to the resumed step
        # A rerun of a finished training need not validate its last step again, if the best weights are known.
        self.validated_step = resumed if resumed in logged and best_step else None
        # Validations since the best, as logged (the interval may have changed; forgotten best weights: none).
        self.without_improvement = sum(best_step < step <= resumed for step in logged) if best_step else 0

    def validate(self, step: int) -> dict:
        metrics = self.scorer.score(self.batches)
        self.validated_step = step
        improved = self.best.improves(metrics)
        if improved:
            self.best.keep(step, metrics)
        self.without_improvement = 0 if improved else self.without_improvement + 1
        if self.is_chief:
            logging.info("validation at step %d: loss %.4f  accuracy %.4f  f1 %.4f%s", step, metrics["loss"],
                         metrics["accuracy"], metrics["f1"], "  (best so far)" if improved else
                         f"  (best: step {self.best.step})")
            with self.writer.as_default(step=step):
                for name in VALIDATION_SCALARS:
                    tf.summary.scalar(name, metrics[name])
            self.writer.flush()
            append_csv(self.csv_path, ["step", *VALIDATION_SCALARS, "examples"], {"step": step, **metrics})
        self.after_validation()
        return metrics
