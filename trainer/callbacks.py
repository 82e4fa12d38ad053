"""Keras callbacks of a training run: per-step scalars and progress lines, a profile window, checkpoints
that are never written from non-finite values, and validation every N steps with the best weights and
early stopping.

Training runs one `fit` per epoch (each epoch has its own shuffled batch plan, and a resumed epoch
starts mid-plan), so these callbacks count global steps themselves: `start_epoch` tells them the
epoch's plan and the global step it starts at.
"""
import csv
import datetime
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from trainer import model as model_lib
from trainer import flops, rundir, schema, storage
from trainer.data.stream import BatchPlan
from trainer.errors import Diverged

STEP_SCALARS = ("loss", "accuracy", "learning_rate", "examples_per_sec", "real_tokens_per_sec",
                "padded_tokens_per_sec", "padding_efficiency", "model_flops_per_sec", "model_flops_per_sec_real",
                "mfu", "mfu_real")
VALIDATION_SCALARS = ("loss", "accuracy", "f1")
WINDOWED = ("loss", "accuracy")


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


class EpochAware(tf_keras.callbacks.Callback):
    plan: BatchPlan | None = None
    first_step: int = 0   # global step before this epoch's first batch

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        self.plan, self.first_step = plan, first_step

    def global_step(self, batch: int) -> int:
        """Steps done after Keras reports `batch` (0-based within this fit) as finished."""
        return self.first_step + batch + 1


