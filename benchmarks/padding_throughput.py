"""Training throughput of the padding modes (max_length, batch, bucket), at equal rows and at equal tokens,
against the fixed-shape ideal. One run, side by side; asserts nothing about time.

Run from the project root (`trainer-benchmark` is the same command):

    .venv/bin/python -m benchmarks.padding_throughput [--steps=40 --xla=false,true --precisions=none,bf16
        --embedding_updates=dense,lazy --model_size=base --output_dir=DIR]

Per (max_length, xla, precision, embedding_update) group it builds one classifier per contender, each from the
same seed and compiled by `trainer.model.compile_classifier`, as trainer-train compiles it:
  equal rows    max_length, batch, bucket: one epoch of the same --steps x --global_batch_size rows each;
                ideal: the bucket epoch's (rows, length) shapes replayed from synthetic tensors (no pipeline)
  equal tokens  bucket with batch_tokens = global_batch_size x max_length (the memory of a full-padding batch;
                --batch_tokens overrides): --steps batches of a shuffled epoch over the whole split, with the
                epoch's mix of shapes (rows per batch vary by shape); and its ideal
Every contender is trained with the model's own Keras train function (what `fit` calls), one step per call,
timed until the loss is back. Every batch shape is run once first (trace + compile, reported as
compile_seconds), then --warmup_steps more once all are built; then the contenders take turns, --interleave
steps each, so they share the machine's background noise (examples/s = examples / summed step time). The input
pipeline alone is timed afterwards. results.json and results.md are rewritten after every group, so an
interrupted run keeps what it measured; throughput.png is drawn if matplotlib is installed.
"""
import collections
import dataclasses
import itertools
import json
import os
import time

import numpy as np
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, before TensorFlow is imported)

flags.DEFINE_string("model", MINILM, "Checkpoint directory or hub id (its tokenizer is used even with --model_size).")
flags.DEFINE_enum("model_size", None, ["tiny", "mini", "small", "base"],
                  "Instead of the checkpoint's weights, a randomly initialised BERT of this size.")
flags.DEFINE_string("source", SAMPLE_CSV, "Sentiment140 CSV to prepare (once, at the largest --max_lengths).")
flags.DEFINE_string("data_dir", None, "An already prepared dataset to use instead of --source; it serves every "
                    "max_length up to its own (longer rows are truncated as they are streamed).")
flags.DEFINE_string("work_dir", "/tmp/padding_throughput/data", "Where --source is prepared (reused when unchanged).")
flags.DEFINE_string("output_dir", "/tmp/padding_throughput/report", "Where results.json/.md and throughput.png go.")
flags.DEFINE_list("max_lengths", ["64", "128"], "Max lengths to compare the padding modes at.")
flags.DEFINE_list("xla", ["false"], "jit_compile settings to run, e.g. false,true.")
flags.DEFINE_list("precisions", ["none"], "Precisions to run: none, fp16, bf16.")
flags.DEFINE_list("embedding_updates", ["dense"], "Embedding updates to run: dense, lazy, frozen.")
flags.DEFINE_integer("global_batch_size", 32, "Rows per training step of the equal-row contenders.")
flags.DEFINE_integer("batch_tokens", None, "Tokens per step of the equal-token bucket contender (default: "
                     "global_batch_size x max_length, the tokens of a full-padding step); 0 leaves it out.")
flags.DEFINE_integer("steps", 20, "Timed steps per contender (the equal-row epoch is --steps x --global_batch_size rows).")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per contender after every contender's compile pass.")
flags.DEFINE_integer("interleave", 1, "Timed steps a contender runs before the next takes its turn.")
flags.DEFINE_integer("pipeline_epochs", 5, "Epochs of the stream iterated (no model) to time the input pipeline.")
flags.DEFINE_integer("seed", 0, "Seed for the row subset, the stream's shuffle and the model's new head.")
FLAGS = flags.FLAGS

BERT_SIZES = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "base": (12, 768)}  # layers, hidden
STARTED = time.time()


