"""Served examples/s: trainer-export's SavedModel (tf.saved_model.load, called on strings) against
trainer-predict's path (trainer.predict.predict: HF tokenizer + TF classifier), per batch size, in
one run; prints ratios and the load average, asserts nothing about time.

    .venv/bin/python -m benchmarks.serving_throughput [--batch_sizes=1,256 --rounds=8
        --examples_per_round=256 --model=DIR --saved_model=DIR --output_dir=DIR]

--model is a fine-tuned export, or a pretrained encoder (default: all-MiniLM-L6-v2) that first gets
a classifier head (seeded; saved to --work_dir/export). Its SavedModel is made in --work_dir
(trainer-export's code, max_length 128) unless --saved_model names one. Tweets come from the shared
sample, shuffled. Per batch size, each round gives both contenders the same --examples_per_round
tweets in batches of that size, one contender after the other, the order alternating round by
round (the machine's load moves timings 2x); a first untimed round traces both. Ratio: the served
examples/s over trainer-predict's, per round (median) and over all rounds.
"""
import os
import statistics
import time

import numpy as np
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, before TensorFlow is imported)

flags.DEFINE_string("model", MINILM, "A fine-tuned export, or a pretrained encoder to give a head.")
flags.DEFINE_string("saved_model", None, "The model's SavedModel (default: made in --work_dir).")
flags.DEFINE_string("source", SAMPLE_CSV, "Sentiment140 CSV whose tweets are classified.")
flags.DEFINE_string("work_dir", "/tmp/serving_throughput/work", "Where the export and SavedModel "
                    "go.")
flags.DEFINE_string("output_dir", "/tmp/serving_throughput/report", "Where results.json/.md go.")
flags.DEFINE_list("batch_sizes", ["1", "256"], "Batch sizes; each is one interleaved group.")
flags.DEFINE_integer("rounds", 8, "Timed rounds per batch size.", lower_bound=1)
flags.DEFINE_integer("examples_per_round", 256, "Tweets per contender per round (at least one "
                     "batch).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the tweets' order and of a new classifier head.")
FLAGS = flags.FLAGS
flags.register_validator("batch_sizes", lambda v: all(x.isdigit() and int(x) >= 1 for x in v),
                         "takes positive integers, e.g. 1,256")

MAX_LENGTH = 128
STARTED = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f} s] {message}", flush=True)


def classifier_export(model_dir: str, work_dir: str) -> str:
    """model_dir if it is a fine-tuned export, else a copy with a seeded classifier head."""
    from trainer import hub, serving_checks
    from trainer.errors import UsageError
    try:
        serving_checks.check_classifier(model_dir)
        return model_dir
    except (UsageError, OSError):
        pass
    export = os.path.join(work_dir, "export")
    if not os.path.exists(os.path.join(export, "tf_model.h5")):
        import tf_keras

        from trainer import model as model_lib
        tf_keras.utils.set_random_seed(FLAGS.seed)
        classifier = model_lib.build_classifier(model_dir, ["negative", "positive"])
        classifier.save_pretrained(export)
        hub.load_tokenizer(model_dir).save_pretrained(export)
        log(f"gave {model_dir} a seeded classifier head: {export}")
    return export


def saved_model(export: str, work_dir: str) -> str:
    """The SavedModel of export, as trainer-export makes it (made once per work_dir)."""
    from trainer import serving, serving_checks
    from trainer.config import ExportConfig
    path = FLAGS.saved_model or os.path.join(work_dir, "saved_model")
    if not os.path.exists(path):
        inputs = serving_checks.for_export(ExportConfig(model_dir=export, output_dir=path,
                                                        max_length=MAX_LENGTH))
        started = time.time()
        serving.export(inputs.model.dir, inputs.spec, inputs.max_length,
                       inputs.model.tokenizer.model_input_names, path)
        log(f"exported {path} in {time.time() - started:.0f} s")
    return path


