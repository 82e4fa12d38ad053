"""stream(): shapes of each padding mode, bucket efficiency, partial batches, shards, static shapes."""
import itertools

import datasets
import numpy as np
import pytest
from transformers import TFAutoModelForSequenceClassification

from conftest import MINILM
from trainer import hub
from trainer.data import stream as stream_lib
from trainer.errors import UsageError


@pytest.fixture(scope="module")
def split(prepared_sample):
    return datasets.load_from_disk(prepared_sample)["train"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    """prepare_tf_dataset only needs the model's inputs; the tokenizer is the one the data was made with."""
    return TFAutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2), \
        hub.load_tokenizer(str(MINILM))


def batches(split, model_and_tokenizer, take=None, **kwargs):
    model, tokenizer = model_and_tokenizer
    kwargs.setdefault("max_length", 64)
    s = stream_lib.stream(split, model, tokenizer, **kwargs)
    return s, [(x, y) for x, y in itertools.islice(s.dataset.as_numpy_iterator(), take)]


def test_max_length_pads_every_batch_to_max_length(split, model_and_tokenizer):
    s, out = batches(split, model_and_tokenizer, take=5, global_batch_size=32, padding="max_length")
    assert {x["input_ids"].shape for x, _ in out} == {(32, 64)}
    lengths = stream_lib.lengths_of(split)
    assert s.plan.padding_efficiency == pytest.approx(lengths[:s.plan.steps * 32].mean() / 64)
    assert s.plan.padding_efficiency < 0.4          # tweets are short: most of 64 tokens is padding


def test_batch_pads_to_the_longest_row_in_the_batch(split, model_and_tokenizer):
    s, out = batches(split, model_and_tokenizer, take=20, global_batch_size=32, padding="batch", shuffle=True)
    lengths = stream_lib.lengths_of(split)
    for step, (x, y) in enumerate(out):
        rows = s.plan.rows[step * 32:(step + 1) * 32]
        assert x["input_ids"].shape == (32, lengths[rows].max())
        np.testing.assert_array_equal(x["attention_mask"].sum(axis=1), lengths[rows])
        np.testing.assert_array_equal(y, np.asarray(split.select(rows)["label"]))   # labels travel with rows


def test_pad_to_multiple_of(split, model_and_tokenizer):
    _, out = batches(split, model_and_tokenizer, take=10, global_batch_size=32, padding="batch",
                     pad_to_multiple_of=8, shuffle=True)
    assert all(x["input_ids"].shape[1] % 8 == 0 for x, _ in out)


def test_bucket_lengths_are_boundaries_and_efficiency_is_high(split, model_and_tokenizer):
    s, out = batches(split, model_and_tokenizer, global_batch_size=32, padding="bucket", shuffle=True,
                     drop_remainder=True)
    boundaries = s.plan.boundaries
    assert len(boundaries) <= stream_lib.MAX_BUCKETS and boundaries[-1] == 64
    lengths = stream_lib.lengths_of(split)
    for step, (x, _) in enumerate(out):
        longest = lengths[s.plan.rows[step * 32:(step + 1) * 32]].max()
        assert x["input_ids"].shape[1] == min(b for b in boundaries if b >= longest)
    assert len({x["input_ids"].shape for x, _ in out}) <= 8
    real = sum(int(x["attention_mask"].sum()) for x, _ in out)
    assert real == s.plan.real_tokens.sum()
    efficiency = real / sum(x["input_ids"].size for x, _ in out)
    assert efficiency == pytest.approx(s.plan.padding_efficiency)
    # 8 boundaries cannot beat padding each row to its own bucket; the DP optimum of that on this
    # sample is 0.898, so 0.89 means the batching loses almost nothing to mixed batches.
    assert efficiency >= 0.89
    full = stream_lib.plan_batches(lengths, global_batch_size=32, padding="max_length", max_length=64)
    assert efficiency > 2.4 * full.padding_efficiency


def test_bucket_boundaries_are_optimal_on_a_small_histogram():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=500)
    found = stream_lib.bucket_boundaries(lengths, max_buckets=3)

    def cost(bs):
        return np.asarray(bs)[np.searchsorted(bs, lengths)].sum()
    best = min(cost(bs + (29,)) for bs in itertools.combinations(range(3, 29), 2))
    assert found[-1] == 29 and cost(found) == best


def test_partial_last_batch_kept_or_dropped(split, model_and_tokenizer):
    small = split.select(range(100))
    for padding in ("max_length", "batch", "bucket"):      # pack: test_packing_holds_every_tweet...
        s, out = batches(small, model_and_tokenizer, global_batch_size=32, padding=padding, shuffle=True)
        assert [len(y) for _, y in out] == [32, 32, 32, 4]
        assert sorted(s.plan.rows.tolist()) == list(range(100))     # every row exactly once
        s, out = batches(small, model_and_tokenizer, global_batch_size=32, padding=padding, shuffle=True,
                         drop_remainder=True)
        assert [len(y) for _, y in out] == [32, 32, 32] and len(set(s.plan.rows.tolist())) == 96