@dataclasses.dataclass
class Contender:
    """One padding mode (or an ideal): its model's train function, what it feeds it, what it measured."""
    padding: str                    # max_length | batch | bucket | ideal
    batch_tokens: int | None        # token-sized batches, or None (row-sized)
    model: object
    train_function: object
    inputs: list                    # per epoch step: the iterator train_function reads that step's batch from
    shapes: list                    # per epoch step: (rows, padded length)
    real_tokens: np.ndarray         # per epoch step
    shape_inputs: dict              # (rows, length) -> an endless iterator of one synthetic batch of that shape
    first_call_seconds: dict = dataclasses.field(default_factory=dict)   # shape -> its first (compiling) step
    seconds: list = dataclasses.field(default_factory=list)               # per timed step
    stream: object = None           # the stream it trains on (None for an ideal)


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f} s] {message}", flush=True)


def timed_step(train_function, iterator) -> float:
    start = time.perf_counter()
    float(train_function(iterator)["loss"])   # the step is done once its loss is on the host
    return time.perf_counter() - start


def synthetic_batch(rows: int, length: int, input_names, rng):
    import tensorflow as tf
    columns = {"input_ids": rng.integers(1000, 20000, (rows, length)), "attention_mask": np.ones((rows, length)),
               "token_type_ids": np.zeros((rows, length))}
    return ({name: tf.constant(columns[name], tf.int32) for name in input_names},
            tf.constant(rng.integers(0, 2, rows), tf.int32))


def build_model(model_dir: str, settings, num_steps: int):
    """A classifier compiled as trainer-train compiles it (same seed every call: same initial weights)."""
    import tf_keras
    import transformers
    from trainer import model as model_lib
    tf_keras.utils.set_random_seed(FLAGS.seed)
    freeze = settings.embedding_update == "frozen"
    if FLAGS.model_size:
        layers, hidden = BERT_SIZES[FLAGS.model_size]
        config = transformers.BertConfig(vocab_size=transformers.AutoConfig.from_pretrained(model_dir).vocab_size,
                                         hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                         intermediate_size=4 * hidden, num_labels=2)
        model = transformers.TFBertForSequenceClassification(config)
        model.build_in_name_scope()
        model.bert.embeddings.trainable = not freeze
    else:
        model = model_lib.build_classifier(model_dir, ["negative", "positive"], freeze_embeddings=freeze)
    model_lib.compile_classifier(model, settings, num_steps)
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


def epoch_shapes(plan) -> list[tuple[int, int]]:
    return [(int(rows), int(length)) for rows, length in zip(plan.examples, plan.pad_lengths[:, 0])]


def endless(dataset):
    """An iterator over dataset.repeat() without tf.data autotuning (deleting an autotuned iterator that has
    lived a minute or more can block for up to a minute; measured: 52 s)."""
    import tensorflow as tf
    options = tf.data.Options()
    options.autotune.enabled = False
    return iter(dataset.repeat().with_options(options))


def relaxed_repeat(batch, spec):
    """`batch` again and again, with the stream's element spec (None dimensions): the trace (and XLA executables)
    made for it are the ones the stream's batches then use."""
    import tensorflow as tf
    padded_shapes = ({name: spec[0][name].shape[1:] for name in batch[0]}, [])
    return endless(tf.data.Dataset.from_tensor_slices(batch).padded_batch(int(batch[1].shape[0]), padded_shapes,
                                                                          drop_remainder=True))


def stream_contender(padding, batch_tokens, model, split, tokenizer, plan, rng) -> Contender:
    """A padding mode: the plan's batches through the trainer's stream, read by the train function as `fit` reads it."""
    from trainer.data import stream as stream_lib
    dataset = stream_lib.batches(split, plan, model, tokenizer)
    spec, names = dataset.element_spec, list(dataset.element_spec[0])
    shape_inputs = {s: relaxed_repeat(synthetic_batch(*s, names, rng), spec) for s in sorted(plan.shapes())}
    epoch = iter(dataset)
    return Contender(padding, batch_tokens, model, model.make_train_function(), [epoch] * plan.steps,
                     epoch_shapes(plan), plan.real_tokens, shape_inputs, stream=stream_lib.Stream(dataset, plan))