class StepLogger(EpochAware):
    """Every log_every_steps: loss and accuracy over the steps since the last log (Keras' running means since
    the fit began, differenced and weighted by each step's rows: exact), learning rate, examples/s, real and
    padded tokens/s, padding efficiency, to TensorBoard (logs/train) and steps.csv, and a progress line.

    Token counts come from the batch plan. Throughput counts only the time inside train steps (not validation
    or checkpoints), and the run's first step (tracing and compilation) is timed apart (first_step_seconds).
    """

    def __init__(self, log_dir: str, csv_path: str, log_every_steps: int, total_steps: int, is_chief: bool = True):
        super().__init__()
        self.csv_path, self.log_every_steps, self.total_steps, self.is_chief = csv_path, log_every_steps, total_steps, is_chief
        self.writer = tf.summary.create_file_writer(log_dir) if is_chief else None
        self.first_step_seconds = None
        self.totals = {"examples": 0, "real_tokens": 0, "padded_tokens": 0, "flops": 0.0, "real_flops": 0.0,
                       "seconds": 0.0}
        self.model_config = None

    def count_flops(self, model_config, lengths, peak_flops: float) -> None:
        """Also log model FLOP/s and MFU, on padded tokens (what the devices computed) and on real ones."""
        self.model_config, self.lengths, self.peak_flops = model_config, lengths, peak_flops

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        super().start_epoch(plan, first_step)
        self.rows_done = np.concatenate([[0], np.cumsum(plan.examples)])   # rows of this fit after k steps
        self.logged = {"step": first_step, "rows": 0, "loss": 0.0, "accuracy": 0.0}
        self.timed = {"step": first_step, "seconds": 0.0}
        self.previous_step = first_step
        self.wall = (first_step, time.perf_counter())   # the ETA counts everything: validation, checkpoints too

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds, step = time.perf_counter() - self.batch_start, self.global_step(batch)
        if self.first_step_seconds is None:          # the run's first call: tracing and compilation
            self.first_step_seconds = seconds
            self.timed = {"step": step, "seconds": 0.0}
        else:
            self.timed["seconds"] += seconds
        if step // self.log_every_steps > self.previous_step // self.log_every_steps or step == self.total_steps:
            self._log(step, logs or {})
        self.previous_step = step

    @staticmethod
    def _mfu_text(row: dict) -> str:
        return f"  MFU {row['mfu']:.1%}" if "mfu" in row and row["mfu"] == row["mfu"] else ""

    def _window(self, step: int, logs: dict) -> dict:
        """Mean loss and accuracy over the rows of the steps since the last log."""
        rows = int(self.rows_done[step - self.first_step])
        totals = {key: float(logs.get(key, np.nan)) * rows for key in WINDOWED}
        means = {key: (totals[key] - self.logged[key]) / max(1, rows - self.logged["rows"]) for key in WINDOWED}
        self.logged = {"step": step, "rows": rows, **totals}
        return means

    def _log(self, step: int, logs: dict) -> None:
        row = {"step": step, **self._window(step, logs)}
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        row["learning_rate"] = float(rate(optimizer.iterations) if callable(rate) else rate)
        timed = slice(self.timed["step"] - self.first_step, step - self.first_step)
        seconds = self.timed["seconds"]
        if seconds > 0:
            counts = {"examples": int(self.plan.examples[timed].sum()),
                      "real_tokens": int(self.plan.real_tokens[timed].sum()),
                      "padded_tokens": int(self.plan.padded_tokens[timed].sum()), "seconds": seconds}
            if self.model_config is not None:
                counts["real_flops"], counts["flops"] = flops.plan_flops(self.model_config, self.plan, self.lengths, timed)
                row.update(model_flops_per_sec=counts["flops"] / seconds,
                           model_flops_per_sec_real=counts["real_flops"] / seconds,
                           mfu=flops.mfu(counts["flops"] / seconds, self.peak_flops),
                           mfu_real=flops.mfu(counts["real_flops"] / seconds, self.peak_flops))
            for key, value in counts.items():
                self.totals[key] += value
            row.update(examples_per_sec=counts["examples"] / seconds, real_tokens_per_sec=counts["real_tokens"] / seconds,
                       padded_tokens_per_sec=counts["padded_tokens"] / seconds,
                       padding_efficiency=counts["real_tokens"] / max(1, counts["padded_tokens"]))
            wall_step, wall_start = self.wall
            eta = datetime.timedelta(seconds=round((self.total_steps - step) * (time.perf_counter() - wall_start)
                                                   / max(1, step - wall_step)))
        self.wall = (step, time.perf_counter())
        self.timed = {"step": step, "seconds": 0.0}
        if not self.is_chief:
            return
        logging.info("step %d/%d  loss %.4f  accuracy %.4f%s", step, self.total_steps, row["loss"], row["accuracy"],
                     f"  {row['examples_per_sec']:.1f} examples/s{self._mfu_text(row)}  ETA {eta}" if seconds > 0 else "")
        with self.writer.as_default(step=step):
            for name in STEP_SCALARS:
                if name in row:
                    tf.summary.scalar(name, row[name])
        self.writer.flush()
        append_csv(self.csv_path, ["step", *STEP_SCALARS], row)


class EpochProgbar(tf_keras.callbacks.ProgbarLogger):
    """Keras' progress bar (on a terminal), headed `Epoch e/E` of the whole run although each fit is one epoch."""

    def __init__(self, epochs: int):
        super().__init__(count_mode="steps")
        self.run_epochs = epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.run_epochs


class Profile(EpochAware):
    """A TensorBoard profile of global steps [start, stop], under log_dir/plugins/profile/."""

    def __init__(self, log_dir: str, start: int, stop: int):
        super().__init__()
        self.log_dir, self.start, self.stop, self.running = log_dir, start, stop, False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.running and self.start <= self.global_step(batch) <= self.stop:
            tf.profiler.experimental.start(self.log_dir)
            self.running = True

    def on_train_batch_end(self, batch, logs=None):
        if self.running and self.global_step(batch) >= self.stop:
            self.on_train_end()

    def on_train_end(self, logs=None):
        if self.running:
            tf.profiler.experimental.stop()
            self.running = False


