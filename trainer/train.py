"""run(config) -> stats: fine-tune a pretrained BERT on a prepared dataset, in named phases.

  checks.for_train -> RunDir (lock) -> setup -> load_data -> check_identity -> build -> restore -> make_loop
  -> train_loop -> finish (stats, best or last weights exported, test metrics, metrics.json)

What happens at which step (log, validate, checkpoint, profile, stop) is decided in one place: `Loop.after_step`.

Only the chief writes the run directory; every worker takes part in the collective steps.

OUTPUT_DIR/ (file names: rundir)
  run.json                      the run's identity: a rerun that differs in it is refused
  logs/train, logs/validation   TensorBoard: per-step scalars, validation at the global step, profile
  steps.csv, validation.csv     the same scalars as CSV; curves.png drawn from them at the end
  checkpoints/                  weights + optimizer + step, every --checkpoint_every_steps
  best/                         the best weights by --best_metric, and best.json
  export/                       save_pretrained model + tokenizer (+ trainer.json)
  metrics.json                  test metrics, best, global_step, examples_seen, throughput (last: a finished run)
"""
import dataclasses
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from functools import partial

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from trainer import callbacks, checks, curves, distribute, flops, metrics, rundir, storage
from trainer import model as model_lib
from trainer.config import KERAS_POLICY, TrainConfig
from trainer.data import stream as stream_lib
from trainer.errors import Diverged, UsageError


