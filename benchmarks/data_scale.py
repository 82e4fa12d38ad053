"""Data pipeline at full Sentiment140 scale: prepare + tokenize N rows, then stream one epoch of them.

Run from the project root (it must be on sys.path; `import trainer` comes from the editable install):

    .venv/bin/python -m benchmarks.data_scale [--rows=1600000] [--num_proc=2]

The shared 20,000-row sample is replicated to --rows rows under --work_dir, in Sentiment140's own
format. Each measured step runs in a fresh "spawn" child process while this process polls psutil
every 0.1 s for the RSS of the child and its children. Prints a table, writes --output (JSON).
"""
import json
import multiprocessing
import os
import platform
import resource
import shutil
import time

import psutil
from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS, inherited by the children)

flags.DEFINE_integer("rows", 1_600_000, "Rows of the replicated data set (the full Sentiment140 has 1.6M).",
                     lower_bound=1)
flags.DEFINE_string("sample", SAMPLE_CSV, "Sentiment140 rows to replicate.")
flags.DEFINE_string("model", MINILM, "Model directory: tokenizer and config.")
flags.DEFINE_string("work_dir", "/tmp/data_scale", "Scratch directory for the replicated CSV and prepared data.")
flags.DEFINE_string("output", "/tmp/data_scale.json", "Where to write every measured number as JSON.")
flags.DEFINE_integer("num_proc", None, "PrepareConfig.num_proc for tokenization (default: prepare's own).")
flags.DEFINE_bool("keep_work", False, "Keep --work_dir afterwards (default: delete it).")
FLAGS = flags.FLAGS

MAX_LENGTH = 64
GLOBAL_BATCH_SIZE = 256
POLL_SECONDS = 0.1
SAMPLE_EVERY_BATCHES = 200
MB = 1 << 20


def replicate(sample: str, rows: int, path: str) -> None:
    """Write `rows` rows: whole copies of the sample's bytes, then its first lines for any remainder."""
    with open(sample, "rb") as f:
        data = f.read()
    if not data.endswith(b"\n"):   # the shared sample's last row has no newline: copies would merge rows
        data += b"\n"
    lines = data.splitlines(keepends=True)
    copies, rest = divmod(rows, len(lines))
    with open(path, "wb") as out:
        for _ in range(copies):
            out.write(data)
        out.writelines(lines[:rest])


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """(RSS of the process and all its descendants, RSS of the process alone), in bytes."""
    own = process.memory_info().rss
    total = own
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:       # a worker that exited between listing and reading
            pass
    return total, own