class Checkpoint(EpochAware):
    """Save weights, optimizer and step every `every_steps` global steps (and on request), never from
    non-finite values: a non-finite loss, or weights that are not all finite at a save, end the run with
    Diverged naming the last checkpoint (all of whose weights were checked finite when it was written).

    Every worker must take part in a save (it runs collective ops), with the same calls: the chief's
    manager writes to the run's directory, the others' to a scratch directory emptied after each save.
    `on_saved` runs after each save (a bucket run directory uploads it).
    """

    def __init__(self, manager: tf.train.CheckpointManager, every_steps: int, is_chief: bool, on_saved=lambda: None):
        super().__init__()
        self.manager, self.every_steps, self.is_chief, self.on_saved = manager, every_steps, is_chief, on_saved
        self.saved_step, self.stop_requested = None, False

    def request_stop(self, signum=None, frame=None) -> None:
        """A signal handler (SIGTERM: preemption): save after the current step, then stop training."""
        self.stop_requested = True

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        super().start_epoch(plan, first_step)
        self.previous_step = first_step

    def on_train_batch_end(self, batch, logs=None):
        step = self.global_step(batch)   # may advance by steps_per_execution at a time
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise self.diverged(f"the loss became {loss} at step {step}")
        if self.stop_requested or step // self.every_steps > self.previous_step // self.every_steps:
            self.save(step)
        if self.stop_requested:
            self.model.stop_training = True
        self.previous_step = step

    def diverged(self, what: str) -> Diverged:
        kept = self.manager.latest_checkpoint
        if not self.is_chief:          # its checkpoints are scratch copies
            last = "the chief names the last intact checkpoint"
        elif kept:
            last = (f"the last checkpoint, {os.path.basename(kept)}, holds finite weights and optimizer state: lower "
                    "the rate and rerun to resume from it")
        else:
            last = "no checkpoint was written"
        return Diverged(f"{what}: lower --learning_rate (with fp16, try --mixed_precision=bf16); {last}")

    def save(self, step: int) -> None:
        if step == self.saved_step:
            return
        if not model_lib.weights_are_finite(self.model):
            raise self.diverged(f"the weights or the optimizer state are not all finite after step {step}")
        self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            _empty(self.manager.directory)
        self.saved_step = step
        self.on_saved()


def _empty(directory: str) -> None:
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


class Best:
    """The best weights by a validation metric, kept apart from the rolling checkpoints (RUN/best/ckpt-STEP, with
    best/best.json naming their step, metric and value), so max_to_keep never deletes them and a resume keeps them.
    A new best is written whole before best.json names it, and only then is the old one removed, so a kill at any
    point leaves a best.json naming an intact checkpoint.

    Every worker reads the run's best.json (all must take the same decisions) and saves at the same steps
    (saving is collective): the chief into RUN/best, the others into a scratch directory of their own.
    """

    def __init__(self, classifier, run_best_dir: str, metric: str, resumed_step: int, save_dir: str | None = None):
        self.metric, self.run_best_dir, self.resumed_step = metric, run_best_dir, resumed_step
        self.checkpoint = tf.train.Checkpoint(layers=list(classifier.layers))   # weights only, not the optimizer
        self.save_dir, self.is_chief = save_dir or run_best_dir, save_dir is None
        self.step = self.value = None
        kept, problem = self._kept()
        if problem:
            print(f"{run_best_dir} {problem}: the best weights so far are forgotten; validation picks anew", flush=True)
        elif kept and kept["step"] <= resumed_step:     # else: from steps a resume repeats
            self.step, self.value = kept["step"], kept["value"]

    def _kept(self) -> tuple[dict | None, str | None]:
        """best.json if it is sound and names an intact checkpoint of this metric, and else what is wrong."""
        path = os.path.join(self.run_best_dir, rundir.BEST_INFO)
        if not os.path.exists(path):
            return None, ("(best.json is missing)" if rundir.checkpoint_numbers(self.run_best_dir) else None)
        kept = storage.read_json(path)
        problem = schema.problem(kept, schema.BEST) if kept is not None else "best.json is not JSON"
        if problem:
            return None, f"({rundir.BEST_INFO}: {problem})"
        if kept["metric"] != self.metric:
            return None, f"holds the best by {kept['metric']}, not {self.metric}"
        damage = rundir.checkpoint_problem(os.path.join(self.run_best_dir, f"ckpt-{kept['step']}"))
        return (None, f"(ckpt-{kept['step']}: {damage})") if damage else (kept, None)

    def improves(self, metrics: dict) -> bool:
        value = metrics[self.metric]
        return self.value is None or (value < self.value if self.metric == "loss" else value > self.value)

    def keep(self, step: int, metrics: dict) -> None:
        self.checkpoint.write(os.path.join(self.save_dir, f"ckpt-{step}"))
        self.step, self.value = step, metrics[self.metric]
        if self.is_chief:
            storage.write_json(os.path.join(self.run_best_dir, rundir.BEST_INFO), self.summary())
        for number in rundir.checkpoint_numbers(self.save_dir):
            if number != step:
                rundir.remove_checkpoint(self.save_dir, number)

    def summary(self) -> dict:
        return {"step": self.step, "metric": self.metric, "value": self.value}

    def restore(self) -> None:
        """Put the best weights back into the model (from this worker's own save)."""
        self.checkpoint.read(os.path.join(self.save_dir, f"ckpt-{self.step}")).expect_partial()


