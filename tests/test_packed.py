"""packed.segment_logits: every packed tweet scored as if it were alone (parity with the unpacked
model, eager, under tf.function and XLA, under mixed precision and MirroredStrategy), the same
variables, the same gradients; models that are not BERT refused."""
import datasets
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import transformers

from conftest import small_model
from trainer import distribute, hub, metrics, packed, step
from trainer import model as model_lib
from trainer.data import stream as stream_lib
from trainer.errors import UsageError

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def export_dir(no_dropout_model, tmp_path_factory):
    """The tiny BERT without dropout as a saved classifier (its random head kept, so every load
    is the same model), its weights scaled up so that a token's context changes its outputs (at
    BERT's initial scale, 0.02, attention is nearly uniform and a mask matters little)."""
    tf_keras.utils.set_random_seed(0)
    classifier = model_lib.build_classifier(no_dropout_model, LABELS)
    for weight in classifier.weights:
        if "kernel" in weight.name or "embeddings" in weight.name:
            weight.assign(weight * 4)
    path = str(tmp_path_factory.mktemp("packed-export"))
    classifier.save_pretrained(path)
    hub.load_tokenizer(no_dropout_model).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def split(small_prepared):
    return datasets.load_from_disk(small_prepared)["train"].select(range(120))


def stream(split, classifier, padding, **kwargs):
    tokenizer = hub.load_tokenizer(classifier.name_or_path)
    settings = {"padding": padding, "max_length": 64, "global_batch_size": 8, **kwargs}
    return stream_lib.stream(split, classifier, tokenizer, **settings)


def by_tweet(plan, logits):
    """Logits in the plan's order -> logits in the split's order."""
    ordered = np.zeros_like(logits)
    ordered[plan.rows] = logits
    return ordered


def packed_logits(classifier, s, logits_fn=None):
    logits_fn = logits_fn or (lambda features: packed.segment_logits(classifier, features))
    found = [np.asarray(logits_fn(x), np.float32)[y.numpy() >= 0] for x, y in s.dataset]
    return by_tweet(s.plan, np.concatenate(found))


def test_packed_logits_are_each_tweet_alone(export_dir, split):
    classifier = model_lib.load_export(export_dir)
    s = stream(split, classifier, "pack", shuffle=True, seed=4)
    assert s.plan.segments.max() > 1 and s.plan.shapes() == {(8, 64)}
    alone = np.concatenate([classifier(tf.constant([ids]), training=False).logits.numpy()
                            for ids in split["input_ids"]])
    np.testing.assert_allclose(packed_logits(classifier, s), alone, atol=1e-5)


def test_packed_logits_match_full_and_bucket_padding_batches(export_dir, split):
    classifier = model_lib.load_export(export_dir)
    expected = packed_logits(classifier, stream(split, classifier, "pack"))
    for padding in ("max_length", "bucket"):
        s = stream(split, classifier, padding, global_batch_size=16, shuffle=True)
        logits = np.concatenate([classifier(x).logits.numpy() for x, _ in s.dataset])
        np.testing.assert_allclose(by_tweet(s.plan, logits), expected, atol=1e-5)