def contenders(export: str, path: str) -> dict:
    """name -> a function classifying a list of tweets in batches of a size, returning the
    probability of the top label of each."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SavedModel's ops)

    from trainer import hub, predict
    from trainer import model as model_lib
    serve = tf.saved_model.load(path).signatures["serving_default"]
    classifier, tokenizer = model_lib.load_export(export), hub.load_tokenizer(export)

    def served(texts, batch_size):
        return np.concatenate([serve(text=tf.constant(texts[i:i + batch_size]))["probabilities"]
                               .numpy().max(axis=1) for i in range(0, len(texts), batch_size)])

    def predicted(texts, batch_size):
        return np.array([p for _, p, _ in predict.predict(classifier, tokenizer, texts,
                                                          batch_size, MAX_LENGTH)])
    return {"saved_model": served, "trainer-predict": predicted}


def measure(batch_size: int, functions: dict, tweets: list[str]) -> dict:
    """Interleaved rounds of both contenders on the same tweets; the first round untimed."""
    per_round = max(FLAGS.examples_per_round // batch_size, 1) * batch_size
    seconds = {name: [] for name in functions}
    gap = 0.0
    for round_ in range(FLAGS.rounds + 1):
        start = (round_ * per_round) % max(len(tweets) - per_round, 1)
        texts = tweets[start:start + per_round]
        order = list(functions) if round_ % 2 == 0 else list(functions)[::-1]
        results = {}
        for name in order:
            started = time.perf_counter()
            results[name] = functions[name](texts, batch_size)
            if round_:
                seconds[name].append(time.perf_counter() - started)
        gap = max(gap, float(np.abs(results["saved_model"] - results["trainer-predict"]).max()))
        log(f"batch {batch_size}: round {round_}/{FLAGS.rounds} ({' then '.join(order)})"
            + ("" if round_ else ", untimed"))
    rates = {name: [per_round / s for s in times] for name, times in seconds.items()}
    ratios = [a / b for a, b in zip(rates["saved_model"], rates["trainer-predict"])]
    total = {name: per_round * len(times) / sum(times) for name, times in seconds.items()}
    return dict(batch_size=batch_size, examples_per_round=per_round, rounds=FLAGS.rounds,
                examples_per_sec={name: round(r, 2) for name, r in total.items()},
                ms_per_batch_median={name: round(1000 * statistics.median(t) * batch_size
                                                 / per_round, 2) for name, t in seconds.items()},
                ratio=round(total["saved_model"] / total["trainer-predict"], 3),
                ratio_median_of_rounds=round(statistics.median(ratios), 3),
                ratio_range=[round(min(ratios), 3), round(max(ratios), 3)],
                max_probability_gap=gap, load_average=[round(x, 2) for x in os.getloadavg()])


def report(rows: list[dict], settings: dict) -> str:
    lines = [f"machine: {settings['machine']}; load average at start {settings['load_average']}",
             "", "| batch | saved_model ex/s | trainer-predict ex/s | ratio (all rounds) | ratio "
             "(median of rounds, range) | ms per batch (saved / predict) | load at end |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rate, ms = r["examples_per_sec"], r["ms_per_batch_median"]
        lines.append(f"| {r['batch_size']} | {rate['saved_model']} | {rate['trainer-predict']} | "
                     f"**{r['ratio']}x** | {r['ratio_median_of_rounds']}x ({r['ratio_range'][0]}-"
                     f"{r['ratio_range'][1]}) | {ms['saved_model']} / {ms['trainer-predict']} | "
                     f"{r['load_average']} |")
    return "\n".join(lines) + "\n"


def _main(config, arguments):
    del config, arguments
    from trainer import flops, runtime, storage
    from trainer.config import SourceConfig
    from trainer.data import readers
    from trainer.errors import UsageError
    if os.path.isfile(FLAGS.output_dir):
        raise UsageError(f"--output_dir={FLAGS.output_dir} is a file: pass a directory")
    tweets = [text for text, _ in readers.read_rows(SourceConfig(input=FLAGS.source),
                                                    readers.ReadStats())]
    tweets = [tweets[i] for i in np.random.default_rng(FLAGS.seed).permutation(len(tweets))]
    runtime.import_tensorflow()
    import tensorflow as tf
    import tensorflow_text
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    export = classifier_export(FLAGS.model, FLAGS.work_dir)
    functions = contenders(export, saved_model(export, FLAGS.work_dir))
    settings = dict(model=FLAGS.model, export=export, max_length=MAX_LENGTH, seed=FLAGS.seed,
                    machine=flops.machine(), tensorflow=tf.__version__,
                    tensorflow_text=tensorflow_text.__version__,
                    load_average=[round(x, 2) for x in os.getloadavg()])
    rows = [measure(int(size), functions, tweets) for size in FLAGS.batch_sizes]
    settings["seconds"] = round(time.time() - STARTED)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    storage.write_json(os.path.join(FLAGS.output_dir, "results.json"),
                       {"settings": settings, "rows": rows})
    text = report(rows, settings)
    storage.write_bytes(os.path.join(FLAGS.output_dir, "results.md"), text.encode())
    print("\n" + text)
    print(f"wrote {FLAGS.output_dir}/results.json, results.md ({settings['seconds']} s)")


def main():
    run(_main, __doc__)


if __name__ == "__main__":
    main()