def ideal_contender(model, like: Contender, rng) -> Contender:
    """`like`'s shapes, in its order, as pre-built tensors: no input pipeline."""
    import tensorflow as tf
    names = list(like.stream.dataset.element_spec[0])
    shape_inputs = {s: endless(tf.data.Dataset.from_tensors(synthetic_batch(*s, names, rng))) for s in sorted(set(like.shapes))}
    return Contender("ideal", like.batch_tokens, model, model.make_train_function(),
                     [shape_inputs[s] for s in like.shapes], like.shapes, like.real_tokens, shape_inputs)


@dataclasses.dataclass(frozen=True)
class Group:
    max_length: int
    xla: bool
    precision: str
    embedding_update: str

    def settings(self):
        from trainer.config import TrainConfig
        return TrainConfig(xla=self.xla, embedding_update=self.embedding_update)   # every other setting: the default


def plans(group: Group, subset_lengths, full_lengths, boundaries) -> dict:
    """(padding, batch_tokens) -> (plan, which split it reads: 'subset' or 'full')."""
    from trainer.data import stream as stream_lib
    common = dict(max_length=group.max_length, shuffle=True, seed=FLAGS.seed, drop_remainder=True)
    found = {(padding, None): (stream_lib.plan_batches(
        subset_lengths, padding=padding, global_batch_size=FLAGS.global_batch_size,
        boundaries=boundaries if padding == "bucket" else None, **common), "subset") for padding in stream_lib.PADDINGS}
    tokens = FLAGS.global_batch_size * group.max_length if FLAGS.batch_tokens is None else FLAGS.batch_tokens
    if tokens:
        plan = stream_lib.plan_batches(full_lengths, padding="bucket", batch_tokens=tokens, boundaries=boundaries,
                                       **common)
        found["bucket", tokens] = (representative_steps(plan, FLAGS.steps), "full")
    return found


def representative_steps(plan, steps: int):
    """`steps` batches of a whole shuffled epoch with the epoch's mix of shapes (each shape's share of the steps,
    by largest remainders), in epoch order. Token-sized batches hold 32 to 128 rows by shape, so the first
    `steps` batches alone would make the rows per step (and the examples/s) a lottery."""
    shapes = list(zip(plan.shard_examples.tolist(), plan.pad_lengths[:, 0].tolist()))
    counts = collections.Counter(shapes)
    quota = {shape: steps * count / plan.steps for shape, count in counts.items()}
    take = {shape: int(q) for shape, q in quota.items()}
    for shape in sorted(quota, key=lambda s: quota[s] - take[s], reverse=True)[:steps - sum(take.values())]:
        take[shape] += 1
    chosen, seen = [], collections.Counter()
    for step, shape in enumerate(shapes):
        if seen[shape] < take[shape]:
            chosen.append(step)
            seen[shape] += 1
    starts = np.concatenate([[0], np.cumsum(plan.examples)])
    rows = np.concatenate([plan.rows[starts[s]:starts[s + 1]] for s in chosen])
    return dataclasses.replace(plan, rows=rows, examples=plan.examples[chosen], pad_lengths=plan.pad_lengths[chosen],
                               real_tokens=plan.real_tokens[chosen])


def measure_group(group: Group, splits: dict, tokenizer, model_dir: str) -> list[dict]:
    """Every contender at one group setting: one result row each."""
    import tf_keras
    from trainer.config import KERAS_POLICY
    from trainer.data import stream as stream_lib
    tf_keras.backend.clear_session()
    tf_keras.mixed_precision.set_global_policy(KERAS_POLICY[group.precision])
    rng, settings = np.random.default_rng(FLAGS.seed), group.settings()
    lengths = {name: stream_lib.lengths_of(split) for name, split in splits.items()}
    boundaries = stream_lib.bucket_boundaries(np.minimum(lengths["full"], group.max_length))  # a training run's
    contenders = []
    for (padding, tokens), (plan, which) in plans(group, lengths["subset"], lengths["full"], boundaries).items():
        model = build_model(model_dir, settings, 2 * FLAGS.steps + FLAGS.warmup_steps)
        contenders.append(stream_contender(padding, tokens, model, splits[which], tokenizer, plan, rng))
        if padding == "bucket":
            ideal = build_model(model_dir, settings, 2 * FLAGS.steps + FLAGS.warmup_steps)
            contenders.append(ideal_contender(ideal, contenders[-1], rng))
        for contender in contenders[-2 if padding == "bucket" else -1:]:
            log(f"  {contender.padding}{' tokens' if tokens else ''}: compiling {len(contender.shape_inputs)} shape(s)")
            compile_shapes(contender)
    warm_up(contenders)
    time_in_turns(contenders)
    rows = [result_row(c, group, pipeline_examples_per_sec(c, tokenizer, splits)) for c in contenders]
    for contender in contenders:
        contender.inputs = contender.stream = contender.model = None
    return with_ratios(rows)