def test_shards_are_disjoint_cover_the_split_and_share_shapes(split, model_and_tokenizer):
    small = split.select(range(256))
    shards = [batches(small, model_and_tokenizer, global_batch_size=64, padding="bucket", shuffle=True, seed=3,
                      num_shards=2, shard_index=k) for k in range(2)]
    rows = [s.plan.shard_rows(k) for k, (s, _) in enumerate(shards)]
    assert not set(rows[0]) & set(rows[1]) and sorted(np.concatenate(rows)) == list(range(256))
    (_, a), (_, b) = shards
    assert len(a) == len(b) == 4                                     # same steps on every worker
    for k, (s, out) in enumerate(shards):
        assert [x["input_ids"].shape for x, _ in out] == [(32, int(p)) for p in s.plan.pad_lengths[:, k]]
        assert {x["input_ids"].shape[1] for x, _ in out} <= set(s.plan.boundaries)


def test_order_depends_on_seed_and_epoch_only(split):
    lengths = stream_lib.lengths_of(split)
    plan = lambda **kw: stream_lib.plan_batches(lengths, global_batch_size=32, padding="bucket", max_length=64,
                                                shuffle=True, **kw).rows
    np.testing.assert_array_equal(plan(seed=1, epoch=0), plan(seed=1, epoch=0))
    assert not np.array_equal(plan(seed=1, epoch=0), plan(seed=1, epoch=1))
    np.testing.assert_array_equal(plan(seed=1, epoch=0)[5 * 32:], plan(seed=1, epoch=0, start_step=5))


