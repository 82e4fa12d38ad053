"""A prepared split -> tf.data batches of (features, labels), in one of four padding modes.

  max_length  every batch padded to max_length (naive full padding)
  batch       each batch padded to its longest row (optionally a multiple of pad_to_multiple_of)
  bucket      rows grouped by length; each batch padded to its bucket's boundary (<= 8 lengths)
  pack        several examples laid one after another in each row of max_length
              (trainer/data/packing.py): one static shape; the model reads them with trainer/packed.py

Batches hold a fixed number of rows, or with bucket padding and `batch_tokens` a number of
rows that depends on the bucket (token-sized batches: one static shape per bucket). Rows longer
than max_length are truncated as they are streamed, so data prepared once at 128 tokens serves
every max_length up to 128.

A numpy BatchPlan decides which rows form each global batch (in stored order, or shuffled for a
(seed, epoch); in bucket mode grouped by length) from
the stored `length` column alone, so it is cheap, deterministic for a (seed, epoch), splits
cleanly across workers (each shard takes its slice of every global batch, so every worker runs
the same steps) and states each batch's real and padded token counts up front. The batches then
go through `model.prepare_tf_dataset` with a padding collator (transformers'
DataCollatorWithPadding for `batch`; a numpy one, same output, for the fixed lengths of the others);
packed steps are laid out by numpy from the memory-mapped split (`packed_batches` says why not
through prepare_tf_dataset).
"""
import dataclasses
import inspect

import datasets
import numpy as np
import pyarrow.compute as pc
import tensorflow as tf
from transformers import DataCollatorWithPadding

from trainer.config import PADDINGS
from trainer.data import packing
from trainer.errors import UsageError

MAX_BUCKETS = 8
ROW_MULTIPLE = 8