class Validation(EpochAware):
    """Validate every `every_steps` global steps (and, when asked, at the end): loss, accuracy and f1 to
    TensorBoard (logs/validation, at the global step), validation.csv and a log line; keep the best weights;
    stop after `patience` validations without improvement. Every worker validates (it is collective under
    multi-worker and its sums are all-reduced, so every worker takes the same decisions); the chief writes."""

    def __init__(self, scorer, batches, every_steps: int, best: Best, patience: int | None, log_dir: str,
                 csv_path: str, is_chief: bool, after_validation=lambda: None):
        super().__init__()
        self.scorer, self.batches, self.every_steps, self.best, self.patience = scorer, batches, every_steps, best, patience
        self.csv_path, self.is_chief, self.after_validation = csv_path, is_chief, after_validation
        self.writer = tf.summary.create_file_writer(log_dir) if is_chief else None
        resumed = best.resumed_step
        logged = [int(row["step"]) for row in csv_steps(csv_path)]
        self.validated_step = resumed if resumed in logged else None     # a rerun of a finished training
        self.without_improvement = resumed // every_steps - (best.step or 0) // every_steps
        self.stopped_early_at = resumed if patience and resumed and self.without_improvement >= patience else None

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        super().start_epoch(plan, first_step)
        self.previous_step = first_step

    def on_train_batch_end(self, batch, logs=None):
        step = self.global_step(batch)
        if step // self.every_steps > self.previous_step // self.every_steps:
            self.validate(step)
        self.previous_step = step

    def validate(self, step: int) -> dict:
        metrics = self.scorer.score(self.batches)
        self.validated_step = step
        improved = self.best.improves(metrics)
        if improved:
            self.best.keep(step, metrics)
        self.without_improvement = 0 if improved else self.without_improvement + 1
        if self.patience and self.without_improvement >= self.patience:
            self.model.stop_training, self.stopped_early_at = True, step
        if self.is_chief:
            logging.info("validation at step %d: loss %.4f  accuracy %.4f  f1 %.4f%s", step, metrics["loss"],
                         metrics["accuracy"], metrics["f1"], "  (best so far)" if improved else
                         f"  (best: step {self.best.step}{', stopping early' if self.stopped_early_at else ''})")
            with self.writer.as_default(step=step):
                for name in VALIDATION_SCALARS:
                    tf.summary.scalar(name, metrics[name])
            self.writer.flush()
            append_csv(self.csv_path, ["step", *VALIDATION_SCALARS, "examples"], {"step": step, **metrics})
        self.after_validation()
        return metrics
