"""trainer-prepare: a raw file -> a tokenized, split DatasetDict on disk, with manifest.json beside the splits.

Rows stream from the reader into an arrow file in chunks, are tokenized once with a batched
`map`, split after a seeded shuffle and saved with `save_to_disk`; nothing holds the whole
file in memory. All of it is built in a temporary directory next to the output and renamed
into place at the end, so a failure leaves nothing half-written.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import time

import datasets
import numpy as np
import pyarrow as pa

from trainer import hub, rundir, schema, storage
from trainer.config import PrepareConfig
from trainer.data import readers
from trainer.errors import UsageError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2          # 2: the manifest lists every file with its size and sha256
CHUNK_ROWS = 50_000


def label_names(keep_neutral: bool) -> list[str]:
    return ["negative", "neutral", "positive"] if keep_neutral else ["negative", "positive"]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes whenever the tokenization would: vocabulary, normalizer, special tokens."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def prepare(config: PrepareConfig) -> dict:
    """Build (or reuse) the prepared dataset at config.output_dir; return its manifest. Every input and the
    output path are checked before anything is written."""
    start = time.time()
    readers.check_source(config)
    storage.check_no_overlap(config.output_dir, "--output_dir", {"--input": config.input, "--model": config.model})
    storage.check_writable(config.output_dir, "--output_dir", "dir")
    model_dir = hub.resolve(config.model)
    tokenizer = hub.load_tokenizer(model_dir)
    hub.fit_max_length(hub.load_config(model_dir), config.max_length, config.model)
    settings = _settings(config, tokenizer)
    existing = storage.read_json(storage.join(config.output_dir, MANIFEST))
    if _valid(existing) and existing["settings"] == settings and _intact(config.output_dir, existing):
        existing["reused"] = True
        return existing
    _check_replaceable(config, existing)
    with rundir.OutputLock(config.output_dir):     # its holder may remove stale staging beside the output
        return _build_in_place(config, settings, tokenizer, start)


def _build_in_place(config: PrepareConfig, settings: dict, tokenizer, start: float) -> dict:
    work = storage.scratch_dir(config.output_dir)
    try:
        with storage.staged_dir(config.output_dir, last=MANIFEST) as staged:
            manifest = _build(config, settings, tokenizer, work, staged)
            manifest["seconds"] = round(time.time() - start, 1)
            storage.write_json(os.path.join(staged, MANIFEST), manifest)
        return manifest
    except OSError as e:        # a full disk, say: name the output, whichever file the writer was at
        raise storage.named(e, config.output_dir) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _settings(config: PrepareConfig, tokenizer) -> dict:
    """Everything the prepared data depends on: a rerun with equal settings reuses it."""
    return {
        "format_version": FORMAT_VERSION,
        "source_sha256": file_sha256(config.input),
        "format": config.format,
        "text_column": config.text_column,
        "label_column": config.label_column,
        "encoding": config.resolved_encoding,
        "splits": config.split_fractions(),
        "seed": config.seed,
        "keep_neutral": config.keep_neutral,
        "max_length": config.max_length,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def _valid(manifest) -> bool:
    return schema.problem(manifest, schema.MANIFEST) is None


def _check_replaceable(config: PrepareConfig, existing) -> None:
    """Only a prepared dataset (a valid manifest, and no file it does not list) or an empty directory is ever
    replaced, and only with --overwrite."""
    out = config.output_dir
    if not storage.exists(out) or (not storage.is_url(out) and os.path.isdir(out) and not os.listdir(out)):
        return
    if not _valid(existing):
        raise UsageError(f"--output_dir={out} exists and is not a prepared dataset (no valid {MANIFEST}): pass a "
                         "new or empty --output_dir")
    foreign = sorted(set(storage.relative_files(out)) - set(existing["files"]) - {MANIFEST}) \
        if not storage.is_url(out) else []
    if foreign:
        raise UsageError(f"--output_dir={out} holds files that are not part of its prepared dataset ({foreign[0]}"
                         f"{' and more' if len(foreign) > 1 else ''}): move them, or pass another --output_dir")
    if not config.overwrite:
        raise UsageError(f"{out} already exists (prepared with other inputs or settings): pass --overwrite to "
                         "replace it, or another --output_dir")


def _build(config: PrepareConfig, settings: dict, tokenizer, work: str, staged: str) -> dict:
    """Read, tokenize, split and save into `staged`; return the manifest (without its timing)."""
    stats = readers.ReadStats()
    names = label_names(config.keep_neutral)
    raw = _write_rows(config, stats, names, os.path.join(work, "rows.arrow"))
    if len(raw) == 0:
        reason = stats.dropped.most_common(1)[0][0] if stats.dropped else "no rows"
        raise UsageError(f"{config.input}: no usable rows ({stats.rows_read} read, most dropped as {reason}); "
                         "check --format, --text_column and --label_column")
    tokenized = _tokenize(raw, tokenizer, config, os.path.join(work, "tokenized.arrow"))
    labels = np.asarray(tokenized.data.column("label"))
    lengths = np.asarray(tokenized.data.column("length"))
    order = np.random.default_rng(config.seed).permutation(len(tokenized))
    split_rows = _split(order, config.split_fractions())
    datasets.DatasetDict({name: tokenized.select(rows) for name, rows in split_rows.items()}).save_to_disk(staged)
    return {
        "source": {"path": os.path.abspath(config.input), "sha256": settings["source_sha256"],
                   "bytes": os.path.getsize(config.input)},
        "settings": settings,
        "model": config.model,
        "tokenizer": {"name_or_path": config.model, "class": type(tokenizer).__name__,
                      "fingerprint": settings["tokenizer"], "vocab_size": len(tokenizer),
                      "model_input_names": list(tokenizer.model_input_names)},
        "max_length": config.max_length,
        "rows_read": stats.rows_read,
        "rows_kept": stats.rows_kept,
        "dropped": dict(sorted(stats.dropped.items())),
        "labels": names,
        "splits": {name: len(rows) for name, rows in split_rows.items()},
        "labels_per_split": {name: dict(zip(names, np.bincount(labels[rows], minlength=len(names)).tolist()))
                             for name, rows in split_rows.items()},
        "token_length": {
            "mean": round(float(lengths.mean()), 2),
            **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)},
            "max": int(lengths.max()),
            "rows_at_max_length": int((lengths >= config.max_length).sum()),
            "histogram": {str(n): int(c) for n, c in enumerate(np.bincount(lengths)) if c},
        },
        "files": _file_table(staged),
    }


def _file_table(directory: str) -> dict:
    """Size and sha256 of every file of a prepared dataset, checked whenever it is opened."""
    table = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != MANIFEST:
                table[relative] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    return dict(sorted(table.items()))


def _write_rows(config: PrepareConfig, stats: readers.ReadStats, names: list[str], path: str) -> datasets.Dataset:
    """Stream the reader's rows into an arrow file, CHUNK_ROWS at a time; memory-map it back."""
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    label_ids = {name: i for i, name in enumerate(names)}
    schema = features.arrow_schema
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        texts, labels = [], []
        for text, label in readers.read_rows(config, stats, keep_neutral=config.keep_neutral):
            texts.append(text)
            labels.append(label_ids[label])
            if len(texts) == CHUNK_ROWS:
                writer.write_batch(pa.record_batch([texts, pa.array(labels, pa.int64())], schema=schema))
                texts, labels = [], []
        if texts:
            writer.write_batch(pa.record_batch([texts, pa.array(labels, pa.int64())], schema=schema))
    return datasets.Dataset.from_file(path)


