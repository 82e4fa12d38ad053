"""A BERT classifier on packed rows (stream `pack` padding), each example seen as if it were alone.

TFBertModel takes only a 2-D padding mask, so `segment_logits` calls the classifier's own layers:
the embeddings with position ids that restart at every segment, the encoder with a block-diagonal
4-D mask (a token attends only to its own example), then each segment's [CLS] hidden state through
the pooler, dropout and head. The variables are the classifier's: the export stays a plain
TFBertForSequenceClassification.
"""
import tensorflow as tf

from trainer.errors import UsageError
from trainer.step import loss_fn


def bert_of(classifier):
    """The classifier's BERT main layer, or a UsageError for a model without BERT's parts."""
    bert = getattr(classifier, "bert", None)
    parts = ("embeddings", "encoder", "pooler")
    missing = bert is None or any(getattr(bert, part, None) is None for part in parts)
    if missing or not hasattr(classifier, "classifier"):
        raise UsageError(f"--padding=pack needs a BERT classifier (bert.embeddings, bert.encoder, "
                         f"bert.pooler); {type(classifier).__name__} is not one: use "
                         "--padding=bucket")
    return bert


def attention_mask(segment_ids, dtype):
    """[B, 1, L, L] additive mask: 0 where two tokens share a segment, else -10000 (as HF makes
    (1 - mask) * -10000 from a 2-D mask); padding (segment 0) attends only to padding."""
    same = tf.equal(segment_ids[:, None, :, None], segment_ids[:, None, None, :])
    return (1.0 - tf.cast(same, dtype)) * tf.constant(-10000.0, dtype)


def segment_logits(classifier, features: dict, training: bool = False):
    """[B, S, num_labels]: the logits of each packed example (zeros' logits in empty slots)."""
    bert = bert_of(classifier)
    hidden = bert.embeddings(input_ids=features["input_ids"], position_ids=features["position_ids"],
                             token_type_ids=features.get("token_type_ids"), training=training)
    layers = [None] * len(bert.encoder.layer)
    mask = attention_mask(features["segment_ids"], hidden.dtype)
    hidden = bert.encoder(hidden_states=hidden, attention_mask=mask, head_mask=layers,
                          encoder_hidden_states=None, encoder_attention_mask=None,
                          past_key_values=layers, use_cache=False, output_attentions=False,
                          output_hidden_states=False, return_dict=False, training=training)[0]
    cls_index = features["cls_index"]
    first = tf.gather(hidden, cls_index, batch_dims=1)                    # [B, S, H]
    pooled = bert.pooler(tf.reshape(first, [-1, 1, first.shape[-1]]))    # the pooler reads token 0
    logits = classifier.classifier(classifier.dropout(pooled, training=training))
    return tf.reshape(logits, [-1, tf.shape(cls_index)[1], logits.shape[-1]])


def logits_of(classifier, features: dict, training: bool = False):
    """[B, S, C] for a packed batch (it has cls_index), else the classifier's [B, C]."""
    if "cls_index" in features:
        return segment_logits(classifier, features, training)
    return classifier(features, training=training).logits


def per_example(labels, logits):
    """(labels [N], logits [N, C], weights [N]) from a batch of either kind: labels [B] or packed
    [B, S] with -1 in empty slots (weight 0, label 0). Static shapes: fine under XLA."""
    labels = tf.reshape(labels, [-1])
    weights = tf.cast(labels >= 0, tf.float32)
    return tf.maximum(labels, 0), tf.reshape(logits, [-1, logits.shape[-1]]), weights


def segment_loss(labels, logits):
    """Mean float32 cross-entropy over the real examples of a batch of either kind."""
    labels, logits, weights = per_example(labels, logits)
    total = tf.reduce_sum(loss_fn(labels, logits) * weights)
    return total / tf.maximum(tf.reduce_sum(weights), 1.0)
