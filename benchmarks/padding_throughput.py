"""Training throughput of the three padding modes (max_length, batch, bucket) against the ideal.

Run from the project root (it must be on sys.path; `import trainer` comes from the editable install):

    .venv/bin/python -m benchmarks.padding_throughput

e.g. with --steps=40 --xla=false,true --precisions=none,bf16 --model_size=base --output_dir=DIR.

Per (max_length, xla, precision) it builds one classifier per padding mode, plus one for the ideal,
each from the same seed and compiled as trainer.train does. Every mode trains one epoch of the same
--steps x --global_batch_size training rows through `stream(...)` with the model's own Keras train
function (what `fit` calls), one step per call, timed until the loss is back. The ideal replays the
bucket epoch's (rows, length) shapes, in its order, from synthetic `from_tensors(...).repeat()` tensors:
no input pipeline. Before timing, each model runs every batch shape of its epoch once on synthetic
tensors (trace + compile, reported as compile_seconds), then, once all are built, --warmup_steps more;
then the modes take turns, --interleave steps each, so they share the machine's background noise
(examples/s = examples / summed step time; medians and p90 beside it). The input pipeline alone is
timed afterwards, with no model step. Writes results.json (with every step's time), results.md and
throughput.png to --output_dir and prints PASS/MISS per target of the issue; asserts nothing.
"""
import collections
import dataclasses
import itertools
import json
import os
import time

import numpy as np
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, before TensorFlow is imported)
import datasets
import tensorflow as tf
import tf_keras
import transformers

from trainer import cli, hub
from trainer import model as model_lib
from trainer.config import PrepareConfig, TrainConfig
from trainer.data import prepare, readers
from trainer.data import stream as stream_lib

flags.DEFINE_string("model", MINILM,
                    "Checkpoint directory or hub id (its tokenizer is used even with --model_size).")
flags.DEFINE_enum("model_size", None, ["tiny", "mini", "small", "base"],
                  "Instead of the checkpoint's weights, a randomly initialised BERT of this size.")
flags.DEFINE_string("source", SAMPLE_CSV, "Sentiment140 CSV to prepare.")
flags.DEFINE_string("data_dir", None, "An already prepared dataset to use for every max_length instead of --source.")
flags.DEFINE_string("work_dir", "/tmp/padding_throughput/data", "Where --source is prepared (reused when unchanged).")
flags.DEFINE_string("output_dir", "/tmp/padding_throughput/report", "Where results.json/.md and throughput.png go.")
flags.DEFINE_list("max_lengths", ["64", "128"], "Max lengths to compare the padding modes at.")
flags.DEFINE_list("xla", ["false"], "jit_compile settings to run, e.g. false,true.")
flags.DEFINE_list("precisions", ["none"], "Precisions to run: none, fp16, bf16.")
flags.DEFINE_integer("global_batch_size", 32, "Rows per training step.")
flags.DEFINE_integer("steps", 20, "Timed steps per mode: the epoch of --steps x --global_batch_size rows.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per mode after every mode's compile pass.")
flags.DEFINE_integer("interleave", 1, "Timed steps a mode runs before the next mode takes its turn.")
flags.DEFINE_integer("pipeline_epochs", 5, "Epochs of the stream iterated (no model) to time the input pipeline.")
flags.DEFINE_integer("seed", 0, "Seed for the row subset, the stream's shuffle and the model's new head.")
FLAGS = flags.FLAGS

BERT_SIZES = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "base": (12, 768)}  # layers, hidden
IDEAL = "ideal"
TRAIN_DEFAULTS = TrainConfig(data_dir="", model="", output_dir="")
STARTED = time.time()


@dataclasses.dataclass
class Contender:
    """One padding mode (or the ideal): its model's train function, what it feeds it, what it measured."""
    padding: str
    train_function: object
    inputs: list                    # per epoch step: the iterator train_function reads that step's batch from
    shapes: list                    # per epoch step: (rows, padded length)
    real_tokens: np.ndarray         # per epoch step
    shape_inputs: dict              # (rows, length) -> an endless iterator of one synthetic batch of that shape
    first_call_seconds: dict = dataclasses.field(default_factory=dict)   # shape -> its first (compiling) step
    seconds: list = dataclasses.field(default_factory=list)               # per timed step


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f} s] {message}", flush=True)


def timed_step(train_function, iterator) -> float:
    start = time.perf_counter()
    float(train_function(iterator)["loss"])   # the step is done once its loss is on the host
    return time.perf_counter() - start


