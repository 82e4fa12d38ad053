"""Gradient accumulation's memory and speed, side by side in one run; asserts nothing about time.

    .venv/bin/python -m benchmarks.accumulation [--max_length=128 --micro_batch=8 --micro_batches=8 --rounds=6]

  memory  peak RSS of a process training --micro_batches micro-batches of --micro_batch rows per step against
          one training a single batch of their rows (micro_batch x micro_batches), the same global batch: each
          in a process of its own (the peak is per process), the two alternating, --memory_rounds times each
  speed   per example, a step of --micro_batches micro-batches against --micro_batches steps of one micro-batch
          (the same rows, the same micro-batch shape), alternating round by round in this process

Both train the classifier as trainer-train compiles it (train step, clipping, lazy AdamW) on full-padding batches
of the shared sample's tokens at --max_length, float32, one CPU device.
"""
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, before TensorFlow is imported)

flags.DEFINE_string("model", MINILM, "Pretrained checkpoint directory.")
flags.DEFINE_integer("max_length", 128, "Tokens per row (full padding).", lower_bound=8)
flags.DEFINE_integer("micro_batch", 8, "Rows per micro-batch.", lower_bound=1)
flags.DEFINE_integer("micro_batches", 8, "Micro-batches per optimizer step (K).", lower_bound=2)
flags.DEFINE_integer("rounds", 6, "Timed rounds of the speed comparison.", lower_bound=1)
flags.DEFINE_integer("memory_rounds", 2, "Processes per contender of the memory comparison.", lower_bound=1)
flags.DEFINE_integer("memory_steps", 3, "Steps each memory process trains.", lower_bound=1)
flags.DEFINE_string("memory_of", None, "Internal: train ROWSxK for --memory_steps steps and print the peak RSS.")
FLAGS = flags.FLAGS
STARTED = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f} s] {message}", flush=True)


def token_rows(count: int, max_length: int, tokenizer) -> np.ndarray:
    """`count` tweets of the shared sample as token ids padded to max_length (full padding)."""
    from trainer.config import SourceConfig
    from trainer.data import readers
    texts = [text for text, _ in zip((t for t, _ in readers.read_rows(SourceConfig(input=SAMPLE_CSV),
                                                                       readers.ReadStats())), range(count))]
    return tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")


def classifier_for(rows: int, micro_batches: int):
    """MiniLM compiled as trainer-train compiles it, with K micro-batches per step, and one step's batch."""
    import tensorflow as tf
    import tf_keras
    from trainer import hub
    from trainer import model as model_lib
    from trainer.config import TrainConfig
    tf_keras.utils.set_random_seed(0)
    classifier = model_lib.build_classifier(FLAGS.model, ["negative", "positive"])
    model_lib.compile_classifier(classifier, TrainConfig(gradient_accumulation_steps=micro_batches), 10 ** 6)
    encoded = token_rows(rows * micro_batches, FLAGS.max_length, hub.load_tokenizer(FLAGS.model))
    shape = (micro_batches, rows, FLAGS.max_length) if micro_batches > 1 else (rows, FLAGS.max_length)
    features = {k: tf.constant(encoded[k].reshape(shape), tf.int32) for k in ("input_ids", "attention_mask")}
    labels = tf.constant(np.arange(rows * micro_batches).reshape(shape[:-1]) % 2, tf.int32)
    batches = iter(tf.data.Dataset.from_tensors((features, labels)).repeat())
    classifier.make_train_function()
    return classifier, batches


def step_seconds(classifier, batches) -> float:
    start = time.perf_counter()
    float(classifier.train_function(batches)["loss"])
    return time.perf_counter() - start


def measure_memory() -> None:
    """The child's part: build, train --memory_steps steps, print the peak RSS (MB) before and after training."""
    rows, micro_batches = map(int, FLAGS.memory_of.split("x"))
    classifier, batches = classifier_for(rows, micro_batches)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(FLAGS.memory_steps):
        step_seconds(classifier, batches)
    print(f"peak_rss_mb {built:.0f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", flush=True)