def run_measured(target, *args) -> dict:
    """Run target(*args, results) in a spawn child; its result dict plus wall time and peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start = time.perf_counter()
    child = ctx.Process(target=target, args=(*args, results))
    child.start()
    process, peak_tree, peak_main = psutil.Process(child.pid), 0, 0
    while child.is_alive():
        try:
            total, own = tree_rss(process)
            peak_tree, peak_main = max(peak_tree, total), max(peak_main, own)
        except psutil.Error:
            pass
        time.sleep(POLL_SECONDS)
    wall = time.perf_counter() - start
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{target.__name__} child failed with exit code {child.exitcode}")
    return {**results.get(timeout=60), "wall_seconds": round(wall, 1),
            "peak_rss_tree_mb": round(peak_tree / MB), "peak_rss_main_mb": round(peak_main / MB)}


def prepare_child(source_path: str, output_dir: str, model: str, num_proc: int | None, results) -> None:
    """Child: trainer.data.prepare.prepare on one file."""
    import datasets
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    datasets.disable_progress_bars()
    manifest = prepare.prepare(PrepareConfig(input=source_path, output_dir=output_dir, model=model,
                                             max_length=MAX_LENGTH, num_proc=num_proc, overwrite=True))
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_seconds = sum(u.ru_utime + u.ru_stime for u in used)   # all threads and worker processes
    results.put({**{key: manifest[key] for key in ("rows_read", "rows_kept", "splits", "seconds")},
                 "cpu_seconds": round(cpu_seconds, 1)})


def stream_child(prepared_dir: str, model_dir: str, results) -> None:
    """Child: one epoch of the train split through trainer.data.stream, RSS read after every batch."""
    import datasets
    import transformers
    from trainer import hub
    from trainer.data import stream as stream_lib
    me = psutil.Process()
    rss_after_imports = me.memory_info().rss
    split = datasets.load_from_disk(prepared_dir)["train"]
    model = transformers.TFAutoModelForSequenceClassification.from_config(
        transformers.AutoConfig.from_pretrained(model_dir, num_labels=2))
    built = stream_lib.stream(split, model, hub.load_tokenizer(model_dir), global_batch_size=GLOBAL_BATCH_SIZE,
                              padding="bucket", max_length=MAX_LENGTH, shuffle=True, seed=0, drop_remainder=True)
    rss_start = rss_max = me.memory_info().rss
    anon_max, samples, rows, start = 0, [], 0, time.perf_counter()
    for batch, (_, labels) in enumerate(built.dataset, start=1):
        rows += int(labels.shape[0])
        memory = me.memory_info()   # on Linux `shared` is file-backed RSS: here mostly the mmapped arrow split
        rss_max, anon_max = max(rss_max, memory.rss), max(anon_max, memory.rss - memory.shared)
        if batch % SAMPLE_EVERY_BATCHES == 0:
            samples.append([batch, round(memory.rss / MB)])
    seconds = time.perf_counter() - start
    results.put({"train_rows": len(split), "batches": built.plan.steps, "rows_streamed": rows,
                 "stream_seconds": round(seconds, 1), "rows_per_second": round(rows / seconds),
                 "rss_after_imports_mb": round(rss_after_imports / MB), "rss_start_mb": round(rss_start / MB),
                 "streaming_rss_mb": round(rss_max / MB), "streaming_anon_rss_mb": round(anon_max / MB),
                 "rss_every_200_batches_mb": samples})


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "memory_total_gb": round(psutil.virtual_memory().total / (1 << 30), 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def print_table(report: dict) -> None:
    sizes = list(report["prepare"])
    print(f"\nmachine: {report['machine']['cpu_count']} CPUs, {report['machine']['memory_total_gb']} GB, "
          f"load {report['machine']['load_average_at_start']}; num_proc={report['num_proc']}")
    print(f"\n{'prepare':<10}{'rows kept':>11}{'wall s':>9}{'rows/s':>9}{'in-prep s':>11}{'CPU s':>8}"
          f"{'peak RSS tree MB':>18}{'main MB':>9}")
    for size in sizes:
        p = report["prepare"][size]
        print(f"{int(size):<10,}{p['rows_kept']:>11,}{p['wall_seconds']:>9}{p['rows_per_second']:>9,}"
              f"{p['seconds']:>11}{p['cpu_seconds']:>8}{p['peak_rss_tree_mb']:>18,}{p['peak_rss_main_mb']:>9,}")
    print(f"\n{'stream':<10}{'train rows':>11}{'batches':>9}{'s':>8}{'rows/s':>9}{'RSS start MB':>14}"
          f"{'streaming RSS MB':>18}{'of it anon MB':>15}{'peak tree MB':>14}")
    for size in sizes:
        s = report["stream"][size]
        print(f"{int(size):<10,}{s['train_rows']:>11,}{s['batches']:>9,}{s['stream_seconds']:>8}"
              f"{s['rows_per_second']:>9,}{s['rss_start_mb']:>14,}{s['streaming_rss_mb']:>18,}"
              f"{s['streaming_anon_rss_mb']:>15,}{s['peak_rss_tree_mb']:>14,}")
    print(f"\nstreaming RSS {report['rows']:,} / 20,000 rows: {report['stream_rss_ratio']}x (anonymous memory only: "
          f"{report['stream_anon_rss_ratio']}x); the README states the targets")


def _main(config, arguments):
    del config, arguments
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    big_csv = os.path.join(FLAGS.work_dir, f"sentiment140_{FLAGS.rows}.csv")
    replicate(FLAGS.sample, FLAGS.rows, big_csv)
    inputs = {"20000": FLAGS.sample, str(FLAGS.rows): big_csv}
    report = {"machine": machine(), "rows": FLAGS.rows, "max_length": MAX_LENGTH, "num_proc": FLAGS.num_proc,
              "global_batch_size": GLOBAL_BATCH_SIZE, "model": FLAGS.model, "prepare": {}, "stream": {}}
    for size, path in inputs.items():
        prepared = os.path.join(FLAGS.work_dir, f"prepared_{size}")
        shutil.rmtree(prepared, ignore_errors=True)   # prepare() would reuse a matching earlier run
        print(f"preparing {int(size):,} rows ...", flush=True)
        result = run_measured(prepare_child, path, prepared, FLAGS.model, FLAGS.num_proc)
        result["rows_per_second"] = round(result["rows_read"] / result["wall_seconds"])
        report["prepare"][size] = result
    for size in inputs:
        print(f"streaming {int(size):,} rows ...", flush=True)
        report["stream"][size] = run_measured(stream_child, os.path.join(FLAGS.work_dir, f"prepared_{size}"),
                                              FLAGS.model)
    small_stream, big_stream = report["stream"]["20000"], report["stream"][str(FLAGS.rows)]
    report["stream_rss_ratio"] = round(big_stream["streaming_rss_mb"] / small_stream["streaming_rss_mb"], 2)
    report["stream_anon_rss_ratio"] = round(big_stream["streaming_anon_rss_mb"] / small_stream["streaming_anon_rss_mb"], 2)
    print_table(report)
    with open(FLAGS.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {FLAGS.output}")
    if not FLAGS.keep_work:
        shutil.rmtree(FLAGS.work_dir, ignore_errors=True)


if __name__ == "__main__":
    run(_main, __doc__)