def time_in_turns(contenders: list[Contender]) -> None:
    for turn, start in enumerate(range(0, FLAGS.steps, FLAGS.interleave)):
        k = turn % len(contenders)
        for contender in contenders[k:] + contenders[:k]:   # who goes first rotates
            for step in range(start, min(start + FLAGS.interleave, FLAGS.steps, len(contender.inputs))):
                contender.seconds.append(timed_step(contender.train_function, contender.inputs[step]))
        done = min(start + FLAGS.interleave, FLAGS.steps)
        if done == FLAGS.steps or done // 5 > start // 5:
            log(f"  timed {done}/{FLAGS.steps} steps of each contender")


def with_ratios(rows: list[dict]) -> list[dict]:
    """speedup over full padding (same group), and fraction of the ideal with the same batch sizing."""
    full = next(r for r in rows if r["padding"] == "max_length")
    ideal = {r["batch_tokens"]: r for r in rows if r["padding"] == "ideal"}
    for row in rows:
        row["speedup_vs_full"] = round(row["examples_per_sec"] / full["examples_per_sec"], 3)
        row["fraction_of_ideal"] = round(row["examples_per_sec"] / ideal[row["batch_tokens"]]["examples_per_sec"], 3)
    return rows


def pipeline_examples_per_sec(contender: Contender, tokenizer, splits) -> float | None:
    """Examples/s iterating the contender's stream (built once, as training builds it once per epoch)
    --pipeline_epochs times, with no model step."""
    if contender.stream is None:
        return None
    from trainer.data import stream as stream_lib
    split = splits["full" if contender.batch_tokens else "subset"]
    dataset = stream_lib.batches(split, contender.stream.plan, contender.model, tokenizer)
    examples, start = 0, time.perf_counter()
    for _ in range(FLAGS.pipeline_epochs):
        for _, labels in dataset:
            examples += int(labels.shape[0])
    return examples / (time.perf_counter() - start)


