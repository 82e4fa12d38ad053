"""Training throughput and MFU of padding x precision x XLA against the naive baseline (full padding, float32,
no XLA), side by side in one run; asserts nothing about time.

    .venv/bin/python -m benchmarks.padding_throughput [--max_lengths=64,128 --precisions=none,bf16
        --xla=false,true --steps=20 --batch_tokens=4096 --model=DIR --output_dir=DIR]

Per max_length, one classifier per (precision, xla), compiled as trainer-train compiles it (its defaults), trains
five contenders through its Keras train function (what `fit` calls), one step per call, timed to the loss:
  full          max_length padding, --global_batch_size rows (in float32 without XLA: the baseline)
  batch         each batch padded to its longest row
  bucket        rows grouped by length, padded to the bucket's boundary (<= 8 shapes)
  equal tokens  bucket batches of batch_tokens (default: a full batch's), in a shuffled epoch's mix of shapes
  ideal         the equal-token shapes replayed from tensors in memory (no input pipeline)
  packed        tweets packed into rows of max_length (batch_tokens // max_length rows: the tokens of equal
                tokens' batches), one shape, each tweet attending only to itself
Each shape runs once first (trace, XLA compilation: compile seconds), then --warmup_steps more; then all the
max_length's contenders (the baseline always among them) take turns step by step, sharing the machine's noise.
speedup: examples/s over the baseline's. MFU: model FLOPs/s (trainer.flops, on padded and on real tokens) over
the peak of the contender's precision. results.json/.md after every max_length; throughput.png with matplotlib.
"""
import dataclasses
import functools
import itertools
import os
import time

import numpy as np
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, before TensorFlow is imported)

flags.DEFINE_string("model", MINILM, "Pretrained checkpoint directory or hub id.")
flags.DEFINE_string("source", SAMPLE_CSV, "Sentiment140 CSV to prepare (once, at the largest --max_lengths).")
flags.DEFINE_string("work_dir", "/tmp/padding_throughput/data", "Where --source is prepared (reused when unchanged).")
flags.DEFINE_string("output_dir", "/tmp/padding_throughput/report", "Where results.json/.md and throughput.png go.")
flags.DEFINE_list("max_lengths", ["64", "128"], "Max lengths; each is one interleaved group.")
flags.DEFINE_list("precisions", ["none", "bf16"], "Precisions: none, fp16, bf16.")
flags.DEFINE_list("xla", ["false", "true"], "jit_compile settings: false, true.")
flags.DEFINE_integer("global_batch_size", 32, "Rows per step of full, batch and bucket.", lower_bound=1)
flags.DEFINE_integer("batch_tokens", None, "Padded tokens per step of equal tokens (default: global_batch_size x "
                     "max_length).", lower_bound=8)
flags.DEFINE_integer("steps", 20, "Timed steps per contender.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per contender once every shape is compiled.", lower_bound=0)
flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s for MFU (default: the device table, else a cached "
                   "calibration per precision).", lower_bound=0.001)
flags.DEFINE_integer("seed", 0, "Seed for the row subset, the stream's shuffle and the model's new head.")
FLAGS = flags.FLAGS
flags.register_validator("max_lengths", lambda v: all(x.isdigit() and 8 <= int(x) <= 512 for x in v),
                         "takes lengths from 8 to 512, e.g. 64,128")
flags.register_validator("precisions", lambda v: set(v) <= {"none", "fp16", "bf16"}, "takes none, fp16, bf16")
flags.register_validator("xla", lambda v: {x.lower() for x in v} <= {"false", "true"}, "takes false, true")

CONTENDERS = ("full", "batch", "bucket", "equal tokens", "ideal", "packed")
STARTED = time.time()


@dataclasses.dataclass
class Contender:
    name: str                       # one of CONTENDERS
    precision: str
    xla: bool
    model: object
    inputs: list                    # per step: the iterator the train function reads that step's batch from
    shapes: list                    # per step: (rows, padded length)
    real_lengths: list              # per step: each example's real length (a packed row holds several)
    shape_inputs: dict              # (rows, length) -> an endless iterator of one synthetic batch of that shape
    spec: tuple                     # the model and its input signature: with a shape, what a trace is for
    seconds: list = dataclasses.field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f} s] {message}", flush=True)


def timed_step(model, iterator) -> float:
    start = time.perf_counter()
    float(model.train_function(iterator)["loss"])   # the step is done once its loss is on the host
    return time.perf_counter() - start