def synthetic_batch(rows: int, length: int, input_names, rng) -> tuple[dict, tf.Tensor]:
    columns = {"input_ids": rng.integers(1000, 20000, (rows, length)), "attention_mask": np.ones((rows, length)),
               "token_type_ids": np.zeros((rows, length))}
    return ({name: tf.constant(columns[name], tf.int32) for name in input_names},
            tf.constant(rng.integers(0, 2, rows), tf.int32))


def build_model(tokenizer, model_dir: str, num_steps: int, xla: bool):
    """A classifier compiled as trainer.train compiles it (same seed every call: same initial weights)."""
    tf_keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.model_size:
        layers, hidden = BERT_SIZES[FLAGS.model_size]
        config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=hidden // 64, intermediate_size=4 * hidden, num_labels=2)
        model = transformers.TFBertForSequenceClassification(config)
        model.build_in_name_scope()
    else:
        model = model_lib.build_classifier(model_dir, ["negative", "positive"])
    optimizer, _ = transformers.create_optimizer(
        TRAIN_DEFAULTS.learning_rate, num_train_steps=num_steps,
        num_warmup_steps=int(TRAIN_DEFAULTS.warmup_ratio * num_steps), weight_decay_rate=TRAIN_DEFAULTS.weight_decay)
    model.compile(optimizer=optimizer, loss=model_lib.loss_fn,
                  metrics=[tf_keras.metrics.SparseCategoricalAccuracy("accuracy")], jit_compile=xla,
                  steps_per_execution=1)
    return model


def compile_shapes(contender: Contender) -> None:
    """One step per distinct shape: the trace and (XLA) compilations, timed apart from the timed steps."""
    for shape, iterator in contender.shape_inputs.items():
        contender.first_call_seconds[shape] = timed_step(contender.train_function, iterator)


def warm_up(contenders: list[Contender]) -> None:
    """--warmup_steps untimed steps each, once every model is built: a model's first step after another model
    was built and traced is seconds slower (measured: 3-6 s instead of 1 s), so none of that lands in a timed step."""
    for contender in contenders:
        for iterator in itertools.islice(itertools.cycle(contender.shape_inputs.values()), FLAGS.warmup_steps):
            timed_step(contender.train_function, iterator)


def epoch_shapes(plan: stream_lib.BatchPlan) -> list[tuple[int, int]]:
    return [(int(rows), int(length)) for rows, length in zip(plan.examples, plan.pad_lengths[:, 0])]


def endless(dataset: tf.data.Dataset) -> tf.data.Iterator:
    """An iterator over dataset.repeat() without tf.data autotuning: deleting an autotuned iterator that has
    lived a minute or more can block for up to a minute (measured: 52 s), waiting for its tuning thread."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return iter(dataset.repeat().with_options(options))


def relaxed_repeat(batch, spec) -> tf.data.Iterator:
    """`batch` again and again, with the stream's element spec (length None): the trace (and XLA executables)
    made for it are the ones the stream's batches then use."""
    padded_shapes = ({name: spec[0][name].shape[1:] for name in batch[0]}, [])
    return endless(tf.data.Dataset.from_tensor_slices(batch).padded_batch(spec[1].shape[0], padded_shapes,
                                                                          drop_remainder=True))


def stream_contender(padding, model, split, tokenizer, stream_args, rng) -> tuple[Contender, stream_lib.Stream]:
    """A padding mode: one epoch of `split` through stream(), read by the train function as `fit` reads it."""
    built = stream_lib.stream(split, model, tokenizer, padding=padding, **stream_args)
    spec, names = built.dataset.element_spec, list(built.dataset.element_spec[0])
    shape_inputs = {s: relaxed_repeat(synthetic_batch(*s, names, rng), spec) for s in sorted(built.plan.shapes())}
    epoch = iter(built.dataset)
    return Contender(padding, model.make_train_function(), [epoch] * built.plan.steps, epoch_shapes(built.plan),
                     built.plan.real_tokens, shape_inputs), built


def ideal_contender(model, bucket: stream_lib.Stream, rng) -> Contender:
    """The bucket epoch's shapes, in its order, as pre-built tensors: no input pipeline."""
    names = list(bucket.dataset.element_spec[0])
    shape_inputs = {s: endless(tf.data.Dataset.from_tensors(synthetic_batch(*s, names, rng)))
                    for s in sorted(bucket.plan.shapes())}
    shapes = epoch_shapes(bucket.plan)
    return Contender(IDEAL, model.make_train_function(), [shape_inputs[s] for s in shapes], shapes,
                     bucket.plan.real_tokens, shape_inputs)