def memory() -> dict:
    """Peak RSS of each contender's process, alternating; the minimum over rounds (other jobs only add)."""
    contenders = {f"{FLAGS.micro_batch} rows x {FLAGS.micro_batches} micro-batches":
                  f"{FLAGS.micro_batch}x{FLAGS.micro_batches}",
                  f"{FLAGS.micro_batch * FLAGS.micro_batches} rows x 1": f"{FLAGS.micro_batch * FLAGS.micro_batches}x1"}
    found = {name: [] for name in contenders}
    for round_ in range(FLAGS.memory_rounds):
        for name, spec in contenders.items():
            command = [sys.executable, "-m", "benchmarks.accumulation", f"--memory_of={spec}",
                       f"--model={FLAGS.model}", f"--max_length={FLAGS.max_length}",
                       f"--memory_steps={FLAGS.memory_steps}"]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            built, peak = map(float, next(line for line in out.splitlines() if line.startswith("peak_rss_mb"))
                              .split()[1:])
            found[name].append((built, peak))
            log(f"memory round {round_ + 1}: {name}: peak RSS {peak:.0f} MB ({peak - built:.0f} MB over the built "
                "model)")
    return {name: {"peak_rss_mb": min(p for _, p in values), "training_mb": min(p - b for b, p in values)}
            for name, values in found.items()}


def speed() -> dict:
    """Seconds per example of an accumulated step against the same rows in unaccumulated steps of the same
    micro-batch, alternating round by round (who goes first alternates too)."""
    accumulated = classifier_for(FLAGS.micro_batch, FLAGS.micro_batches)
    plain = classifier_for(FLAGS.micro_batch, 1)
    for contender in (accumulated, plain):          # trace, then one more each
        step_seconds(*contender)
        step_seconds(*contender)
    ratios, per_example = [], {"accumulated": [], "plain": []}
    for round_ in range(FLAGS.rounds):
        order = [("accumulated", accumulated, 1), ("plain", plain, FLAGS.micro_batches)]
        seconds = {}
        for name, contender, steps in (order if round_ % 2 == 0 else order[::-1]):
            seconds[name] = sum(step_seconds(*contender) for _ in range(steps)) / (FLAGS.micro_batch *
                                                                                   FLAGS.micro_batches)
            per_example[name].append(seconds[name])
        ratios.append(seconds["accumulated"] / seconds["plain"])
        log(f"speed round {round_ + 1}/{FLAGS.rounds}: accumulated / plain per example {ratios[-1]:.3f}")
    return {"ms_per_example": {name: round(1000 * float(np.median(v)), 2) for name, v in per_example.items()},
            "ratio_median": round(float(np.median(ratios)), 3), "ratios": [round(r, 3) for r in ratios]}


def _main(config, arguments):
    del config, arguments
    if FLAGS.memory_of:
        return measure_memory()
    from trainer import flops
    log(f"{flops.machine()}; load average {os.getloadavg()[0]:.2f}")
    memory_found = memory()
    speed_found = speed()
    print(f"\nmax_length {FLAGS.max_length}, float32, {flops.machine()}, load average now "
          f"{os.getloadavg()[0]:.2f}")
    for name, values in memory_found.items():
        print(f"  {name}: peak RSS {values['peak_rss_mb']:.0f} MB, {values['training_mb']:.0f} MB of it for "
              "training")
    print(f"  per example: accumulated {speed_found['ms_per_example']['accumulated']} ms, plain "
          f"{speed_found['ms_per_example']['plain']} ms: accumulated / plain = {speed_found['ratio_median']} "
          f"(median of {FLAGS.rounds} rounds: {speed_found['ratios']})")


def main():
    run(_main, __doc__)


if __name__ == "__main__":
    main()