def synthetic(shape, spec, rng, vocab_size: int):
    """One batch of `shape` again and again, with the stream's element spec: it runs the trace (XLA executable) the
    stream's batches of that shape run. No autotuning (deleting an autotuned iterator can block for a minute)."""
    import tensorflow as tf
    rows = shape[0]
    columns = {"input_ids": rng.integers(100, vocab_size, shape), "attention_mask": np.ones(shape),
               "token_type_ids": np.zeros(shape)}
    batch = ({k: tf.constant(columns[k], tf.int32) for k in spec[0]}, tf.constant(rng.integers(0, 2, rows), tf.int32))
    padded = ({k: spec[0][k].shape[1:] for k in spec[0]}, [])
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensor_slices(batch).padded_batch(rows, padded, drop_remainder=True)
    return iter(dataset.repeat().with_options(options))


def build_model(model_dir: str, precision: str, xla: bool):
    """A classifier compiled as trainer-train compiles it, under the precision's policy (same seed: same weights)."""
    import tf_keras
    from trainer import model as model_lib
    from trainer.config import KERAS_POLICY, TrainConfig
    tf_keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    tf_keras.utils.set_random_seed(FLAGS.seed)
    model = model_lib.build_classifier(model_dir, ["negative", "positive"])
    model_lib.compile_classifier(model, TrainConfig(xla=xla), 10 ** 6)     # every other setting: the default
    model.make_train_function()
    return model


def representative(plan, steps: int):
    """`steps` batches of a whole shuffled epoch in the epoch's mix of shapes (evenly spaced through the steps
    sorted by shape), in epoch order: token-sized batches hold 32 to 128 rows by shape, so the first `steps` alone
    would make rows/step a lottery."""
    by_shape = np.lexsort((np.arange(plan.steps), plan.pad_lengths[:, 0], plan.examples))
    chosen = np.sort(by_shape[np.linspace(0, plan.steps - 1, steps).round().astype(int)])
    starts = np.concatenate([[0], np.cumsum(plan.examples)])
    rows = np.concatenate([plan.rows[starts[i]:starts[i + 1]] for i in chosen])
    return dataclasses.replace(plan, rows=rows, examples=plan.examples[chosen], pad_lengths=plan.pad_lengths[chosen],
                               real_tokens=plan.real_tokens[chosen])


def contenders_of(model, precision, xla, max_length, splits, tokenizer, rng) -> list[Contender]:
    """The five contenders of one (precision, xla) setting, all training `model`."""
    from trainer.data import stream as stream_lib
    lengths = {name: np.minimum(stream_lib.lengths_of(split), max_length) for name, split in splits.items()}
    plan = functools.partial(stream_lib.plan_batches, max_length=max_length, shuffle=True, seed=FLAGS.seed,
                             drop_remainder=True, boundaries=stream_lib.bucket_boundaries(lengths["full"]))
    plans = {name: (plan(lengths["subset"], padding=padding, global_batch_size=FLAGS.global_batch_size), "subset")
             for name, padding in (("full", "max_length"), ("batch", "batch"), ("bucket", "bucket"))}
    by_tokens = plan(lengths["full"], padding="bucket", batch_tokens=batch_tokens(max_length))
    plans["equal tokens"] = representative(by_tokens, FLAGS.steps), "full"
    plans["packed"] = plan(lengths["full"], padding="pack", batch_tokens=batch_tokens(max_length)), "full"
    found = []
    for name, (plan, which) in plans.items():
        dataset, vocab = stream_lib.batches(splits[which], plan, model, tokenizer), model.config.vocab_size
        shapes = [(int(r), int(n)) for r, n in zip(plan.batch_rows, plan.pad_lengths[:, 0])]
        real = np.split(lengths[which][plan.rows], np.cumsum(plan.examples)[:-1])   # per step, each example's
        shape_inputs = ({s: iter(dataset.take(1).repeat()) for s in set(shapes)} if plan.padding == "pack" else
                        {s: synthetic(s, dataset.element_spec, rng, vocab) for s in sorted(set(shapes))})
        found.append(Contender(name, precision, xla, model, [iter(dataset)] * len(shapes), shapes, real, shape_inputs,
                               (id(model), repr(dataset.element_spec))))
    by_tokens = next(c for c in found if c.name == "equal tokens")
    return found + [dataclasses.replace(by_tokens, name="ideal", inputs=[by_tokens.shape_inputs[s] for s in
                                                                         by_tokens.shapes], seconds=[])]


def batch_tokens(max_length: int) -> int:
    return FLAGS.batch_tokens or FLAGS.global_batch_size * max_length


def matrix() -> list[tuple[str, bool]]:
    """(precision, xla) pairs to run: the baseline's first, whether asked for or not."""
    asked = itertools.product(FLAGS.precisions, [x.lower() == "true" for x in FLAGS.xla])
    return list(dict.fromkeys([("none", False), *asked]))


