"""Label and probability for each text, in order."""
import datasets
import numpy as np
import tensorflow as tf

from trainer import packed
from trainer.data import stream


def predict(classifier, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128,
            padding: str = "bucket"):
    """[(label, probability, text)] for each text, in order: the most probable label and its softmax
    probability. padding: bucket, each batch of batch_size texts padded to its longest; pack, texts
    packed into batches of batch_size rows of max_length (packed.segment_logits)."""
    probabilities = (_packed if padding == "pack" else _padded)(classifier, tokenizer, texts,
                                                                batch_size, max_length)
    results = []
    for text, p in zip(texts, probabilities):
        label = int(p.argmax())
        results.append((classifier.config.id2label[label], float(p[label]), text))
    return results


def _padded(classifier, tokenizer, texts, batch_size, max_length) -> np.ndarray:
    probabilities = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                           max_length=max_length, return_tensors="np")
        logits = tf.cast(classifier(dict(inputs), training=False).logits, tf.float32)
        probabilities.append(tf.nn.softmax(logits, axis=-1).numpy())
    return np.concatenate(probabilities)


def _packed(classifier, tokenizer, texts, batch_size, max_length) -> np.ndarray:
    """Probabilities of the texts packed (in any order), put back in the texts' order."""
    packed.bert_of(classifier)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    split = datasets.Dataset.from_dict({"input_ids": ids, "label": [0] * len(ids)})
    plan = stream.plan_batches(np.asarray([len(row) for row in ids]), padding="pack",
                               global_batch_size=batch_size, max_length=max_length)

    @tf.function(autograph=False)
    def probabilities(features):
        return tf.nn.softmax(tf.cast(packed.segment_logits(classifier, features), tf.float32), axis=-1)

    batches = stream.packed_batches(split, plan, tokenizer.pad_token_id,
                                    stream.takes_token_types(classifier))
    found = [probabilities(features).numpy()[labels.numpy() >= 0] for features, labels in batches]
    ordered = np.zeros((len(texts), classifier.config.num_labels), np.float32)
    ordered[plan.rows] = np.concatenate(found)       # the plan's order -> the texts' order
    return ordered