def _tokenize(raw: datasets.Dataset, tokenizer, config: PrepareConfig, cache_file: str) -> datasets.Dataset:
    """input_ids / attention_mask / token_type_ids (when the model takes them) and length, truncated."""
    columns = {"input_ids": datasets.Sequence(datasets.Value("int32")),
               "attention_mask": datasets.Sequence(datasets.Value("int8")),
               "token_type_ids": datasets.Sequence(datasets.Value("int8"))}
    features = datasets.Features({
        **raw.features,
        **{name: columns[name] for name in tokenizer.model_input_names if name in columns},
        "length": datasets.Value("int32"),
    })

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=config.max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return raw.map(tokenize, batched=True, batch_size=2000, num_proc=config.num_proc, features=features,
                   cache_file_name=cache_file, desc="tokenize")


def _split(order: np.ndarray, fractions: dict[str, float]) -> dict[str, np.ndarray]:
    """Cut a shuffled row order into named splits; the last split takes the rounding remainder."""
    sizes = [int(round(len(order) * f)) for f in fractions.values()]
    sizes[-1] = len(order) - sum(sizes[:-1])
    bounds = np.cumsum([0] + sizes)
    # each split keeps its random share of rows, stored in file order: save_to_disk then reads the
    # arrow file sequentially (30 s less at 1.6M rows); training shuffles its batch plan every epoch
    # (stream/plan_batches with shuffle=True), evaluation reads a split in this stored order
    return {name: np.sort(order[a:b]) for name, a, b in zip(fractions, bounds[:-1], bounds[1:])}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared dataset whose files match its manifest; `dir` is local (a bucket's data is cached)."""
    dir: str
    manifest: dict

    def load(self) -> datasets.DatasetDict:
        """The splits, memory-mapped."""
        return datasets.load_from_disk(self.dir)

    @property
    def fingerprint(self) -> str:
        """Changes whenever any of its files does (the manifest's table of sizes and sha256s)."""
        return hashlib.sha256(json.dumps(self.manifest["files"], sort_keys=True).encode()).hexdigest()[:16]


def open_prepared(data_dir: str) -> Prepared:
    """Check a prepared dataset (manifest, version, every file's size and sha256) and return it."""
    if not storage.exists(storage.join(data_dir, MANIFEST)):
        raise UsageError(f"{data_dir} is not a prepared dataset (no {MANIFEST}): make it with trainer-prepare "
                         "--output_dir=...")
    local = storage.local_copy(data_dir)
    storage.check_regular_files(local, data_dir, "run trainer-prepare again with --overwrite")
    manifest = storage.read_json(os.path.join(local, MANIFEST))
    where, fix = storage.join(data_dir, MANIFEST), "run trainer-prepare again with --overwrite"
    if not isinstance(manifest, dict):
        raise UsageError(f"{where} is damaged (not a JSON object): {fix}")
    schema.check(manifest, {"settings": {"format_version": schema.Int()}}, where, fix)
    version = manifest["settings"]["format_version"]
    if version != FORMAT_VERSION:
        raise UsageError(f"{data_dir} was prepared by an incompatible version (format {version}, this trainer "
                         f"reads {FORMAT_VERSION}): {fix}")
    schema.check(manifest, schema.MANIFEST, where, fix)
    problem = _damage(local, manifest)
    if problem and local != data_dir:          # a damaged cache copy: fetch it again
        shutil.rmtree(local, ignore_errors=True)
        local = storage.local_copy(data_dir)
        problem = _damage(local, manifest)
    if problem:
        raise UsageError(f"{data_dir} is damaged ({problem}): run trainer-prepare again with --overwrite")
    return Prepared(local, manifest)


def _damage(directory: str, manifest: dict) -> str | None:
    """What differs between the files on disk and the manifest's table, or None."""
    for name, expected in manifest.get("files", {}).items():
        path = os.path.join(directory, name)
        if os.path.isabs(name) or ".." in name.split("/"):
            return f"the manifest lists {name!r}, a path outside the dataset"
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != expected["bytes"]:
            return f"{name} has {os.path.getsize(path)} bytes, the manifest says {expected['bytes']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None if manifest.get("files") else "the manifest lists no files"


def _intact(data_dir: str, manifest: dict) -> bool:
    return storage.is_url(data_dir) or _damage(data_dir, manifest) is None
