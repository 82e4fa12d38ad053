"""What reading the loss on the host every step costs, side by side in one run; asserts nothing about time.

    .venv/bin/python -m benchmarks.host_sync [--max_length=64 --steps=12 --rounds=6]

Three ways to run the same training steps through Keras' fit (MiniLM as trainer-train compiles it, bucket
batches of the shared sample, float32, one device), alternating round by round:
  every step      a callback reads the step's loss on the host after each step (the loop before this round)
  at boundaries   the loop's way: the device sums, the host reads them once, at the end of the round
  4 per call      at boundaries, and --steps_per_execution=4 (what the accelerator presets set)
A CPU runs each step to its end before the call returns, so the three should match there (the figure this
prints); on a GPU or TPU, the host's wait at every step is what the last two remove.
"""
import os
import time

import numpy as np
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, before TensorFlow is imported)

flags.DEFINE_string("model", MINILM, "Pretrained checkpoint directory.")
flags.DEFINE_string("work_dir", "/tmp/host_sync/data", "Where the shared sample is prepared (reused).")
flags.DEFINE_integer("max_length", 64, "Max length of the prepared sample.", lower_bound=8)
flags.DEFINE_integer("batch_size", 32, "Rows per step.", lower_bound=1)
flags.DEFINE_integer("steps", 12, "Steps per round (a multiple of 4).", lower_bound=4)
flags.DEFINE_integer("rounds", 6, "Timed rounds of each contender.", lower_bound=1)
FLAGS = flags.FLAGS
STARTED = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f} s] {message}", flush=True)


def contender(model_dir, steps_per_execution: int):
    import tf_keras
    from trainer import model as model_lib
    from trainer.config import TrainConfig
    tf_keras.utils.set_random_seed(0)
    classifier = model_lib.build_classifier(model_dir, ["negative", "positive"])
    model_lib.compile_classifier(classifier, TrainConfig(steps_per_execution=steps_per_execution), 10 ** 6)
    return classifier


def callback(every_step: bool):
    """A callback that reads the loss at every step (Keras then hands it numpy logs), or nothing per step."""
    import tf_keras

    class Reader(tf_keras.callbacks.Callback):
        _supports_tf_logs = not every_step

        def on_train_batch_end(self, batch, logs=None):
            if every_step:
                float(logs["loss"])
    return Reader()


def timed_round(classifier, dataset, every_step: bool) -> float:
    start = time.perf_counter()
    classifier.fit(dataset, epochs=1, steps_per_epoch=FLAGS.steps, callbacks=[callback(every_step)], verbose=0)
    classifier.optimizer_step.read_and_reset()           # the boundary's one read
    return time.perf_counter() - start


def _main(config, arguments):
    del config, arguments
    from trainer import flops, hub, runtime
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    from trainer.data import stream as stream_lib
    model_dir = hub.resolve(FLAGS.model)
    prepare.prepare(PrepareConfig(input=SAMPLE_CSV, output_dir=FLAGS.work_dir, model=model_dir,
                                  max_length=FLAGS.max_length, overwrite=True))
    tokenizer, split = hub.load_tokenizer(model_dir), prepare.open_prepared(FLAGS.work_dir).load()["train"]
    runtime.import_tensorflow()
    log(f"{flops.machine()}; load average {os.getloadavg()[0]:.2f}")
    plain, per_call = contender(model_dir, 1), contender(model_dir, 4)
    plan = stream_lib.plan_batches(stream_lib.lengths_of(split), padding="bucket", max_length=FLAGS.max_length,
                                   global_batch_size=FLAGS.batch_size, shuffle=True, drop_remainder=True)
    dataset = stream_lib.batches(split, plan, plain, tokenizer).take(FLAGS.steps).cache().repeat()
    contenders = {"every step": (plain, True), "at boundaries": (plain, False), "4 per call": (per_call, False)}
    for classifier, every_step in contenders.values():      # trace every shape, then once more
        timed_round(classifier, dataset, every_step)
    seconds = {name: [] for name in contenders}
    for round_ in range(FLAGS.rounds):
        names = list(contenders)[round_ % 3:] + list(contenders)[:round_ % 3]     # who goes first rotates
        for name in names:
            seconds[name].append(timed_round(*contenders[name][:1], dataset, contenders[name][1]))
        log(f"round {round_ + 1}/{FLAGS.rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.1f} s" for n in contenders))
    base = np.median(seconds["every step"])
    print(f"\n{FLAGS.steps} steps of {FLAGS.batch_size} rows at max_length {FLAGS.max_length}, {flops.machine()}, "
          f"load average now {os.getloadavg()[0]:.2f}; median of {FLAGS.rounds} rounds:")
    for name, values in seconds.items():
        rate = FLAGS.steps * FLAGS.batch_size / np.median(values)
        print(f"  {name}: {rate:.1f} examples/s, {base / np.median(values):.3f}x reading every step")


def main():
    run(_main, __doc__)


if __name__ == "__main__":
    main()