def measure(max_length: int, splits, tokenizer, model_dir: str) -> list[dict]:
    """Every contender at every (precision, xla) setting at one max_length, interleaved: one result row each."""
    import tf_keras
    tf_keras.backend.clear_session()
    rng, contenders, first_calls = np.random.default_rng(FLAGS.seed), [], {}   # (spec, shape) -> first step s
    for precision, xla in matrix():
        model = build_model(model_dir, precision, xla)
        for contender in contenders_of(model, precision, xla, max_length, splits, tokenizer, rng):
            new = {s: it for s, it in contender.shape_inputs.items() if (contender.spec, s) not in first_calls}
            log(f"L={max_length} {precision} xla={xla} {contender.name}: {len(new)} new shape(s)")
            first_calls.update({(contender.spec, s): timed_step(model, it) for s, it in new.items()})
            contenders.append(contender)
    for contender in contenders:
        for it in itertools.islice(itertools.cycle(contender.shape_inputs.values()), FLAGS.warmup_steps):
            timed_step(contender.model, it)
    for step in range(FLAGS.steps):
        k = step % len(contenders)
        for contender in contenders[k:] + contenders[:k]:      # who goes first rotates
            if step < len(contender.inputs):
                contender.seconds.append(timed_step(contender.model, contender.inputs[step]))
        log(f"L={max_length}: timed {step + 1}/{FLAGS.steps} steps of each contender")
    rows = [result(c, max_length, first_calls) for c in contenders]
    base = next(r for r in rows if (r["contender"], r["precision"], r["xla"]) == ("full", "none", False))
    for row in rows:
        row["speedup"] = round(row["examples_per_sec"] / base["examples_per_sec"], 2)
    return rows


def result(c: Contender, max_length: int, first_calls: dict) -> dict:
    from trainer import flops
    steps, seconds = len(c.seconds), float(np.sum(c.seconds))
    token_sized = c.name in ("equal tokens", "ideal", "packed")
    shapes, real = c.shapes[:steps], np.concatenate(c.real_lengths[:steps])
    examples, padded = len(real), sum(r * n for r, n in shapes)
    config = c.model.config
    flops_padded, flops_real = flops.padded_flops(config, *zip(*shapes)), flops.sequence_flops(config, real)
    peak, source = flops.peak_flops(c.precision, flops.device_name(), FLAGS.peak_tflops)
    median = {s: np.median([t for t, x in zip(c.seconds, shapes) if x == s]) for s in set(shapes)}
    compile_seconds = [max(0.0, first_calls[c.spec, s] - median.get(s, seconds / padded * s[0] * s[1]))
                       for s in c.shape_inputs]
    return {"contender": c.name, "max_length": max_length, "precision": c.precision, "xla": c.xla, "steps": steps,
            "batch_tokens": batch_tokens(max_length) if token_sized else None,
            "global_batch_size": None if token_sized else FLAGS.global_batch_size,
            "examples_per_sec": round(examples / seconds, 2), "mean_rows_per_step": round(examples / steps, 1),
            "real_tokens_per_sec": round(real.sum() / seconds, 1), "padded_tokens_per_sec": round(padded / seconds, 1),
            "padding_efficiency": round(real.sum() / padded, 3), "distinct_shapes": len(c.shape_inputs),
            "step_time_ms_median": round(1000 * np.median(c.seconds), 1),
            "step_time_ms_p90": round(1000 * np.percentile(c.seconds, 90), 1),
            "compile_seconds": round(sum(compile_seconds), 1),
            "compile_seconds_per_shape": round(float(np.mean(compile_seconds)), 1),
            "model_flops_per_sec": round(flops_padded / seconds), "peak_source": source,
            "model_flops_per_sec_real": round(flops_real / seconds), "peak_flops_per_sec": round(peak),
            "mfu": round(flops_padded / seconds / peak, 4),
            "mfu_real": round(flops_real / seconds / peak, 4), "step_ms": [round(1000 * t) for t in c.seconds],
            "step_lengths": [n for _, n in shapes]}


COLUMNS = [("contender", "contender", "{}"), ("precision", "prec", "{}"), ("xla", "xla", "{}"),
           ("examples_per_sec", "ex/s", "{:.1f}"), ("speedup", "vs baseline", "{:.2f}x"),
           ("mean_rows_per_step", "rows/step", "{:.0f}"), ("padding_efficiency", "pad eff", "{:.2f}"),
           ("step_time_ms_median", "med ms", "{:.0f}"), ("model_flops_per_sec", "GFLOP/s", "{:.0f}"),
           ("mfu", "MFU", "{:.1%}"), ("mfu_real", "MFU real", "{:.1%}"), ("distinct_shapes", "shapes", "{}"),
           ("compile_seconds_per_shape", "compile s/shape", "{:.1f}")]