def test_packed_logits_under_tf_function_and_xla(export_dir, split):
    classifier = model_lib.load_export(export_dir)
    s = stream(split, classifier, "pack")
    expected = packed_logits(classifier, s)
    for jit in (False, True):
        compiled = tf.function(lambda x: packed.segment_logits(classifier, x), jit_compile=jit)
        np.testing.assert_allclose(packed_logits(classifier, s, compiled), expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_packed_logits_under_mixed_precision(export_dir, split, policy):
    tf_keras.mixed_precision.set_global_policy(policy)
    classifier = model_lib.load_export(export_dir)
    s = stream(split.select(range(40)), classifier, "pack")
    compiled = tf.function(lambda x: packed.segment_logits(classifier, x), jit_compile=True)
    x, _ = next(iter(s.dataset))
    assert compiled(x).dtype == tf.as_dtype(policy.split("_")[1])
    alone = np.concatenate([classifier(tf.constant([ids]), training=False).logits.numpy()
                            for ids in split["input_ids"][:40]]).astype(np.float32)
    tf_keras.mixed_precision.set_global_policy("float32")
    exact = packed_logits(model_lib.load_export(export_dir), s)
    tolerance = 0.05 if policy == "mixed_bfloat16" else 0.01
    np.testing.assert_allclose(packed_logits(classifier, s, compiled), alone, atol=tolerance)
    np.testing.assert_allclose(exact, alone, atol=tolerance)


def test_packed_scores_equal_on_one_device_mirrored_and_unpacked(export_dir, split):
    """metrics.Scorer on packed batches (-1 slots ignored): the bucket batches' metrics, on one
    device and with MirroredStrategy over 2 replicas (8 packed rows: 4 each)."""
    results = []
    for name, padding in (("one_device", "bucket"), ("one_device", "pack"), ("mirrored", "pack")):
        strategy = distribute.resolve_strategy(name)
        with strategy.scope():
            classifier = model_lib.load_export(export_dir)
        s = stream(split, classifier, padding)
        scorer = metrics.Scorer(classifier, strategy, LABELS)
        results.append(scorer.score(distribute.per_replica(s.dataset, strategy, 1)))
    assert strategy.num_replicas_in_sync == 2
    for result in results[1:]:
        assert result["confusion_matrix"] == results[0]["confusion_matrix"]
        assert result["loss"] == pytest.approx(results[0]["loss"], rel=1e-5)
        assert result["examples"] == len(split)


def test_a_packed_step_has_the_unpacked_loss_and_gradients(export_dir, split):
    """Training sees the same model: the mean loss over a packed step's tweets and its gradients
    equal those of the same tweets padded in one batch."""
    classifier = model_lib.load_export(export_dir)
    s = stream(split, classifier, "pack")
    x, y = next(iter(s.dataset))
    tweets = s.plan.rows[:s.plan.examples[0]]
    columns = ("input_ids", "attention_mask", "label")
    padded = stream_lib.PadTo(0, 64, 64)([{key: split[int(t)][key] for key in columns}
                                          for t in tweets])
    variables = classifier.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        packed_loss = packed.segment_loss(y, packed.segment_logits(classifier, x, training=True))
        labels = padded.pop("labels")
        logits = classifier(padded, training=True).logits
        unpacked_loss = tf.reduce_mean(step.loss_fn(labels, logits))
    assert float(packed_loss) == pytest.approx(float(unpacked_loss), rel=1e-5)
    for variable, a, b in zip(variables, tape.gradient(packed_loss, variables),
                              tape.gradient(unpacked_loss, variables)):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), atol=1e-6,
                                   err_msg=variable.name)


def test_the_classifier_keeps_its_variables_and_exports_as_it_was(export_dir, split, tmp_path):
    classifier = model_lib.load_export(export_dir)
    names = [w.name for w in classifier.weights]
    s = stream(split, classifier, "pack")
    before = packed_logits(classifier, s)
    assert [w.name for w in classifier.weights] == names
    classifier.save_pretrained(str(tmp_path))
    reloaded = transformers.TFAutoModelForSequenceClassification.from_pretrained(str(tmp_path))
    assert type(reloaded) is transformers.TFBertForSequenceClassification
    np.testing.assert_allclose(packed_logits(reloaded, s), before, atol=1e-6)


def test_models_that_are_not_bert_are_refused_in_one_line():
    distilbert = transformers.TFDistilBertForSequenceClassification(transformers.DistilBertConfig(
        dim=8, hidden_dim=16, n_layers=1, n_heads=2, vocab_size=50))
    for model in (distilbert, small_model()):
        with pytest.raises(UsageError, match="--padding=pack needs a BERT classifier") as error:
            packed.segment_logits(model, {})
        assert "\n" not in str(error.value) and type(model).__name__ in str(error.value)