def test_static_batch_sizes_when_the_remainder_is_dropped(split, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    small = split.select(range(100))
    full = stream_lib.stream(small, model, tokenizer, global_batch_size=32, padding="max_length", max_length=64,
                             drop_remainder=True)
    features, labels = full.dataset.element_spec
    assert all(spec.shape.as_list() == [32, 64] for spec in features.values()) and labels.shape == [32]
    bucket = stream_lib.stream(small, model, tokenizer, global_batch_size=32, padding="bucket", max_length=64,
                               drop_remainder=True)
    assert bucket.dataset.element_spec[0]["input_ids"].shape[0] == 32 and bucket.plan.steps == 3
    lengths = {x["input_ids"].shape[1] for x, _ in bucket.dataset.as_numpy_iterator()}
    assert lengths <= set(bucket.plan.boundaries)


def test_rows_longer_than_max_length_are_truncated_as_streamed(split, model_and_tokenizer):
    lengths = stream_lib.lengths_of(split)
    s, out = batches(split, model_and_tokenizer, global_batch_size=32, padding="bucket", max_length=32)
    assert s.plan.truncated_rows == int((lengths > 32).sum()) > 0
    assert max(x["input_ids"].shape[1] for x, _ in out) == 32
    sep = model_and_tokenizer[1].sep_token_id
    for step, (x, _) in enumerate(out):
        rows = s.plan.rows[step * 32:(step + 1) * 32]
        for ids, mask, length in zip(x["input_ids"], x["attention_mask"], lengths[rows]):
            assert mask.sum() == min(length, 32) and ids[mask.sum() - 1] == sep    # [SEP] kept at the end
    assert s.plan.real_tokens.sum() == sum(int(x["attention_mask"].sum()) for x, _ in out)


def test_token_sized_batches(split, model_and_tokenizer):
    s, out = batches(split, model_and_tokenizer, batch_tokens=2048, padding="bucket", shuffle=True, seed=2,
                     drop_remainder=True)
    shapes = {x["input_ids"].shape for x, _ in out}
    assert len(shapes) <= 8 and shapes == s.plan.shapes()
    for rows, length in shapes:      # N // L rows per replica, a multiple of 8, at least 8
        assert rows == max(8, 2048 // length // 8 * 8) and length in s.plan.boundaries
    assert [len(y) for _, y in out] == s.plan.examples.tolist() and s.plan.padding_efficiency > 0.85
    done = s.plan.rows[:s.plan.examples.sum()]
    assert len(set(done.tolist())) == len(done) > 0.97 * len(split)         # each row at most once
    resumed = stream_lib.plan_batches(stream_lib.lengths_of(split), batch_tokens=2048, padding="bucket", max_length=64,
                                      shuffle=True, seed=2, drop_remainder=True, start_step=7)
    np.testing.assert_array_equal(resumed.rows, s.plan.rows[s.plan.examples[:7].sum():])
    assert resumed.steps == s.plan.steps - 7


def test_token_sized_batches_shard_and_split_over_replicas(split):
    lengths = stream_lib.lengths_of(split)
    plan = stream_lib.plan_batches(lengths, batch_tokens=1024, padding="bucket", max_length=64, replicas=4,
                                   num_shards=2, shuffle=True, seed=5)
    assert len(plan.shapes()) <= 8
    for rows, length in plan.shapes():      # a shard holds 2 of the 4 replicas
        assert rows == 2 * max(8, 1024 // length // 8 * 8)
    shards = [plan.shard_rows(k) for k in range(2)]
    assert len(shards[0]) == len(shards[1]) and not set(shards[0]) & set(shards[1])
    assert len(plan.pad_lengths) == plan.steps and (plan.pad_lengths[:, 0] == plan.pad_lengths[:, 1]).all()


# Sequence packing (--padding=pack): the plan, then the packed steps.

@pytest.fixture(scope="module")
def sample_lengths():
    """The 20,000 tweets' token counts with the MiniLM tokenizer at max_length 128."""
    from conftest import SAMPLE_CSV
    from trainer.config import SourceConfig
    from trainer.data import readers
    rows = readers.read_rows(SourceConfig(input=str(SAMPLE_CSV)), readers.ReadStats())
    texts = [text for text, _ in rows]
    ids = hub.load_tokenizer(str(MINILM))(texts, truncation=True, max_length=128)["input_ids"]
    return np.asarray([len(row) for row in ids])


def pack_plan(lengths, **kwargs):
    settings = dict(padding="pack", max_length=64, shuffle=True, seed=1)
    if "batch_tokens" not in kwargs:
        settings["global_batch_size"] = 32
    return stream_lib.plan_batches(lengths, **{**settings, **kwargs})


def packed_rows(plan, lengths):
    """Each packed row's tweets' lengths, clipped to max_length, in plan order."""
    clipped = np.minimum(lengths, plan.max_length)[plan.rows]
    return np.split(clipped, np.cumsum(plan.segments)[:-1])


@pytest.mark.parametrize("max_length", [64, 128])
def test_packing_efficiency_on_the_real_sample(sample_lengths, max_length):
    plan = pack_plan(sample_lengths, max_length=max_length, drop_remainder=True)
    rows = packed_rows(plan, sample_lengths)
    assert plan.padding_efficiency >= 0.97 and plan.shapes() == {(32, max_length)}
    assert max(r.sum() for r in rows) <= max_length and plan.segments.max() <= max_length // 8
    bound = np.minimum(sample_lengths, max_length).sum() / max_length   # the fewest rows possible
    assert len(rows) <= 1.01 * bound + 32                               # (+ a dropped partial step)


def test_packing_holds_every_tweet_once_with_at_most_s_segments(sample_lengths):
    lengths = sample_lengths[:3000]
    kept = pack_plan(lengths, max_segments=3)
    assert sorted(kept.rows.tolist()) == list(range(3000)) and kept.segments.max() == 3
    assert kept.examples.sum() == 3000 and len(kept.segments) == 32 * kept.steps
    assert (kept.segments[-32:] == 0).any() and kept.batch_rows.tolist() == [32] * kept.steps
    dropped = pack_plan(lengths, max_segments=3, drop_remainder=True)   # no last partial step
    assert dropped.steps == kept.steps - 1
    assert len(set(dropped.rows.tolist())) == len(dropped.rows) < 3000
    assert dropped.real_tokens.sum() == np.minimum(lengths, 64)[dropped.rows].sum()
    assert pack_plan(lengths, max_length=32).segments.max() <= 4        # the default: 32 // 8


def test_packing_is_deterministic_mixes_epochs_and_resumes(sample_lengths):
    lengths = sample_lengths[:4000]
    first = pack_plan(lengths, epoch=0)
    np.testing.assert_array_equal(first.rows, pack_plan(lengths, epoch=0).rows)
    assert not np.array_equal(first.rows, pack_plan(lengths, epoch=1).rows)
    assert not np.array_equal(first.rows, pack_plan(lengths, seed=2).rows)
    resumed = pack_plan(lengths, epoch=0, start_step=5)
    np.testing.assert_array_equal(resumed.rows, first.rows[first.examples[:5].sum():])
    np.testing.assert_array_equal(resumed.segments, first.segments[5 * 32:])
    np.testing.assert_array_equal(resumed.real_tokens, first.real_tokens[5:])
    # shuffled across the epoch: a step's tweets come from all over the split, not from one window
    assert np.ptp(first.rows[:first.examples[0]]) > 0.8 * len(lengths)


def test_packed_shards_are_disjoint_cover_the_steps_and_share_one_shape(sample_lengths):
    lengths = sample_lengths[:4000]
    plan = pack_plan(lengths, num_shards=2, batch_tokens=1024, replicas=4)
    assert plan.shapes() == {(2 * 16, 64)}    # 1024 // 64 = 16 rows per replica, 2 replicas a shard
    shards = [plan.shard_rows(k) for k in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards)) == sorted(plan.rows)
    counts = [plan.shard_example_counts(k) for k in range(2)]
    np.testing.assert_array_equal(counts[0] + counts[1], plan.examples)
    assert [len(s) for s in shards] == [c.sum() for c in counts] and (counts[0] != counts[1]).any()
    for k in range(2):
        np.testing.assert_array_equal(plan.shard_segments(k).sum(axis=1), counts[k])
    assert (plan.padded_tokens == 64 * 64).all()             # 2 shards x 32 rows x 64 tokens
    assert pack_plan(lengths, batch_tokens=100).batch_rows[0] == 8              # at least 8 rows
    with pytest.raises(UsageError, match="split evenly"):
        pack_plan(lengths, global_batch_size=9, num_shards=2)


def test_batch_plans_name_rows_and_examples_apart(sample_lengths):
    """batch_rows, shard_example_counts and shard_rows mean the same in every mode."""
    lengths = sample_lengths[:640]
    for padding in stream_lib.PADDINGS:
        plan = pack_plan(lengths, padding=padding, num_shards=2, drop_remainder=True)
        shards = [plan.shard_rows(k) for k in range(2)]
        for k in range(2):
            assert len(shards[k]) == plan.shard_example_counts(k).sum()
        assert plan.shapes() == {(16, int(p)) for p in plan.pad_lengths.ravel()}
        assert plan.padded_tokens.sum() == (16 * plan.pad_lengths).sum()
        if padding != "pack":
            np.testing.assert_array_equal(plan.batch_rows, plan.shard_example_counts(1))


def assert_laid_out(split, s, out, tokenizer, shard_index=0):
    """Each tweet of the shard's slices where the plan puts it: ids (truncated, [SEP] last),
    positions from 0, segment number, label; [PAD] elsewhere."""
    ids, label_of = split["input_ids"], split["label"]
    length, tweets = s.plan.max_length, iter(s.plan.shard_rows(shard_index))
    for step, (x, y) in enumerate(out):
        assert all(v.dtype == np.int32 for v in x.values()) and y.dtype == np.int32
        for row, slot in zip(*np.nonzero(y >= 0)):
            tweet = next(tweets)
            expected = stream_lib.truncate(np.asarray(ids[tweet]), length)
            start = x["cls_index"][row, slot]
            span = slice(start, start + len(expected))
            np.testing.assert_array_equal(x["input_ids"][row, span], expected)
            np.testing.assert_array_equal(x["position_ids"][row, span], np.arange(len(expected)))
            assert (x["segment_ids"][row, span] == slot + 1).all()
            assert expected[-1] == tokenizer.sep_token_id and y[row, slot] == label_of[tweet]
        assert (x["input_ids"][x["segment_ids"] == 0] == tokenizer.pad_token_id).all()
        assert not x["token_type_ids"].any()
        segments = s.plan.shard_segments(shard_index)[step]
        np.testing.assert_array_equal((y >= 0).sum(axis=1), segments)
    assert next(tweets, None) is None


def test_packed_steps_lay_tweets_out_as_planned(split, model_and_tokenizer):
    small = split.select(range(600))
    s, out = batches(small, model_and_tokenizer, padding="pack", global_batch_size=8,
                     max_length=32, shuffle=True, seed=3)
    features, labels = s.dataset.element_spec
    shapes = {name: spec.shape.as_list() for name, spec in features.items()}
    assert shapes == {"input_ids": [8, 32], "position_ids": [8, 32], "segment_ids": [8, 32],
                      "token_type_ids": [8, 32], "cls_index": [8, 4]}
    assert labels.shape.as_list() == [8, 4] and s.plan.truncated_rows > 0
    assert_laid_out(small, s, out, model_and_tokenizer[1])
    real = [int((x["segment_ids"] > 0).sum()) for x, _ in out]
    assert real == s.plan.real_tokens.tolist()


def test_each_worker_streams_its_packed_rows(split, model_and_tokenizer):
    small = split.select(range(600))
    shards = [batches(small, model_and_tokenizer, padding="pack", global_batch_size=8, shuffle=True,
                      num_shards=2, shard_index=k) for k in range(2)]
    assert len(shards[0][1]) == len(shards[1][1]) == shards[0][0].plan.steps
    for k, (s, out) in enumerate(shards):
        assert {x["input_ids"].shape for x, _ in out} == {(4, 64)}
        assert_laid_out(small, s, out, model_and_tokenizer[1], shard_index=k)