def report(rows: list[dict], settings: dict) -> str:
    """One markdown table per max_length, the baseline first, then in contender order."""
    lines = ["# Padding x precision x XLA throughput", "", ", ".join(f"{k}={v}" for k, v in settings.items())]
    for length in sorted({r["max_length"] for r in rows}):
        lines += ["", f"## max_length {length}", "", "| " + " | ".join(t for _, t, _ in COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        for r in sorted((r for r in rows if r["max_length"] == length), key=order):
            cells = [fmt.format(r[k] / 1e9 if k == "model_flops_per_sec" else r[k]) for k, _, fmt in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def order(row: dict):
    return row["max_length"], matrix().index((row["precision"], row["xla"])), CONTENDERS.index(row["contender"])


def bar_chart(rows: list[dict], path: str) -> None:
    """Examples/s, one cluster per (max_length, precision, xla), one colour per contender, speedup on each bar."""
    import matplotlib.pyplot as plt
    plt.switch_backend("agg")
    clusters = list(dict.fromkeys((r["max_length"], r["precision"], r["xla"]) for r in sorted(rows, key=order)))
    by_key = {(r["max_length"], r["precision"], r["xla"], r["contender"]): r for r in rows}
    width = 0.8 / len(CONTENDERS)
    fig, ax = plt.subplots(figsize=(2 + 2.2 * len(clusters), 5))
    for i, name in enumerate(CONTENDERS):
        found = [by_key.get((*c, name)) for c in clusters]
        x = np.arange(len(clusters)) + (i - (len(CONTENDERS) - 1) / 2) * width
        bars = ax.bar(x, [r["examples_per_sec"] if r else 0 for r in found], width, label=name, color=f"C{i}")
        ax.bar_label(bars, [f"{r['speedup']:.1f}x" if r else "" for r in found], fontsize=7, rotation=90, padding=2)
    names = [f"L={length}\n{'float32' if p == 'none' else p}{', xla' if xla else ''}" for length, p, xla in clusters]
    ax.set_xticks(np.arange(len(clusters)), names)
    ax.set_ylabel("training examples / s (label: x the full-padding float32 baseline)")
    ax.margins(y=0.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _main(config, arguments):
    del config, arguments
    from trainer.errors import UsageError
    if os.path.isfile(FLAGS.output_dir):
        raise UsageError(f"--output_dir={FLAGS.output_dir} is a file: pass a directory")
    from trainer import flops, hub, runtime, storage
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    model_dir, longest = hub.resolve(FLAGS.model), max(map(int, FLAGS.max_lengths))
    data_dir = os.path.join(FLAGS.work_dir, f"{os.path.basename(os.path.normpath(model_dir))}_{longest}")  # reused
    prepare.prepare(PrepareConfig(input=FLAGS.source, output_dir=data_dir, model=model_dir, max_length=longest,
                                  overwrite=True))
    tokenizer, data = hub.load_tokenizer(model_dir), prepare.open_prepared(data_dir)
    runtime.import_tensorflow()
    import tensorflow as tf
    full = data.load()["train"]
    used = np.random.default_rng(FLAGS.seed).permutation(len(full))[:FLAGS.steps * FLAGS.global_batch_size]
    splits = {"subset": full.select(np.sort(used)), "full": full}
    settings = {k: FLAGS[k].value for k in "model global_batch_size batch_tokens steps warmup_steps seed".split()}
    settings.update(machine=flops.machine(), device=flops.device_name(), tensorflow=tf.__version__,
                    load_average_at_start=[round(x, 2) for x in os.getloadavg()])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    rows = []
    for max_length in map(int, FLAGS.max_lengths):
        rows += measure(max_length, splits, tokenizer, model_dir)
        settings.update(load_average_at_end=[round(x, 2) for x in os.getloadavg()],
                        seconds=round(time.time() - STARTED))
        storage.write_json(os.path.join(FLAGS.output_dir, "results.json"), {"settings": settings, "rows": rows})
        storage.write_bytes(os.path.join(FLAGS.output_dir, "results.md"), report(rows, settings).encode())
    print("\n" + report(rows, settings))
    try:
        bar_chart(rows, os.path.join(FLAGS.output_dir, "throughput.png"))
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no throughput.png")
    print(f"wrote {FLAGS.output_dir}/results.json, results.md ({settings['seconds']} s)")


def main():
    run(_main, __doc__)


if __name__ == "__main__":
    main()
