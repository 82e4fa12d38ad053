"""Sequence packing: several tweets laid one after another in each row of max_length tokens.

The packing works on the length histogram, not tweet by tweet: best-fit decreasing over the <=
max_length distinct lengths, with identical packed rows kept as (count, lengths) groups, the idea of
SPFHP (Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination"). Longest lengths
first, every tweet of a length goes into the open rows with the least room that still fits it; what
fits nowhere opens new rows holding as many tweets of that length as fit. A row closes when it is
full or holds `max_segments` tweets. It costs about a millisecond whatever the split's size, and
packs the shared Sentiment140 sample within 0.6% of the bound (sum of lengths / max_length rows).

SPFHP as published (the row with the *most* room first; one new row per tweet that fits nowhere)
reaches 0.985 at max_length 64 but 0.957 at 128 on that sample: tweets are short against 128, and
one tweet per new row leaves rows that the few short tweets cannot fill.

The histogram fixes which lengths share a row; which tweets fill the rows comes from the caller's
order (shuffled for a (seed, epoch)), and the packed rows are then shuffled over the whole epoch.
"""
import collections

import numpy as np

from trainer.errors import UsageError

ROW_MULTIPLE = 8


def default_max_segments(max_length: int) -> int:
    return max(1, max_length // 8)


def rows_per_replica(max_length: int, batch_tokens: int) -> int:
    """Packed rows per replica for `batch_tokens`: batch_tokens // max_length, rounded down to a
    multiple of 8, at least 8 (the rule of token-sized bucket batches)."""
    return max(ROW_MULTIPLE, batch_tokens // max_length // ROW_MULTIPLE * ROW_MULTIPLE)


def pack_histogram(histogram, max_length: int, max_segments: int) -> list[tuple[int, list[int]]]:
    """(count, the lengths of one packed row) groups holding histogram[n] tweets of each length n
    (1 <= n <= max_length): best-fit decreasing, identical rows grouped."""
    open_rows = collections.defaultdict(list)     # room left -> [(count, lengths)]
    closed = []

    def add(lengths, count, room):
        if count:
            (closed if room == 0 or len(lengths) == max_segments else open_rows[room]).append(
                (count, lengths))

    for length in range(max_length, 0, -1):
        left = int(histogram[length]) if length < len(histogram) else 0
        while left:
            fitting = [room for room in open_rows if room >= length]
            if not fitting:                       # new rows, each with as many as fit
                per_row = min(max_segments, max_length // length)
                add([length] * per_row, left // per_row, max_length - per_row * length)
                add([length] * (left % per_row), 1, max_length - left % per_row * length)
                break
            room = min(fitting)
            count, lengths = open_rows[room].pop()
            if not open_rows[room]:
                del open_rows[room]
            if count > left:                      # only some of these rows get one more tweet
                open_rows[room].append((count - left, lengths))
            add(lengths + [length], min(count, left), room - length)
            left -= min(count, left)
    return closed + [group for groups in open_rows.values() for group in groups]


def pack(lengths: np.ndarray, max_length: int, max_segments: int,
         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tweets, segments): positions into `lengths` (each <= max_length) in packed-row order, and
    the number of tweets in each packed row. Tweets of equal length fill their slots in the order
    given; with `rng` the packed rows come shuffled."""
    lengths = np.asarray(lengths)
    if len(lengths) and lengths.min() < 1:
        raise UsageError("a row without tokens cannot be packed: prepare the data again")
    histogram = np.bincount(lengths, minlength=max_length + 1)
    groups = pack_histogram(histogram, max_length, max_segments)
    sizes = np.asarray([len(group) for _, group in groups], dtype=np.int64)
    counts = np.asarray([count for count, _ in groups], dtype=np.int64)
    template = np.asarray([n for _, group in groups for n in group], dtype=np.int64)
    kind = np.repeat(np.arange(len(groups)), counts)          # each packed row's group
    if rng is not None:
        kind = kind[rng.permutation(len(kind))]
    segments = sizes[kind]
    firsts = np.repeat((np.cumsum(sizes) - sizes)[kind], segments)
    slot_lengths = template[firsts + _within(segments)]
    tweets = np.empty(len(slot_lengths), dtype=np.int64)     # slots and tweets, both by length
    tweets[np.argsort(slot_lengths, kind="stable")] = np.argsort(lengths, kind="stable")
    return tweets, segments


def _within(counts: np.ndarray) -> np.ndarray:
    """0..counts[0]-1, 0..counts[1]-1, ... concatenated."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def pack_step(ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray, segments: np.ndarray,
              max_length: int, max_segments: int, pad_token_id: int) -> dict:
    """One slice of packed rows, as numpy int32 arrays.

    ids: the tweets' token ids concatenated (lengths[i] each, untruncated); segments[r]: tweets in
    packed row r, in order. Tweets longer than max_length keep their first max_length-1 tokens and
    their last ([SEP]), as stream.truncate does. Returns input_ids, position_ids, segment_ids
    (1..S, 0 on padding) [rows, max_length], cls_index [rows, S] and labels [rows, S] (-1: no
    tweet)."""
    rows, lengths = len(segments), np.asarray(lengths, dtype=np.int64)
    kept = np.minimum(lengths, max_length)
    tweet_row = np.repeat(np.arange(rows), segments)
    segment = _within(segments)
    starts = np.cumsum(kept) - kept                                   # in the step's tokens
    row_tokens = np.bincount(tweet_row, weights=kept, minlength=rows).astype(np.int64)
    offsets = starts - np.repeat(np.cumsum(row_tokens) - row_tokens, segments)   # in the row
    position = _within(kept)
    source = np.repeat(np.cumsum(lengths) - lengths, kept) + position
    source[np.cumsum(kept) - 1] = np.cumsum(lengths) - 1              # the last token: [SEP]
    target = np.repeat(tweet_row * max_length + offsets, kept) + position
    input_ids = np.full(rows * max_length, pad_token_id, np.int32)
    position_ids = np.zeros(rows * max_length, np.int32)
    segment_ids = np.zeros(rows * max_length, np.int32)
    input_ids[target], position_ids[target] = ids[source], position
    segment_ids[target] = np.repeat(segment + 1, kept)
    cls_index = np.zeros((rows, max_segments), np.int32)
    slot_labels = np.full((rows, max_segments), -1, np.int32)
    cls_index[tweet_row, segment], slot_labels[tweet_row, segment] = offsets, labels
    shape = (rows, max_length)
    return {"input_ids": input_ids.reshape(shape), "position_ids": position_ids.reshape(shape),
            "segment_ids": segment_ids.reshape(shape), "cls_index": cls_index,
            "labels": slot_labels}