def run(config: TrainConfig, inputs: checks.TrainInputs | None = None) -> dict:
    """Train, validate, export, score the test split; return the stats also written to metrics.json."""
    start = time.time()
    inputs = inputs or checks.for_train(config)
    with rundir.RunDir(config.output_dir, is_chief=inputs.is_chief) as run_dir:
        if inputs.replace:
            run_dir.reset()      # --overwrite_output_dir, and every input checked: only now the old run goes
        rundir.check_layout(run_dir)
        setup = make_setup(config, rundir.recorded(run_dir, "mixed_precision"))
        data = load_data(config, inputs, setup)
        check_profile_window(config, data)
        run_id = rundir.check_identity(run_dir, identity(config, inputs, setup), IDENTITY_FLAGS, LEGACY_IDENTITY)
        recovery = check_recoveries(config, run_dir, setup.is_chief)
        trainable = build(config, inputs, setup, data, run_id, recovery.rate_factor)
        try:
            run = Run(config, inputs, setup, data, trainable, run_dir, run_id, recovery, start)
            loop = make_loop(run, restore(trainable, run_dir, run_id, keep_initial=config.recovery_max_trials > 0))
            train_loop(run, loop)
            return finish(run, loop)
        finally:
            shutil.rmtree(trainable.scratch, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Setup:
    strategy: tf.distribute.Strategy
    precision: str
    num_workers: int
    worker_index: int
    precision_reason: str = ""
    peak_flops: float = float("nan")      # all replicas together, in the run's precision: MFU's denominator
    peak_source: str = ""

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def on_tpu(self) -> bool:
        return isinstance(self.strategy, tf.distribute.TPUStrategy)

    def distribute(self, dataset: tf.data.Dataset, micro_batches: int = 1):
        return distribute.per_replica(dataset, self.strategy, self.num_workers, micro_batches)


def make_setup(config: TrainConfig, resolved_precision: str | None = None) -> Setup:
    """Strategy, precision policy and seeds (--mixed_precision=auto: as the run resolved it, if it has). Seeded
    after the CPU measurements, which draw random numbers: a run is the same whether its cache was warm or not."""
    strategy = distribute.resolve_strategy(config.strategy, config.tpu, config.num_gpus)
    precision, reason = model_lib.choose_precision(config.mixed_precision, strategy, resolved_precision)
    device = flops.device_name(strategy)
    peak, source = flops.peak_flops(precision, device, config.peak_tflops)
    tf_keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    tf_keras.utils.set_random_seed(config.seed)
    devices = 1 if device == "cpu" else strategy.num_replicas_in_sync      # logical CPU devices share the CPU
    logging.info("precision %s (%s); peak %.1f TFLOP/s (%s x %d)", precision, reason, peak * devices / 1e12, source,
                 devices)
    return Setup(strategy, precision, *distribute.worker_count_and_index(strategy), reason, peak * devices, source)


@dataclasses.dataclass(frozen=True)
class Data:
    splits: dict                   # name -> datasets.Dataset (train possibly a seeded subset)
    label_names: list
    plan_args: dict                # plan_batches arguments of every epoch: one optimizer step per batch
    micro_batches: int             # K: an optimizer step's batch is K micro-batches per replica
    steps_per_epoch: int
    total_steps: int
    seed: int
    static_shapes: bool            # TPU: evaluation drops its last partial batch too

    def plan(self, split: str, epoch: int = 0, start_step: int = 0, train: bool = True) -> stream_lib.BatchPlan:
        """A training epoch's plan (shuffled by (seed, epoch), from start_step), or an evaluation split's."""
        lengths = stream_lib.lengths_of(self.splits[split])
        if train:
            return stream_lib.plan_batches(lengths, shuffle=True, seed=self.seed, epoch=epoch, start_step=start_step,
                                           drop_remainder=True, **self.plan_args)
        boundaries = self.plan_args.get("boundaries")   # the training shapes, stretched to this split's longest row
        if boundaries:
            longest = min(int(lengths.max(initial=0)), self.plan_args["max_length"])
            boundaries = (*boundaries[:-1], max(boundaries[-1], longest))
        return stream_lib.plan_batches(lengths, drop_remainder=self.static_shapes,
                                       **{**self.plan_args, **self.micro_batch_args, "boundaries": boundaries})

    @property
    def micro_batch_args(self) -> dict:
        """plan_batches arguments for batches of one micro-batch per replica (evaluation: no gradients kept)."""
        if "batch_tokens" in self.plan_args:
            return {"replicas": self.plan_args["replicas"] // self.micro_batches}
        return {"global_batch_size": self.plan_args["global_batch_size"] // self.micro_batches}

    def examples_before(self, step: int) -> int:
        """Training rows in the run's first `step` steps (batches may differ in size)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        per_epoch = int(self.plan("train").examples.sum())
        return epoch * per_epoch + int(self.plan("train", epoch).examples[:offset].sum())


def load_data(config: TrainConfig, inputs: checks.TrainInputs, setup: Setup) -> Data:
    """The splits (memory-mapped), a seeded training subset if asked, and the batch plan's settings."""
    splits = dict(inputs.data.load())
    train = splits["train"]
    if config.max_train_examples and config.max_train_examples < len(train):
        subset = np.random.default_rng(config.seed).choice(len(train), config.max_train_examples, replace=False)
        splits["train"] = train = train.select(np.sort(subset))
    # A step's rows are what an unaccumulated run on replicas x K devices would take: K micro-batches per replica.
    slots = setup.strategy.num_replicas_in_sync * config.gradient_accumulation_steps
    plan_args = dict(padding=config.padding, max_length=inputs.max_length, pad_to_multiple_of=config.pad_to_multiple_of,
                     num_shards=setup.num_workers, replicas=slots)
    if config.batch_tokens:
        plan_args["batch_tokens"] = config.batch_tokens
    else:
        plan_args["global_batch_size"] = config.per_replica_batch_size * slots
    if config.padding == "bucket":   # the same <= 8 boundaries for every epoch, from the whole training split
        lengths = np.minimum(stream_lib.lengths_of(train), inputs.max_length)
        plan_args["boundaries"] = stream_lib.bucket_boundaries(lengths, pad_to_multiple_of=config.pad_to_multiple_of)
    first = stream_lib.plan_batches(stream_lib.lengths_of(train), drop_remainder=True, **plan_args)
    if first.steps == 0:
        raise UsageError(f"{len(train)} training rows make no full global batch: lower --per_replica_batch_size "
                         "or --batch_tokens")
    if first.truncated_rows:
        logging.info("%d training rows are longer than max_length=%d: truncated as they are streamed",
                     first.truncated_rows, inputs.max_length)
    return Data({name: split for name, split in splits.items() if len(split)}, train.features["label"].names,
                plan_args, config.gradient_accumulation_steps, first.steps, model_lib.total_steps(first.steps, config),
                config.seed, setup.on_tpu)


# What makes a run this run (rundir.check_identity): a rerun that differs in any of these is refused. Everything
# else may change on a resume: log/eval/checkpoint intervals, profiling, steps_per_execution, xla, export,
# early stopping, recovery (--recovery_max_trials, --loss_upper_bound), and the strategy as long as replicas and
# workers stay the same.
KEEP_CHECKPOINTS = 2      # the rolling checkpoints kept (the best weights are kept apart)
LEGACY_IDENTITY = {"gradient_accumulation_steps": 1, "max_grad_norm": 0.0}   # runs whose run.json predates them

IDENTITY_FLAGS = {"data": "--data_dir (its content)", "model": "--model (its shape)", "replicas": "replicas",
                  "workers": "workers", "mixed_precision": "--mixed_precision (as resolved)",
                  **{name: f"--{name}" for name in (
                      "max_length", "padding", "pad_to_multiple_of", "per_replica_batch_size", "batch_tokens",
                      "gradient_accumulation_steps", "max_train_examples", "seed", "learning_rate", "warmup_ratio",
                      "weight_decay", "max_grad_norm", "epochs", "max_steps", "embedding_update", "freeze_encoder",
                      "freeze_layers", "classifier_dropout", "best_metric")}}


def identity(config: TrainConfig, inputs: checks.TrainInputs, setup: Setup) -> dict:
    """This run's identity: the data, the model's shape, and every setting the batches, the LR schedule or the
    checkpoints depend on."""
    shape = inputs.model.config
    settings = {name: getattr(config, name) for name in IDENTITY_FLAGS if hasattr(config, name)}
    settings.update(
        data=inputs.data.fingerprint, max_length=inputs.max_length, replicas=setup.strategy.num_replicas_in_sync,
        workers=setup.num_workers, mixed_precision=setup.precision,
        model=f"{shape.num_hidden_layers} layers, hidden {shape.hidden_size}, vocab {shape.vocab_size}",
        per_replica_batch_size=None if config.batch_tokens else config.per_replica_batch_size)
    return settings


@dataclasses.dataclass
class Trainable:
    classifier: object
    tokenizer: object
    checkpoint: tf.train.Checkpoint
    scratch: str                     # this process's own: other workers' saves, the initial weights
    scorer: metrics.Scorer           # validation and test, one traced step per batch shape
    manager: tf.train.CheckpointManager | None = None    # made by restore, once the checkpoints are verified

    @property
    def initial(self) -> str:
        """The checkpoint of the weights and optimizer state before the first step (written by restore)."""
        return os.path.join(self.scratch, "initial", "ckpt")


def build(config: TrainConfig, inputs: checks.TrainInputs, setup: Setup, data: Data, run_id: str | None,
          rate_factor: float) -> Trainable:
    """The classifier, optimizer (its state made now: a restore then reads everything at once, never later; its
    learning rate times the run's recoveries' factor) and a checkpoint that carries the run's id, made inside the
    strategy's scope."""
    with setup.strategy.scope():
        classifier = model_lib.build_and_compile(inputs.model.dir, data.label_names, config, data.total_steps)
        classifier.optimizer._create_all_weights(classifier.trainable_variables)
        model_lib.rate_factor(classifier).assign(rate_factor)
        checkpoint = tf.train.Checkpoint(model=classifier, optimizer=classifier.optimizer,
                                         run=callbacks.RunStamp(run_id))
    scratch = tempfile.mkdtemp(prefix="trainer-scratch-")
    scorer = metrics.Scorer(classifier, setup.strategy, data.label_names, jit_compile=config.xla)
    return Trainable(classifier, inputs.model.tokenizer, checkpoint, scratch, scorer)


def restore(trainable: Trainable, run_dir, run_id: str | None, keep_initial: bool = True) -> int:
    """Resume from the newest usable checkpoint: intact (it reads back whole, all finite), this run's (its run id,
    its step equal to its number) and fitting the model. Damaged ones newer than it are removed, intact ones this
    run cannot use are set aside (RUN/set-aside/), each said in one line. Refuse if checkpoints exist and none is
    intact and fitting. Return the step resumed from."""
    if keep_initial:                 # for a recovery that finds no checkpoint to resume from
        trainable.checkpoint.write(trainable.initial)
    directory, step, damaged, unusable = run_dir.file(rundir.CHECKPOINTS), 0, {}, {}
    numbers = rundir.checkpoint_numbers(directory)
    for number in numbers:
        prefix = os.path.join(directory, f"ckpt-{number}")
        problem = rundir.checkpoint_problem(prefix)
        if problem:
            damaged[number] = problem
        elif other := rundir.not_this_runs(prefix, number, run_id) or _restore(trainable, prefix):
            unusable[number] = other
        else:
            step = number
            break
    unfit = {n: why for n, why in unusable.items() if not why.startswith(("another run's", "it holds step"))}
    if (damaged or unfit) and not step:
        listed = "; ".join(f"ckpt-{n} ({why})" for n, why in {**damaged, **unusable}.items())
        raise UsageError(f"{run_dir.url}/{rundir.CHECKPOINTS} holds no intact checkpoint of this run: {listed}: "
                         "restore the files, or pass --overwrite_output_dir to start afresh")
    if run_dir.is_chief:
        _put_away(run_dir, directory, damaged, unusable, step)
        if step:
            rundir.point_to(directory, sorted(n for n in numbers if n <= step and n not in damaged))
    if step:
        logging.info("resumed from %s", os.path.join(directory, f"ckpt-{step}"))
    elif callbacks.csv_steps(run_dir.file(rundir.STEPS_CSV)):
        print(f"{run_dir.url} has no checkpoint of this run (the run stopped before its first, or they were removed):"
              " training starts at step 0", flush=True)
    trainable.manager = tf.train.CheckpointManager(trainable.checkpoint, os.path.join(
        run_dir.path if run_dir.is_chief else trainable.scratch, rundir.CHECKPOINTS), max_to_keep=KEEP_CHECKPOINTS)
    for name in (rundir.STEPS_CSV, rundir.VALIDATION_CSV):
        callbacks.drop_csv_rows_after(run_dir.file(name), step)
    return step


def _put_away(run_dir, directory: str, damaged: dict, unusable: dict, step: int) -> None:
    """Remove the damaged checkpoints, set the intact unusable ones aside; one line each kind."""
    if damaged:
        for number in damaged:
            rundir.remove_checkpoint(directory, number)
        print(f"passed over damaged checkpoints, resuming from ckpt-{step}: " + "; ".join(
            f"ckpt-{n} ({why})" for n, why in damaged.items()) + " (removed)", flush=True)
    if unusable:
        print(f"passed over checkpoints this run cannot use, {f'resuming from ckpt-{step}' if step else 'none left'}: "
              + "; ".join(f"ckpt-{n} ({why}): set aside in {rundir.set_aside(run_dir, directory, n)}"
                          for n, why in unusable.items()), flush=True)


def check_recoveries(config: TrainConfig, run_dir, is_chief: bool) -> callbacks.Recovery:
    """The run's recoveries from divergence so far; a run that stopped diverged resumes only with a trial left
    (--recovery_max_trials above the recoveries spent), else it is refused as it stands."""
    recovery = callbacks.Recovery(run_dir.file(rundir.RECOVERIES), run_dir.url, config.recovery_max_trials,
                                  config.checkpoint_every_steps, is_chief)
    if recovery.stopped and not recovery.trials_left:
        newest = (rundir.checkpoint_numbers(run_dir.file(rundir.CHECKPOINTS)) or [0])[0]
        raise UsageError(f"{run_dir.url} stopped diverged ({recovery.stopped['why']}): "
                         f"{recovery.resume_hint(newest)}")
    return recovery


def check_profile_window(config: TrainConfig, data: Data) -> None:
    """A profile window must end within the run's steps (a window a resumed run has already passed is skipped:
    make_loop)."""
    if config.profile_steps and config.profile_steps[1] > data.total_steps:
        raise UsageError(f"--profile_steps={config.profile_steps[0]},{config.profile_steps[1]} lies outside this "
                         f"run's steps 1..{data.total_steps}: choose steps inside it")


def _restore(trainable: Trainable, prefix: str) -> str | None:
    """Restore a checkpoint into the model and optimizer (whose state exists: nothing is deferred); why it does
    not fit, or None."""
    try:
        trainable.checkpoint.restore(prefix).expect_partial()
    except Exception as e:  # noqa: BLE001 (whatever does not fit the model makes the checkpoint unusable)
        return "it does not fit the model: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return None


@dataclasses.dataclass(frozen=True)
class Run:
    """What the phases after build share."""
    config: TrainConfig
    inputs: checks.TrainInputs
    setup: Setup
    data: Data
    trainable: Trainable
    run_dir: rundir.RunDir
    run_id: str | None           # what its checkpoints and best weights carry
    recovery: callbacks.Recovery   # recoveries from divergence: the run's state
    started: float               # time.time() at the start, for metrics.json's seconds


def due(previous: int, step: int, every: int) -> bool:
    """Whether a multiple of `every` lies in previous+1..step (a call may run several steps)."""
    return step // every > previous // every


class Loop(tf_keras.callbacks.Callback):
    """When things happen in a run, all in one place: `after_step` counts the steps just done and, where
    something is due, syncs with the device (reads what the steps summed: the only place the host waits for
    them), then stops for a divergence, or logs, validates, checkpoints, closes the profile and stops when each
    is due. Keras calls it back from each epoch's fit (one per epoch: each has its own plan, and a resumed epoch
    starts mid-plan); SIGTERM asks it to stop."""
    _supports_tf_logs = True         # Keras hands the step's logs over as tensors: no sync at every step

    def __init__(self, *, total_steps: int, log_every: int, eval_every: int, checkpoint_every: int,
                 meter: callbacks.Meter, saver: callbacks.Checkpoints, sums, logger: callbacks.StepLogger | None = None,
                 validation: callbacks.Validation | None = None, patience: int | None = None,
                 profile: tuple[int, int, str] | None = None, resumed_from_step: int = 0):
        super().__init__()
        self.total_steps, self.log_every, self.eval_every, self.checkpoint_every = (total_steps, log_every, eval_every,
                                                                                   checkpoint_every)
        self.meter, self.saver, self.sums, self.logger, self.validation = meter, saver, sums, logger, validation
        self.patience, self.profile = patience, profile          # profile: (first step, last step, log dir)
        self.step = self.resumed_from_step = self.fit_first_step = self.fit_last_step = resumed_from_step
        self.sigterm, self.profiling, self.train_seconds, self.diverged = False, False, 0.0, None
        self.stopped_early_at = resumed_from_step if validation and self._patience_spent() else None
        self.window_began = time.perf_counter()

    def request_stop(self, signum=None, frame=None) -> None:
        """The SIGTERM handler (preemption): save after the current step, then stop training."""
        self.sigterm = True

    @property
    def stopping(self) -> bool:
        return self.sigterm or self.stopped_early_at is not None

    def start_epoch(self, plan, steps: int) -> None:
        self.fit_first_step, self.fit_last_step = self.step, self.step + steps
        self.meter.start_epoch(plan, self.step)

    def on_train_begin(self, logs=None):
        self.window_began = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        if self.profile and not self.profiling and self.profile[0] <= self.step + 1 <= self.profile[1]:
            tf.profiler.experimental.start(self.profile[2])
            self.profiling = True

    def on_train_batch_end(self, batch, logs=None):
        self.after_step(self.fit_first_step + batch + 1)   # batch: this fit's last step done, from 0

    def after_step(self, step: int) -> None:
        """Everything that happens after training steps previous+1..step, in this order."""
        previous, self.step = self.step, step
        self.meter.count(previous, step)
        logging_due = due(previous, step, self.log_every) or step == self.total_steps
        eval_due = due(previous, step, self.eval_every)
        save_due = self.sigterm or due(previous, step, self.checkpoint_every) or step == self.total_steps
        if not (logging_due or eval_due or save_due or step >= self.fit_last_step or self.meter.first_step_seconds
                is None or self.profiling and step >= self.profile[1]):
            return
        sums = self.sums()                  # waits for the steps: the window's time ends here
        self.meter.sync(time.perf_counter() - self.window_began, sums)
        if sums["divergence"]:
            return self.diverge(*sums["divergence"])
        if self.logger and logging_due:
            self.logger.log(step, self.meter.window(), self.model.optimizer)
        if self.validation and eval_due:
            self.validate(step)
        if save_due and not self.saver.save(step):      # after N's validation and best
            return self.diverge(step, "the weights or the optimizer state are not all finite")
        if self.profiling and step >= self.profile[1]:
            self.on_train_end()
        self.model.stop_training = self.stopping
        self.window_began = time.perf_counter()

    def diverge(self, step: int, what: str) -> None:
        """Stop this fit: train_loop recovers (or stops the run)."""
        self.diverged = (step, f"{what} at step {step}")
        self.model.stop_training = True

    def rewind(self, step: int) -> None:
        """A recovery resumed the run at checkpoint `step`."""
        self.step, self.stopped_early_at = step, None
        self.saver.rewind(step)
        if self.validation:
            self.validation.rewind(step)
        self.window_began = time.perf_counter()

    def validate(self, step: int) -> None:
        self.validation.validate(step)
        if self._patience_spent():
            self.stopped_early_at = step
            logging.info("stopping early: %d validations without improvement (best: step %d)",
                         self.validation.without_improvement, self.validation.best.step)

    def _patience_spent(self) -> bool:
        return bool(self.patience and self.step and self.validation.without_improvement >= self.patience)

    def on_train_end(self, logs=None):
        if self.profiling:
            tf.profiler.experimental.stop()
            self.profiling = False


def make_loop(run: Run, resumed_from_step: int) -> Loop:
    """The loop and what it calls: the meter, the step logger (chief), validation with the best weights, saves."""
    config, setup, data, trainable, run_dir = run.config, run.setup, run.data, run.trainable, run.run_dir
    logs, is_chief = run_dir.file(rundir.LOGS), setup.is_chief
    lengths = np.minimum(stream_lib.lengths_of(data.splits["train"]), data.plan_args["max_length"])
    meter = callbacks.Meter(trainable.classifier.config, lengths, setup.worker_index)
    logger = callbacks.StepLogger(os.path.join(logs, "train"), run_dir.file(rundir.STEPS_CSV), data.total_steps,
                                  setup.peak_flops, resumed_from_step) if is_chief else None
    saver = callbacks.Checkpoints(trainable.classifier, trainable.manager, run_dir.file(rundir.CHECKPOINTS),
                                  resumed_from_step, KEEP_CHECKPOINTS, on_saved=run_dir.sync)
    validation, eval_every = None, config.eval_every_steps or data.steps_per_epoch
    if "validation" in data.splits:
        best = callbacks.Best(trainable.classifier, run_dir.file(rundir.BEST), config.best_metric, resumed_from_step,
                              run.run_id, save_dir=None if is_chief else os.path.join(trainable.scratch, rundir.BEST),
                              set_aside=partial(rundir.set_aside, run_dir) if is_chief else None)
        batches = setup.distribute(eval_batches(run, "validation"))   # iterated anew each time
        validation = callbacks.Validation(trainable.scorer, batches, best, os.path.join(logs, "validation"),
                                          run_dir.file(rundir.VALIDATION_CSV), is_chief, run_dir.sync)
    profile = (*config.profile_steps, os.path.join(logs, "train")) if is_chief and config.profile_steps else None
    if profile and profile[1] <= resumed_from_step:
        logging.info("--profile_steps=%d,%d: those steps were trained before step %d, where this run resumes: "
                     "nothing to profile", *config.profile_steps, resumed_from_step)
        profile = None
    loop = Loop(total_steps=data.total_steps, log_every=config.log_every_steps, eval_every=eval_every,
                checkpoint_every=config.checkpoint_every_steps, meter=meter, saver=saver,
                sums=trainable.classifier.optimizer_step.read_and_reset, logger=logger, validation=validation,
                patience=config.early_stopping_patience, profile=profile, resumed_from_step=resumed_from_step)
    loop.set_model(trainable.classifier)   # a rerun with no step left to train still saves and validates in finish
    return loop


def eval_batches(run: Run, split: str) -> tf.data.Dataset:
    """A split in the training's padding and batch sizes, in order (this worker's shard); with static shapes
    (TPU) without its last partial batch."""
    plan = run.data.plan(split, train=False)
    return stream_lib.batches(run.data.splits[split], plan, run.trainable.classifier, run.trainable.tokenizer,
                              run.setup.worker_index)


def train_loop(run: Run, loop: Loop) -> None:
    """One fit per epoch (or what remains of it) until the last step, SIGTERM or an early stop."""
    setup, data = run.setup, run.data
    logging.info("training: %d replica(s), %s, %d steps per epoch, %d in all (from step %d), precision %s, xla %s, "
                 "padding %s", setup.strategy.num_replicas_in_sync, _batch_size_text(data), data.steps_per_epoch,
                 data.total_steps, loop.step, setup.precision, run.config.xla, run.config.padding)
    keras_callbacks = [loop, *([callbacks.EpochProgbar(-(-data.total_steps // data.steps_per_epoch))]
                               if sys.stdout.isatty() else [])]
    previous_handler = signal.signal(signal.SIGTERM, loop.request_stop)
    try:
        if run.recovery.stopped:        # a run that stopped diverged, rerun with a trial left: recover first
            loop.diverged = (run.recovery.stopped["step"], run.recovery.stopped["why"])
        while True:
            if loop.diverged:
                recover(run, loop)
            if loop.step >= data.total_steps or loop.stopping:
                break
            _fit_epoch(run, loop, keras_callbacks)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def recover(run: Run, loop: Loop) -> None:
    """Resume from the checkpoint the recovery picks (or the initial weights) at a lower learning rate, as a resume
    would (the CSV rows and best weights of later steps dropped); with no trial left, stop in one line."""
    (step, why), loop.diverged = loop.diverged, None
    recovery, trainable = run.recovery, run.trainable
    number, directory = recovery.choose(step, loop.saver.kept)
    if not recovery.trials_left:
        raise recovery.stop(step, why, number)
    trainable.checkpoint.restore(os.path.join(directory, f"ckpt-{number}") if number else
                                 trainable.initial).expect_partial()
    line = recovery.record(step, why, number)
    model_lib.rate_factor(trainable.classifier).assign(recovery.rate_factor)
    for name in (rundir.STEPS_CSV, rundir.VALIDATION_CSV):
        callbacks.drop_csv_rows_after(run.run_dir.file(name), number)
    loop.rewind(number)
    if loop.logger:
        loop.logger.recovered(number, recovery.rate_factor)
        print(line, flush=True)
    run.run_dir.sync()


def _fit_epoch(run: Run, loop: Loop, keras_callbacks: list) -> None:
    data, setup, classifier = run.data, run.setup, run.trainable.classifier
    epoch, start_step = divmod(loop.step, data.steps_per_epoch)
    plan = data.plan("train", epoch, start_step)
    steps = min(plan.steps, data.total_steps - loop.step)
    logging.info("epoch %d/%d: steps %d-%d, %d distinct batch shapes, padding efficiency %.3f", epoch + 1,
                 -(-data.total_steps // data.steps_per_epoch), loop.step + 1, loop.step + steps,
                 len(plan.shapes()), plan.padding_efficiency)
    if run.config.xla and len(plan.shapes()) > 16:
        logging.warning("XLA compiles once per batch shape and this epoch has %d: use --padding=bucket or "
                        "--pad_to_multiple_of", len(plan.shapes()))
    loop.start_epoch(plan, steps)
    dataset = stream_lib.batches(data.splits["train"], plan, classifier, run.trainable.tokenizer, setup.worker_index)
    fit_start = time.time()
    batches = setup.distribute(dataset.take(steps), run.config.gradient_accumulation_steps)
    classifier.fit(batches, initial_epoch=epoch, epochs=epoch + 1,
                   steps_per_epoch=steps, callbacks=keras_callbacks, verbose=1 if sys.stdout.isatty() else 0)
    loop.train_seconds += time.time() - fit_start
    loop.step = int(classifier.optimizer.iterations.numpy())


def _batch_size_text(data: Data) -> str:
    per = f" in {data.micro_batches} micro-batches" if data.micro_batches > 1 else ""
    if "batch_tokens" in data.plan_args:
        return f"{data.plan_args['batch_tokens']} tokens per replica per micro-batch{per}"
    return f"global batch {data.plan_args['global_batch_size']}{per}"


def finish(run: Run, loop: Loop) -> dict:
    """Last checkpoint; then (unless stopped by SIGTERM) the final validation, the export of the best or last
    weights, the test split scored with exactly those weights, and metrics.json written last."""
    config, setup, step, validation = run.config, run.setup, loop.step, loop.validation
    if not loop.saver.save(step):        # the loop saved the last step already: a rerun that trains no step
        raise Diverged(f"the weights or the optimizer state are not all finite at step {step}")
    stats = _stats(run, loop)
    if loop.sigterm:
        logging.warning("stopped by SIGTERM at step %d of %d; checkpoint saved: rerun the same command to resume",
                        step, run.data.total_steps)
        return {**stats, "interrupted": True}
    if validation and (validation.validated_step != step or validation.best.step is None):
        loop.validate(step)
    exported = config.export or ("best" if validation else "last")
    if validation:
        stats["best"] = validation.best.summary()
    if exported == "best":
        validation.best.restore()
    stats.update(exported=exported, weights_sha256=weights_digest(run.trainable.classifier))   # the exported weights
    if setup.is_chief:
        export(run.trainable, run.inputs, storage.join(config.output_dir, rundir.EXPORT), stats)
    if "test" in run.data.splits:
        stats.update(run.trainable.scorer.score(setup.distribute(eval_batches(run, "test"))))
    if setup.is_chief:
        curves.draw(run.run_dir.path)
    run.run_dir.sync()
    if setup.is_chief:
        stats.update(seconds=round(time.time() - run.started, 1), config=dataclasses.asdict(config))
        storage.write_json(storage.join(config.output_dir, rundir.METRICS), stats)
    return stats


def _stats(run: Run, loop: Loop) -> dict:
    config, setup, data, meter = run.config, run.setup, run.data, loop.meter
    stats = {"global_step": loop.step, "examples_seen": data.examples_before(loop.step),
             "replicas": setup.strategy.num_replicas_in_sync, "strategy": distribute.strategy_name(setup.strategy),
             "mixed_precision": setup.precision, "xla": config.xla, "padding": config.padding,
             "global_batch_size": data.plan_args.get("global_batch_size"), "batch_tokens": config.batch_tokens,
             "gradient_accumulation_steps": data.micro_batches, "max_grad_norm": config.max_grad_norm,
             "grad_norm": callbacks.means(meter.done)["grad_norm"],
             "clipped_fraction": callbacks.means(meter.done)["clipped_fraction"],
             "recoveries": run.recovery.summary(), "rate_factor": run.recovery.rate_factor,
             "distinct_shapes": len(meter.shapes), "truncated_rows": meter.truncated_rows,
             "padding_efficiency": meter.done["real_tokens"] / max(1, meter.done["padded_tokens"]),
             "first_step_seconds": meter.first_step_seconds, "train_seconds": round(loop.train_seconds, 1),
             "resumed_from_step": loop.resumed_from_step, "stopped_early_at": loop.stopped_early_at,
             "worker": {"index": setup.worker_index, "count": setup.num_workers,
                        "rows_sha256": meter.rows_digest.hexdigest()},
             "precision_reason": setup.precision_reason, "peak_flops_per_sec": setup.peak_flops,
             "peak_source": setup.peak_source}
    if meter.timed["seconds"]:
        stats.update({key: value for key, value in callbacks.rates(meter.timed).items() if key != "padding_efficiency"})
        stats.update(mfu=flops.mfu(stats["model_flops_per_sec"], setup.peak_flops),
                     mfu_real=flops.mfu(stats["model_flops_per_sec_real"], setup.peak_flops))
    return stats


def export(trainable: Trainable, inputs: checks.TrainInputs, export_dir: str, stats: dict) -> None:
    """save_pretrained model + tokenizer, and trainer.json (which data, which weights), staged and put in place
    whole (renamed beside it, or uploaded to a bucket)."""
    with storage.staged_dir(export_dir, last="tf_model.h5") as staged:
        try:
            trainable.classifier.save_pretrained(staged)
        except (OSError, RuntimeError) as e:       # h5py says a full disk in its own words
            raise storage.no_space(e, export_dir) or e
        trainable.tokenizer.save_pretrained(staged)
        storage.write_json(os.path.join(staged, "trainer.json"), {
            "data_source_sha256": inputs.data.manifest["source"]["sha256"], "global_step": stats["global_step"],
            "weights": stats["exported"], "best": stats.get("best")})


def weights_digest(classifier) -> str:
    """sha256 over every weight: equal on every worker of a multi-worker run, and across identical runs."""
    digest = hashlib.sha256()
    for weight in classifier.weights:
        digest.update(np.asarray(weight.numpy()).tobytes())
    return digest.hexdigest()
