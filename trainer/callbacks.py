"""Keras callbacks: per-step scalars (TensorBoard + CSV), a profile window, step checkpoints.

Training runs one `fit` per epoch (each epoch has its own shuffled batch plan, and a resumed
epoch starts mid-plan), so these callbacks count global steps themselves: `start_epoch` tells
them the epoch's plan and the global step it starts at.
"""
import csv
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf
import tf_keras

from trainer.cli import UsageError
from trainer.data.stream import BatchPlan

STEP_SCALARS = ("loss", "accuracy", "learning_rate", "examples_per_sec", "real_tokens_per_sec",
                "padded_tokens_per_sec", "padding_efficiency")


class EpochAware(tf_keras.callbacks.Callback):
    plan: BatchPlan | None = None
    first_step: int = 0   # global step before this epoch's first batch

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        self.plan, self.first_step = plan, first_step

    def global_step(self, batch: int) -> int:
        """Steps done after Keras reports `batch` (0-based within this fit) as finished."""
        return self.first_step + batch + 1


class StepLogger(EpochAware):
    """Every log_every_steps: loss, accuracy, learning rate, examples/s, real and padded tokens/s,
    padding efficiency, to TensorBoard (logs/train) and steps.csv.

    Token counts come from the batch plan, so they are exact and cost nothing per step. The first
    step of the run (tracing and compilation) is timed apart, as `first_step_seconds`.
    """

    def __init__(self, log_dir: str, csv_path: str, log_every_steps: int, enabled: bool = True):
        super().__init__()
        self.log_every_steps, self.enabled, self.csv_path = log_every_steps, enabled, csv_path
        self.writer = tf.summary.create_file_writer(log_dir) if enabled else None
        self.last_step, self.last_time = None, None
        self.first_step_seconds = None
        self.totals = {"examples": 0, "real_tokens": 0, "padded_tokens": 0, "seconds": 0.0}

    def on_train_batch_begin(self, batch, logs=None):
        if self.last_time is None:
            self.last_time, self.last_step = time.perf_counter(), self.first_step + batch

    def on_train_batch_end(self, batch, logs=None):
        step = self.global_step(batch)
        if self.first_step_seconds is None:          # the run's first call: tracing + compilation
            self.first_step_seconds = time.perf_counter() - self.last_time
            self.last_time, self.last_step = time.perf_counter(), step
            return
        if step // self.log_every_steps > self.last_step // self.log_every_steps:
            self._log(step, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        self.last_time = None   # validation time is not training time

    def _log(self, step: int, logs: dict) -> None:
        now = time.perf_counter()
        seconds = now - self.last_time
        done = slice(self.last_step - self.first_step, step - self.first_step)
        examples = int(self.plan.examples[done].sum())
        real, padded = int(self.plan.real_tokens[done].sum()), int(self.plan.padded_tokens[done].sum())
        for key, value in (("examples", examples), ("real_tokens", real), ("padded_tokens", padded),
                           ("seconds", seconds)):
            self.totals[key] += value
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        row = {
            "step": step,
            "loss": float(logs.get("loss", np.nan)),
            "accuracy": float(logs.get("accuracy", np.nan)),
            "learning_rate": float(rate(optimizer.iterations) if callable(rate) else rate),
            "examples_per_sec": examples / seconds,
            "real_tokens_per_sec": real / seconds,
            "padded_tokens_per_sec": padded / seconds,
            "padding_efficiency": real / max(1, padded),
        }
        self.last_time, self.last_step = now, step
        if not self.enabled:
            return
        with self.writer.as_default(step=step):
            for name in STEP_SCALARS:
                tf.summary.scalar(name, row[name])
        self.writer.flush()
        new_file = not os.path.exists(self.csv_path)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *STEP_SCALARS])
            if new_file:
                writer.writeheader()
            writer.writerow(row)


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
            tf.profiler.experimental.stop()
            self.running = False

    def on_train_end(self, logs=None):
        if self.running:
            tf.profiler.experimental.stop()
            self.running = False


class StopOnNonFiniteLoss(EpochAware):
    """End the run at the first NaN/inf loss, before a later callback could checkpoint those weights."""

    def __init__(self, last_checkpoint):
        super().__init__()
        self.last_checkpoint = last_checkpoint   # () -> the newest checkpoint path, or None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            kept = self.last_checkpoint()
            raise UsageError(f"the loss became {loss} at step {self.global_step(batch)}: lower --learning_rate "
                             f"(or use --mixed_precision=bf16/none); "
                             f"{'the last checkpoint ' + os.path.basename(kept) + ' is intact' if kept else 'no checkpoint was written'}")


class Checkpoint(EpochAware):
    """Save model + optimizer every `every_steps` global steps (and on request).

    Every worker must take part in a save (it runs collective ops), with the same calls: the
    chief's manager writes to the run's directory, the others' to a scratch directory that is
    emptied after each save.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every_steps: int, is_chief: bool):
        super().__init__()
        self.manager, self.every_steps, self.is_chief = manager, every_steps, is_chief
        self.saved_step, self.stop_requested = None, False

    def request_stop(self, signum=None, frame=None) -> None:
        """A signal handler (SIGTERM: preemption): save after the current step, then stop training."""
        self.stop_requested = True

    def start_epoch(self, plan: BatchPlan, first_step: int) -> None:
        super().start_epoch(plan, first_step)
        self.previous_step = first_step

    def on_train_batch_end(self, batch, logs=None):
        step = self.global_step(batch)   # may advance by steps_per_execution at a time
        if self.stop_requested or step // self.every_steps > self.previous_step // self.every_steps:
            self.save(step)
        if self.stop_requested:
            self.model.stop_training = True
        self.previous_step = step

    def save(self, step: int) -> None:
        if step == self.saved_step:
            return
        self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            for name in os.listdir(self.manager.directory):
                path = os.path.join(self.manager.directory, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        self.saved_step = step