def result_row(c: Contender, group: Group, pipeline_rate: float | None) -> dict:
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
    return {"padding": c.padding, "batch_tokens": c.batch_tokens, "max_length": group.max_length, "xla": group.xla,
            "precision": group.precision, "embedding_update": group.embedding_update,
            "global_batch_size": None if c.batch_tokens else FLAGS.global_batch_size, "steps": steps,
            "examples_per_sec": round(rate, 2), "mean_rows_per_step": round(examples / steps, 1),
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


TARGETS = {  # the issues' targets on this 2-core CPU with MiniLM-L6 (equal rows: round 1; equal tokens: round 2)
    ("bucket", False, 64): 2.5, ("bucket", False, 128): 4.5, ("batch", False, 64): 1.1,
    ("bucket", True, 64): 2.5, ("bucket", True, 128): 5.0}


def check_targets(rows: list[dict]) -> list[dict]:
    targets = []

    def add(name, measured, goal, met):
        targets.append({"target": name, "measured": measured, "goal": goal, "met": bool(met)})

    for r in rows:
        if r["padding"] == "ideal":
            continue
        sizing = f"{'equal tokens' if r['batch_tokens'] else 'equal rows'}"
        tag = f"{r['padding']} ({sizing}), L={r['max_length']}, xla={'on' if r['xla'] else 'off'} {r['precision']} " \
              f"{r['embedding_update']}"
        goal = TARGETS.get((r["padding"], bool(r["batch_tokens"]), r["max_length"]))
        if goal:
            add(f"{tag}: vs full padding", f"{r['speedup_vs_full']:.2f}x", f">= {goal}x", r["speedup_vs_full"] >= goal)
        if r["padding"] == "bucket":
            add(f"{tag}: fraction of ideal", f"{r['fraction_of_ideal']:.2f}", ">= 0.90", r["fraction_of_ideal"] >= 0.9)
            efficiency_goal = 0.85 if r["batch_tokens"] else 0.93
            add(f"{tag}: padding efficiency, shapes", f"{r['padding_efficiency']:.3f}, {r['distinct_shapes']} shapes",
                f">= {efficiency_goal}, <= 8", r["padding_efficiency"] >= efficiency_goal and r["distinct_shapes"] <= 8)
            add(f"{tag}: input pipeline / training rate", f"{r['pipeline_headroom']:.1f}x", ">= 20x",
                r["pipeline_headroom"] >= 20)
    return targets


COLUMNS = [("padding", "padding", "{}"), ("batch_tokens", "tokens", "{}"), ("max_length", "L", "{}"),
           ("xla", "xla", "{}"), ("precision", "prec", "{}"), ("embedding_update", "emb", "{}"),
           ("examples_per_sec", "ex/s", "{:.1f}"), ("mean_rows_per_step", "rows/step", "{:.0f}"),
           ("real_tokens_per_sec", "real tok/s", "{:.0f}"), ("padded_tokens_per_sec", "pad tok/s", "{:.0f}"),
           ("padding_efficiency", "pad eff", "{:.3f}"), ("step_time_ms_median", "med ms", "{:.0f}"),
           ("step_time_ms_p90", "p90 ms", "{:.0f}"), ("distinct_shapes", "shapes", "{}"),
           ("compile_seconds", "compile s", "{:.1f}"), ("speedup_vs_full", "vs full", "{:.2f}"),
           ("fraction_of_ideal", "of ideal", "{:.2f}"), ("pipeline_examples_per_sec", "pipe ex/s", "{:.0f}"),
           ("pipeline_headroom", "pipe/train", "{:.0f}x")]


def cells(row: dict) -> list[str]:
    return ["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]


def text_report(rows, targets) -> str:
    table = [[title for _, title, _ in COLUMNS]] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table]
    lines += ["", f"{'target':<72} {'measured':<28} {'goal':<14} result"]
    lines += [f"{t['target']:<72} {t['measured']:<28} {t['goal']:<14} {'PASS' if t['met'] else 'MISS'}" for t in targets]
    return "\n".join(lines)


def markdown_report(rows, targets, settings) -> str:
    lines = ["# Padding throughput", "", "```", json.dumps(settings, indent=1), "```", "",
             "| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines += ["", "| target | measured | goal | result |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['goal']} | {'PASS' if t['met'] else 'MISS'} |" for t in targets]
    return "\n".join(lines) + "\n"


def bar_chart(rows, path: str) -> None:
    """Examples/s per contender, one cluster per group setting: equal-row and equal-token contenders side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["max_length"], r["xla"], r["precision"], r["embedding_update"]) for r in rows})
    names = sorted({(r["padding"], r["batch_tokens"] or 0) for r in rows}, key=lambda n: (n[1] > 0, n[0]))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(3 + 2.6 * len(groups), 4.8))
    for i, (padding, tokens) in enumerate(names):
        values = [next((r["examples_per_sec"] for r in rows if (r["max_length"], r["xla"], r["precision"],
                                                                r["embedding_update"]) == g and r["padding"] == padding
                        and (r["batch_tokens"] or 0) == tokens), 0) for g in groups]
        label = f"{padding}, equal tokens" if tokens else f"{padding}, equal rows"
        ax.bar(np.arange(len(groups)) + (i - len(names) / 2 + 0.5) * width, values, width, label=label,
               hatch="//" if tokens else None)
    ax.set_xticks(np.arange(len(groups)), [f"L={g[0]}\nxla={'on' if g[1] else 'off'} {g[2]} {g[3]}" for g in groups])
    ax.set_ylabel("training examples / s")
    model = FLAGS.model_size or os.path.basename(os.path.normpath(FLAGS.model))
    ax.set_title(f"Padding modes, {model}: {FLAGS.global_batch_size} rows per step, or the same tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prepared(model_dir: str):
    """The dataset every max_length reads: --data_dir, or --source prepared once at the largest max_length."""
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    if FLAGS.data_dir:
        return prepare.open_prepared(FLAGS.data_dir)
    longest = max(map(int, FLAGS.max_lengths))
    output_dir = os.path.join(FLAGS.work_dir, f"{os.path.basename(os.path.normpath(model_dir))}_{longest}")
    prepare.prepare(PrepareConfig(input=FLAGS.source, output_dir=output_dir, model=model_dir, max_length=longest,
                                  overwrite=True))
    return prepare.open_prepared(output_dir)


def check_flags() -> list[Group]:
    """Every flag checked, and what the run needs found, before anything is measured."""
    from trainer.config import EMBEDDING_UPDATES, KERAS_POLICY
    from trainer.errors import UsageError
    if any(x.lower() not in ("true", "false") for x in FLAGS.xla):
        raise UsageError(f"--xla takes true and/or false, not {','.join(FLAGS.xla)}")
    if any(p not in KERAS_POLICY for p in FLAGS.precisions):
        raise UsageError(f"--precisions takes {', '.join(KERAS_POLICY)}")
    if any(e not in EMBEDDING_UPDATES for e in FLAGS.embedding_updates):
        raise UsageError(f"--embedding_updates takes {', '.join(EMBEDDING_UPDATES)}")
    try:
        lengths = [int(x) for x in FLAGS.max_lengths]
    except ValueError:
        raise UsageError(f"--max_lengths takes numbers, not {','.join(FLAGS.max_lengths)}") from None
    return [Group(length, xla.lower() == "true", precision, update) for length in lengths
            for precision, xla, update in itertools.product(FLAGS.precisions, FLAGS.xla, FLAGS.embedding_updates)]


def _main(config, arguments):
    del config, arguments
    groups = check_flags()
    try:
        import matplotlib  # noqa: F401
        plot = True
    except ImportError:
        plot = False
        log("matplotlib is not installed (pip install -e '.[bench]'): results.json and results.md only, no plot")
    from trainer import hub, runtime
    model_dir = hub.resolve(FLAGS.model)
    tokenizer = hub.load_tokenizer(model_dir)
    data = prepared(model_dir)
    runtime.import_tensorflow()
    settings = {k: FLAGS[k].value for k in ("model", "model_size", "source", "data_dir", "global_batch_size",
                                            "batch_tokens", "steps", "warmup_steps", "interleave", "pipeline_epochs",
                                            "seed")}
    settings.update(cpu_count=os.cpu_count(), load_average_at_start=[round(x, 2) for x in os.getloadavg()])
    full = data.load()["train"]
    used = np.random.default_rng(FLAGS.seed).permutation(len(full))[:FLAGS.steps * FLAGS.global_batch_size]
    splits = {"subset": full.select(np.sort(used)), "full": full}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    rows, start = [], time.time()
    for group in groups:
        log(f"{group}: {len(splits['subset'])} rows (equal rows), {len(full)} (equal tokens)")
        rows += measure_group(group, splits, tokenizer, model_dir)
        settings.update(load_average_at_end=[round(x, 2) for x in os.getloadavg()], seconds=round(time.time() - start))
        write_results(rows, settings)
    print("\n" + text_report(rows, check_targets(rows)))
    if plot:
        bar_chart(rows, os.path.join(FLAGS.output_dir, "throughput.png"))
    print(f"\nwrote {FLAGS.output_dir}/results.json, results.md{', throughput.png' if plot else ''} "
          f"({settings['seconds']} s)")


def write_results(rows: list[dict], settings: dict) -> None:
    from trainer import storage
    targets = check_targets(rows)
    storage.write_json(os.path.join(FLAGS.output_dir, "results.json"), {"settings": settings, "rows": rows,
                                                                         "targets": targets})
    storage.write_bytes(os.path.join(FLAGS.output_dir, "results.md"), markdown_report(rows, targets, settings).encode())


def main():
    run(_main, __doc__)


if __name__ == "__main__":
    main()