def measure_group(split, full_lengths, tokenizer, model_dir, max_length, xla, precision) -> list[dict]:
    """All padding modes and the ideal at one (max_length, xla, precision): one result row each."""
    tf_keras.backend.clear_session()
    tf_keras.mixed_precision.set_global_policy(model_lib.KERAS_POLICY[precision])
    rng = np.random.default_rng(FLAGS.seed)
    boundaries = stream_lib.bucket_boundaries(full_lengths)   # those of a training run on the whole split
    stream_args = dict(global_batch_size=FLAGS.global_batch_size, max_length=max_length, shuffle=True,
                       seed=FLAGS.seed, drop_remainder=True)
    contenders, models, streams = [], {}, {}
    for padding in (*stream_lib.PADDINGS, IDEAL):
        model = models[padding] = build_model(tokenizer, model_dir, 2 * FLAGS.steps + FLAGS.warmup_steps, xla)
        if padding == IDEAL:
            contender = ideal_contender(model, streams["bucket"], rng)
        else:
            contender, streams[padding] = stream_contender(padding, model, split, tokenizer,
                                                           stream_args | {"bucket_boundaries": boundaries}, rng)
        log(f"  {padding}: compiling {len(contender.shape_inputs)} shape(s)")
        compile_shapes(contender)
        contenders.append(contender)
    warm_up(contenders)
    for turn, start in enumerate(range(0, FLAGS.steps, FLAGS.interleave)):
        for contender in contenders[turn % 4:] + contenders[:turn % 4]:   # who goes first rotates
            for step in range(start, min(start + FLAGS.interleave, FLAGS.steps)):
                contender.seconds.append(timed_step(contender.train_function, contender.inputs[step]))
        done = min(start + FLAGS.interleave, FLAGS.steps)
        if done == FLAGS.steps or done // 5 > start // 5:
            log(f"  timed {done}/{FLAGS.steps} steps of each mode")
    start = time.perf_counter()
    for contender in contenders[:-1]:   # end the epochs and free their iterators: like any autotuned tf.data
        collections.deque(contender.inputs[-1], maxlen=0)   # iterator, one can take up to a minute to delete
        contender.inputs = None
    log(f"  released the streams' iterators in {time.perf_counter() - start:.0f} s; input pipeline alone")
    pipeline = {padding: pipeline_examples_per_sec(split, models[padding], tokenizer, padding,
                                                   stream_args | {"bucket_boundaries": boundaries})
                for padding in stream_lib.PADDINGS}
    rows = [result_row(c, max_length, xla, precision, pipeline.get(c.padding)) for c in contenders]
    by_padding = {row["padding"]: row for row in rows}
    for row in rows:
        row["speedup_vs_full"] = round(row["examples_per_sec"] / by_padding["max_length"]["examples_per_sec"], 3)
        row["fraction_of_ideal"] = round(row["examples_per_sec"] / by_padding[IDEAL]["examples_per_sec"], 3)
    whole_epoch = stream_lib.plan_batches(full_lengths, padding="bucket", boundaries=boundaries, **stream_args)
    by_padding["bucket"]["train_epoch_padding_efficiency"] = round(whole_epoch.padding_efficiency, 3)
    return rows


def pipeline_examples_per_sec(split, model, tokenizer, padding, stream_args) -> float:
    """Examples/s iterating the timed epoch's stream --pipeline_epochs times, with no model step."""
    dataset, examples = stream_lib.stream(split, model, tokenizer, padding=padding, **stream_args).dataset, 0
    start = time.perf_counter()
    for _ in range(FLAGS.pipeline_epochs):
        for _, labels in dataset:
            examples += int(labels.shape[0])
    return examples / (time.perf_counter() - start)