def round_up(n: np.ndarray | int, multiple: int | None):
    return n if not multiple else -(-np.asarray(n) // multiple) * multiple


def bucket_boundaries(lengths: np.ndarray, max_buckets: int = MAX_BUCKETS,
                      pad_to_multiple_of: int | None = None) -> tuple[int, ...]:
    """The <= max_buckets padded lengths that waste the fewest pad tokens over `lengths`.

    Exact dynamic programme over the length histogram: cost(bucket (a, b]) = rows in it x b.
    The last boundary is the longest row, so nothing is truncated.
    """
    candidates, counts = np.unique(round_up(lengths, pad_to_multiple_of), return_counts=True)
    rows_upto = np.cumsum(counts)           # rows with padded length <= candidates[i]
    k = min(max_buckets, len(candidates))
    n = len(candidates)
    # cost[j][i]: least padded tokens for rows <= candidates[i] using j+1 buckets, last boundary candidates[i]
    cost = np.full((k, n), np.inf)
    choice = np.zeros((k, n), dtype=int)
    cost[0] = rows_upto * candidates
    for j in range(1, k):
        for i in range(j, n):
            prev = cost[j - 1, :i] + (rows_upto[i] - rows_upto[:i]) * candidates[i]
            choice[j, i] = int(np.argmin(prev))
            cost[j, i] = prev[choice[j, i]]
    j = int(np.argmin(cost[:, n - 1]))
    boundaries, i = [], n - 1
    while j >= 0:
        boundaries.append(int(candidates[i]))
        i, j = choice[j, i], j - 1
    return tuple(sorted(boundaries))


def rows_per_replica(boundaries, batch_tokens: int) -> np.ndarray:
    """Token-sized batches: a batch of bucket length L holds batch_tokens // L rows per replica, rounded down
    to a multiple of 8 (tensor cores, TPU tiles), at least 8."""
    rows = batch_tokens // np.asarray(boundaries)
    return np.maximum(ROW_MULTIPLE, rows // ROW_MULTIPLE * ROW_MULTIPLE)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which examples (tweets) form each global step, in order, and how each shard's slice is laid
    out.

    A step's examples come shard slice after shard slice. A slice holds `batch_rows` rows of its
    padded length: one example per row, or with `pack` padding packed rows of max_length holding
    `segments` examples each. Global steps may differ in size; each splits evenly over the shards.
    """
    rows: np.ndarray              # example indices, step after step, shard slice after shard slice
    examples: np.ndarray          # [steps]: examples in each global step
    pad_lengths: np.ndarray       # [steps, num_shards]: the padded length of each shard's slice
    real_tokens: np.ndarray       # [steps]: non-pad tokens of the whole global step
    num_shards: int
    padding: str
    max_length: int               # longer rows are truncated as they are streamed
    boundaries: tuple[int, ...] | None = None   # bucket mode: the padded lengths allowed
    pad_to_multiple_of: int | None = None
    truncated_rows: int = 0       # rows of the split longer than max_length
    segments: np.ndarray | None = None  # pack: [steps x rows per step]: examples in each packed row
    max_segments: int | None = None     # pack: the most examples a packed row holds

    @property
    def steps(self) -> int:
        return len(self.examples)

    @property
    def batch_rows(self) -> np.ndarray:
        """[steps]: rows of each shard's slice (the batch dimension a replica group sees)."""
        if self.segments is None:
            return self.examples // self.num_shards
        return np.full(self.steps, len(self.segments) // max(1, self.steps * self.num_shards))

    def _slice_examples(self) -> np.ndarray:
        """[steps, num_shards]: examples in each shard's slice of each step."""
        if self.segments is None:
            return np.repeat(self.batch_rows[:, None], self.num_shards, axis=1)
        return self._segments_by_slice().sum(axis=2)

    def shard_example_counts(self, shard_index: int) -> np.ndarray:
        """[steps]: examples in shard `shard_index`'s slice of each step."""
        return self._slice_examples()[:, shard_index]

    def shard_segments(self, shard_index: int) -> np.ndarray:
        """pack: [steps, batch rows]: examples in each packed row of this shard's slices."""
        return self._segments_by_slice()[:, shard_index]

    def _segments_by_slice(self) -> np.ndarray:
        """pack: [steps, num_shards, batch rows]."""
        return self.segments.reshape(self.steps, self.num_shards, -1 if self.steps else 0)

    @property
    def padded_tokens(self) -> np.ndarray:
        """[steps]: tokens the device computes, pad included, over every shard."""
        return (self.pad_lengths * self.batch_rows[:, None]).sum(axis=1)

    @property
    def padding_efficiency(self) -> float:
        return float(self.real_tokens.sum() / max(1, self.padded_tokens.sum()))

    def shapes(self) -> set[tuple[int, int]]:
        """Distinct (rows, length) batch shapes a shard sees: each costs an XLA/TPU compilation."""
        return {(int(rows), int(length)) for rows, lengths in zip(self.batch_rows, self.pad_lengths)
                for length in lengths}

    def shard_rows(self, shard_index: int) -> np.ndarray:
        """The example indices of this shard's slice of every step, in order."""
        if self.num_shards == 1:
            return self.rows
        counts = self._slice_examples()
        per = counts[:, shard_index]
        starts = np.cumsum(counts.ravel()).reshape(counts.shape)[:, shard_index] - per
        within = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
        return self.rows[np.repeat(starts, per) + within]


def plan_batches(lengths: np.ndarray, *, padding: str, max_length: int, global_batch_size: int | None = None,
                 batch_tokens: int | None = None, replicas: int = 1, pad_to_multiple_of: int | None = None,
                 boundaries: tuple[int, ...] | None = None, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 drop_remainder: bool = False, num_shards: int = 1, start_step: int = 0,
                 max_segments: int | None = None) -> BatchPlan:
    """Order rows into global batches; see the module docstring. Batches hold global_batch_size rows, or with
    batch_tokens (bucket padding) rows_per_replica(boundary) x replicas. With pack padding a row is
    a packed row of max_length holding at most max_segments (default max_length // 8) examples,
    and batch_tokens means packing.rows_per_replica(max_length, batch_tokens) x replicas packed
    rows. The partial last batch is kept unless drop_remainder or num_shards > 1 (every worker must
    run the same steps). `start_step` skips batches (resume)."""
    if padding not in PADDINGS:
        raise UsageError(f"unknown padding {padding!r}: use one of {', '.join(PADDINGS)}")
    by_tokens = padding in ("bucket", "pack")
    if (global_batch_size is None) == (batch_tokens is None) or (batch_tokens and not by_tokens):
        raise UsageError("size batches by rows (global_batch_size) or, with bucket or pack "
                         "padding, by batch_tokens")
    full = np.asarray(lengths)
    lengths = np.minimum(full, max_length)
    drop_remainder = drop_remainder or num_shards > 1   # every worker must run the same steps
    rng = np.random.default_rng([seed, epoch])
    order = (rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))).astype(np.int32)
    if padding == "pack":
        size = global_batch_size or packing.rows_per_replica(max_length, batch_tokens) * replicas
        if size % num_shards:
            raise UsageError(f"a global batch of {size} packed rows must split evenly over the "
                             f"{num_shards} shards")
        return _plan_packed(lengths, order, rng if shuffle else None, size, drop_remainder,
                            start_step, max_segments or packing.default_max_segments(max_length),
                            num_shards=num_shards, max_length=max_length,
                            truncated_rows=int((full > max_length).sum()))
    if padding == "bucket":
        boundaries = tuple(int(b) for b in (boundaries or bucket_boundaries(lengths, pad_to_multiple_of=pad_to_multiple_of)))
        if max(boundaries) < lengths.max(initial=0):
            raise UsageError(f"bucket boundaries {boundaries} do not cover rows of {lengths.max()} tokens: "
                             "add a boundary >= the longest row")
        sizes = (rows_per_replica(boundaries, batch_tokens) * replicas if batch_tokens
                 else np.full(len(boundaries), global_batch_size))
        batches, partial = _group_by_bucket(order, lengths, np.asarray(boundaries), sizes, rng, shuffle)
    else:
        cut = len(order) - len(order) % global_batch_size
        batches, partial = list(order[:cut].reshape(-1, global_batch_size)), order[cut:]
    if np.any(np.asarray([len(b) for b in batches[:1]] + [global_batch_size or 0]) % num_shards):
        raise UsageError(f"a global batch must split evenly over the {num_shards} shards")
    if len(partial) and not drop_remainder:
        batches.append(partial)                                  # the only partial batch comes last
    batches = batches[start_step:]
    examples = np.asarray([len(b) for b in batches], dtype=np.int64)
    rows = np.concatenate(batches).astype(np.int32) if batches else np.zeros(0, np.int32)
    return BatchPlan(rows=rows, examples=examples, num_shards=num_shards, padding=padding, max_length=max_length,
                     boundaries=boundaries if padding == "bucket" else None, pad_to_multiple_of=pad_to_multiple_of,
                     truncated_rows=int((full > max_length).sum()),
                     **_pad_lengths(lengths[rows], examples, num_shards, padding, max_length, pad_to_multiple_of,
                                    boundaries))


def _plan_packed(lengths, order, rng, size: int, drop_remainder: bool, start_step: int,
                 max_segments: int, **fields) -> BatchPlan:
    """Steps of `size` packed rows of the examples in `order`, the packed rows shuffled by `rng` (if
    any). A partial last step, when kept, is filled up with empty rows: one batch shape."""
    if max_segments < 1:
        raise UsageError(f"max_segments={max_segments}: a packed row holds at least one example")
    tweets, segments = packing.pack(lengths[order], fields["max_length"], max_segments, rng)
    steps = len(segments) // size if drop_remainder else -(-len(segments) // size)
    segments = np.concatenate([segments, np.zeros(steps * size, np.int64)])[:steps * size]
    examples = segments.reshape(steps, size).sum(axis=1)
    skipped = int(examples[:start_step].sum())
    tweets = order[tweets[skipped:examples.sum()]]
    examples, segments = examples[start_step:], segments[start_step * size:]
    tokens = np.concatenate([[0], np.cumsum(lengths[tweets], dtype=np.int64)])
    real_tokens = np.diff(tokens[np.concatenate([[0], np.cumsum(examples)])])
    pad_lengths = np.full((len(examples), fields["num_shards"]), fields["max_length"])
    return BatchPlan(rows=tweets.astype(np.int32), examples=examples, pad_lengths=pad_lengths,
                     real_tokens=real_tokens, padding="pack", segments=segments,
                     max_segments=max_segments, **fields)


def _pad_lengths(lengths, examples, num_shards, padding, max_length, pad_to_multiple_of, boundaries) -> dict:
    """Each shard slice's padded length, and each global batch's real tokens, from the rows' lengths in order."""
    if len(examples) == 0:
        return {"pad_lengths": np.zeros((0, num_shards), np.int64), "real_tokens": np.zeros(0, np.int64)}
    per = np.repeat(examples // num_shards, num_shards)
    longest = np.maximum.reduceat(lengths, np.cumsum(per) - per).reshape(-1, num_shards)
    if padding == "max_length":
        pad = np.full_like(longest, max_length)
    elif padding == "batch":
        pad = round_up(longest, pad_to_multiple_of)
    else:   # every shard pads to its global batch's bucket: one (rows, length) shape per bucket
        pad = np.asarray(boundaries)[np.searchsorted(boundaries, longest.max(axis=1, keepdims=True))]
        pad = np.broadcast_to(pad, longest.shape)
    real = np.add.reduceat(lengths.astype(np.int64), np.cumsum(examples) - examples)
    return {"pad_lengths": pad, "real_tokens": real}


def _group_by_bucket(order, lengths, boundaries, sizes, rng, shuffle) -> tuple[list, np.ndarray]:
    """Full batches of one bucket each (sizes[b] rows for bucket b), then mixed batches of the buckets'
    leftovers, longest first, each sized by its longest row's bucket; the batches shuffled if `shuffle`.
    Returns (batches, the rows left over: fewer than a batch)."""
    bucket = np.searchsorted(boundaries, lengths[order])
    by_bucket = order[np.argsort(bucket, kind="stable")]          # random order kept within a bucket
    counts = np.bincount(bucket, minlength=len(boundaries))
    batches, leftovers, start = [], [], 0
    for count, size in zip(counts, sizes):
        rows = by_bucket[start:start + count]
        cut = count - count % size
        batches += list(rows[:cut].reshape(-1, size))
        leftovers.append(rows[cut:])
        start += count
    leftovers = np.concatenate(leftovers)                         # ascending buckets: little padding
    top = np.searchsorted(boundaries, lengths[leftovers])
    end = len(leftovers)
    while end and end >= sizes[top[end - 1]]:
        size = sizes[top[end - 1]]
        batches.append(leftovers[end - size:end])
        end -= size
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches, leftovers[:end]


def truncate(ids, length: int):
    """A row (list or array) cut to `length` tokens the way the tokenizer truncates: the first length-1, then
    the last (BERT's [SEP])."""
    return ids if len(ids) <= length else np.concatenate([ids[:length - 1], ids[-1:]])


class PadTo:
    """Collator: truncate rows to max_length, pad each input column with numpy to `length`; labels -> "labels".

    About 30x faster than tokenizer.pad (0.06 vs 1.8 ms for 32 tweets), which matters when the
    input pipeline shares two cores with the training step.
    """

    def __init__(self, pad_token_id: int, max_length: int, length: int):
        self.pad_token_id, self.max_length, self.length = pad_token_id, max_length, length

    def __call__(self, features):
        length, batch = self.length, {}
        for key in features[0]:
            if key in ("label", "labels"):
                batch["labels"] = np.array([f[key] for f in features], dtype=np.int32)
                continue
            padded = np.full((len(features), length), self.pad_token_id if key == "input_ids" else 0, np.int32)
            for i, f in enumerate(features):
                row = truncate(f[key], self.max_length)
                padded[i, :len(row)] = row
            batch[key] = padded
        return batch


class TruncateThen:
    """Collator: truncate rows to max_length, then hand them to `collate` (transformers' padding collator)."""

    def __init__(self, max_length: int, collate):
        self.max_length, self.collate = max_length, collate

    def __call__(self, features):
        return self.collate([{k: v if k in ("label", "labels") else truncate(v, self.max_length)
                              for k, v in f.items()} for f in features])


@dataclasses.dataclass(frozen=True)
class Stream:
    dataset: tf.data.Dataset      # (features, labels) batches of this shard, int32
    plan: BatchPlan


def lengths_of(split: datasets.Dataset) -> np.ndarray:
    """The `length` column (indices mapping applied). Through arrow: the numpy format converts row by
    row, 1.4 s for 16k rows against 1.3 ms here."""
    return split.with_format("arrow")["length"].to_numpy()


def _collator(plan: BatchPlan, tokenizer, length: int):
    if plan.padding == "batch":   # the library's own per-batch padding, as documented by transformers
        return TruncateThen(plan.max_length, DataCollatorWithPadding(
            tokenizer, pad_to_multiple_of=plan.pad_to_multiple_of, return_tensors="np"))
    return PadTo(tokenizer.pad_token_id, plan.max_length, length)


def batches(split: datasets.Dataset, plan: BatchPlan, model, tokenizer, shard_index: int = 0) -> tf.data.Dataset:
    """This shard's batches of `plan`, through `model.prepare_tf_dataset` (which picks the input columns): one
    pipeline per batch shape (per batch size with `batch` padding, which pads each batch itself), merged
    back into the plan's order. Packed steps: `packed_batches`."""
    if plan.padding == "pack":
        dataset = packed_batches(split, plan, tokenizer.pad_token_id, takes_token_types(model),
                                 shard_index)
    else:
        dataset = _padded_batches(split, plan, model, tokenizer, shard_index)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    options.autotune.enabled = False   # deleting an autotuned iterator can stall for a minute (measured)
    return dataset.with_options(options).prefetch(2)


def _padded_batches(split, plan: BatchPlan, model, tokenizer, shard_index: int) -> tf.data.Dataset:
    rows, sizes = plan.shard_rows(shard_index), plan.batch_rows
    lengths = plan.pad_lengths[:, shard_index] if plan.padding != "batch" else np.zeros_like(sizes)
    shapes, step_shape = np.unique(np.stack([sizes, lengths], axis=1), axis=0, return_inverse=True)
    row_shape = np.repeat(step_shape.reshape(-1), sizes)
    pipelines = [model.prepare_tf_dataset(split.select(rows[row_shape == i]), batch_size=int(size), shuffle=False,
                                          collate_fn=_collator(plan, tokenizer, int(length)), drop_remainder=True)
                 for i, (size, length) in enumerate(shapes)]
    dataset = pipelines[0] if len(pipelines) == 1 else tf.data.Dataset.choose_from_datasets(
        pipelines, tf.data.Dataset.from_tensor_slices(step_shape.reshape(-1).astype(np.int64)))
    return dataset.map(_to_int32)


def takes_token_types(model) -> bool:
    """Whether the model's call takes token_type_ids (the test prepare_tf_dataset makes)."""
    return "token_type_ids" in inspect.signature(model.call).parameters


def packed_batches(split: datasets.Dataset, plan: BatchPlan, pad_token_id: int,
                   token_types: bool = True, shard_index: int = 0) -> tf.data.Dataset:
    """This shard's packed steps, each read from the memory-mapped split when it is due.

    (features, labels): input_ids, position_ids, segment_ids (and token_type_ids, zeros) [rows, L],
    cls_index [rows, S]; labels [rows, S], -1 where a packed row has no S-th example
    (packing.pack_step).
    Not through `prepare_tf_dataset`: it batches a fixed number of examples (a packed step holds a
    varying number), its collator sees the examples but not the step's layout, and it keeps only the
    model's call arguments (not segment_ids, cls_index)."""
    examples = split.select_columns(["input_ids", "label"]).with_format("arrow")
    rows, counts = plan.shard_rows(shard_index), plan.shard_example_counts(shard_index)
    starts, segments = np.cumsum(counts) - counts, plan.shard_segments(shard_index)
    batch = int(plan.batch_rows[0]) if plan.steps else 0
    length, slots = plan.max_length, plan.max_segments

    def steps():
        for step in range(plan.steps):
            table = examples[rows[starts[step]:starts[step] + counts[step]]]
            ids = table.column("input_ids").combine_chunks()
            features = packing.pack_step(
                ids.flatten().to_numpy(), pc.list_value_length(ids).to_numpy(),
                table.column("label").to_numpy(), segments[step], length, slots, pad_token_id)
            labels = features.pop("labels")
            if token_types:
                features["token_type_ids"] = np.zeros_like(features["input_ids"])
            yield features, labels

    names = ["input_ids", "position_ids", "segment_ids"] + ["token_type_ids"] * token_types
    features = {name: tf.TensorSpec((batch, length), tf.int32) for name in names}
    features["cls_index"] = tf.TensorSpec((batch, slots), tf.int32)
    return tf.data.Dataset.from_generator(steps, output_signature=(
        features, tf.TensorSpec((batch, slots), tf.int32)))


def stream(split: datasets.Dataset, model, tokenizer, *, shard_index: int = 0, **plan_args) -> Stream:
    """Plan `split`'s batches (plan_batches arguments) and stream this shard's part of them."""
    plan = plan_batches(lengths_of(split), **plan_args)
    if plan.steps == 0:
        raise UsageError(f"{len(split)} rows make no full batch: lower the batch size")
    return Stream(batches(split, plan, model, tokenizer, shard_index), plan)


def _to_int32(features, labels):
    return {k: tf.cast(v, tf.int32) for k, v in features.items()}, tf.cast(labels, tf.int32)