def result_row(c: Contender, max_length, xla, precision, pipeline_rate) -> dict:
    steps = len(c.seconds)
    seconds = float(np.sum(c.seconds))
    examples = sum(rows for rows, _ in c.shapes[:steps])
    real = int(np.sum(c.real_tokens[:steps]))
    padded = sum(rows * length for rows, length in c.shapes[:steps])
    by_shape = {}
    for shape, t in zip(c.shapes, c.seconds):
        by_shape.setdefault(shape, []).append(t)
    per_padded_token = seconds / padded       # a shape never timed: its steady time estimated from its tokens
    compile_seconds = sum(max(0.0, t - (np.median(by_shape[s]) if s in by_shape else per_padded_token * s[0] * s[1]))
                          for s, t in c.first_call_seconds.items())
    rate = examples / seconds
    return {"padding": c.padding, "max_length": max_length, "xla": xla, "precision": precision,
            "global_batch_size": FLAGS.global_batch_size, "steps": steps, "examples_per_sec": round(rate, 2),
            "real_tokens_per_sec": round(real / seconds, 1), "padded_tokens_per_sec": round(padded / seconds, 1),
            "padding_efficiency": round(real / padded, 3),
            "step_time_ms_median": round(1000 * float(np.median(c.seconds)), 1),
            "step_time_ms_p90": round(1000 * float(np.percentile(c.seconds, 90)), 1),
            "distinct_shapes": len(set(c.shapes)), "compile_seconds": round(compile_seconds, 1),
            "mean_padded_length": round(padded / examples, 1),
            "pipeline_examples_per_sec": round(pipeline_rate, 1) if pipeline_rate else None,
            "pipeline_headroom": round(pipeline_rate / rate, 1) if pipeline_rate else None,
            "traces": c.train_function.experimental_get_tracing_count(),
            "step_ms": [round(1000 * t) for t in c.seconds], "step_lengths": [n for _, n in c.shapes[:steps]]}


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets (2-core CPU, MiniLM-L6, global batch 32) for every (xla, precision) group run."""
    found, targets = {(r["padding"], r["max_length"], r["xla"], r["precision"]): r for r in rows}, []

    def add(name, measured, goal, met):
        targets.append({"target": name, "measured": measured, "goal": goal, "met": bool(met)})

    for xla, precision in sorted({(r["xla"], r["precision"]) for r in rows}):
        tag = f"xla={'on' if xla else 'off'} {precision}"
        for (length, padding, goal) in ((64, "bucket", 2.5), (128, "bucket", 4.5), (64, "batch", 1.1)):
            if (padding, length, xla, precision) in found:
                value = found[padding, length, xla, precision]["speedup_vs_full"]
                add(f"{padding} vs full padding, L={length}, {tag}", f"{value:.2f}x", f">= {goal}x", value >= goal)
        for length in sorted({r["max_length"] for r in rows}):
            b = found.get(("bucket", length, xla, precision))
            if not b:
                continue
            add(f"bucket fraction of ideal, L={length}, {tag}", f"{b['fraction_of_ideal']:.2f}", ">= 0.90",
                b["fraction_of_ideal"] >= 0.9)
            add(f"bucket padding efficiency & shapes, L={length}, {tag}",
                f"{b['padding_efficiency']:.3f} (train epoch {b['train_epoch_padding_efficiency']:.3f}), "
                f"{b['distinct_shapes']} shapes", ">= 0.93, <= 8",
                b["padding_efficiency"] >= 0.93 and b["distinct_shapes"] <= 8)
            add(f"bucket input pipeline / training rate, L={length}, {tag}", f"{b['pipeline_headroom']:.1f}x",
                ">= 20x", b["pipeline_headroom"] >= 20)
    return targets


COLUMNS = [("padding", "padding", "{}"), ("max_length", "L", "{}"), ("xla", "xla", "{}"), ("precision", "prec", "{}"),
           ("examples_per_sec", "ex/s", "{:.1f}"), ("real_tokens_per_sec", "real tok/s", "{:.0f}"),
           ("padded_tokens_per_sec", "pad tok/s", "{:.0f}"), ("padding_efficiency", "pad eff", "{:.3f}"),
           ("step_time_ms_median", "med ms", "{:.0f}"), ("step_time_ms_p90", "p90 ms", "{:.0f}"),
           ("distinct_shapes", "shapes", "{}"), ("compile_seconds", "compile s", "{:.1f}"),
           ("speedup_vs_full", "vs full", "{:.2f}"), ("fraction_of_ideal", "of ideal", "{:.2f}"),
           ("pipeline_examples_per_sec", "pipe ex/s", "{:.0f}"), ("pipeline_headroom", "pipe/train", "{:.0f}x")]


def cells(row: dict) -> list[str]:
    return ["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]


def text_report(rows, targets) -> str:
    table = [[title for _, title, _ in COLUMNS]] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table]
    lines += ["", f"{'target':<58} {'measured':<40} {'goal':<14} result"]
    lines += [f"{t['target']:<58} {t['measured']:<40} {t['goal']:<14} {'PASS' if t['met'] else 'MISS'}"
              for t in targets]
    return "\n".join(lines)


def markdown_report(rows, targets, settings) -> str:
    lines = ["# Padding throughput", "", "```", json.dumps(settings, indent=1), "```", "",
             "| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines += ["", "| target | measured | goal | result |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['goal']} | {'PASS' if t['met'] else 'MISS'} |" for t in targets]
    return "\n".join(lines) + "\n"


def bar_chart(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["max_length"], r["xla"], r["precision"]) for r in rows})
    paddings = [*stream_lib.PADDINGS, IDEAL]
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(groups), 4.5))
    for i, padding in enumerate(paddings):
        values = [next(r["examples_per_sec"] for r in rows if (r["max_length"], r["xla"], r["precision"]) == g
                       and r["padding"] == padding) for g in groups]
        ax.bar(np.arange(len(groups)) + (i - 1.5) * 0.2, values, 0.2, label=padding)
    ax.set_xticks(np.arange(len(groups)), [f"L={g[0]}\nxla={'on' if g[1] else 'off'} {g[2]}" for g in groups])
    ax.set_ylabel("training examples / s")
    model = FLAGS.model_size or os.path.basename(os.path.normpath(FLAGS.model))
    ax.set_title(f"Padding modes, {model}, global batch {FLAGS.global_batch_size}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prepared_train_split(max_length: int, model_dir: str):
    if FLAGS.data_dir:
        return prepare.load(FLAGS.data_dir)["train"]
    output_dir = os.path.join(FLAGS.work_dir, f"{os.path.basename(os.path.normpath(model_dir))}_{max_length}")
    prepare.prepare(PrepareConfig(source=readers.Source(FLAGS.source), output_dir=output_dir, model=model_dir,
                                  max_length=max_length))
    return prepare.load(output_dir)["train"]


def _main(argv):
    del argv
    datasets.disable_progress_bars()
    if any(x.lower() not in ("true", "false") for x in FLAGS.xla):
        raise cli.UsageError(f"--xla takes true and/or false, not {','.join(FLAGS.xla)}")
    xla_settings = [x.lower() == "true" for x in FLAGS.xla]
    if any(p not in model_lib.KERAS_POLICY for p in FLAGS.precisions):
        raise cli.UsageError(f"--precisions takes {', '.join(model_lib.KERAS_POLICY)}")
    model_dir = hub.resolve(FLAGS.model)
    tokenizer = hub.load_tokenizer(model_dir)
    settings = {k: FLAGS[k].value for k in ("model", "model_size", "source", "data_dir", "global_batch_size", "steps",
                                            "warmup_steps", "interleave", "pipeline_epochs", "seed")}
    settings.update(cpu_count=os.cpu_count(), load_average_at_start=[round(x, 2) for x in os.getloadavg()])
    rows, start = [], time.time()
    for max_length in map(int, FLAGS.max_lengths):
        log(f"preparing {FLAGS.data_dir or FLAGS.source} at max_length={max_length}")
        full_split = prepared_train_split(max_length, model_dir)
        used = np.random.default_rng(FLAGS.seed).permutation(len(full_split))[:FLAGS.steps * FLAGS.global_batch_size]
        split, full_lengths = full_split.select(np.sort(used)), stream_lib.lengths_of(full_split)
        for precision, xla in itertools.product(FLAGS.precisions, xla_settings):
            log(f"max_length={max_length} xla={xla} precision={precision}: {len(split)} of {len(full_split)} rows")
            rows += measure_group(split, full_lengths, tokenizer, model_dir, max_length, xla, precision)
    settings.update(load_average_at_end=[round(x, 2) for x in os.getloadavg()], seconds=round(time.time() - start))
    targets = check_targets(rows)
    print("\n" + text_report(rows, targets))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump({"settings": settings, "rows": rows, "targets": targets}, f, indent=2)
    with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
        f.write(markdown_report(rows, targets, settings))
    bar_chart(rows, os.path.join(FLAGS.output_dir, "throughput.png"))
    print(f"\nwrote {FLAGS.output_dir}/results.json, results.md, throughput.png ({settings['seconds']} s)")


def main():
    cli.run(_main)


if __name__ == "__main__":
    main()
