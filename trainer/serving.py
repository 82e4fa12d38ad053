"""A SavedModel that takes raw text: the tokenizer as graph ops before the fine-tuned classifier.

Signatures: serving_default (text -> probabilities, label) and tokenize (text -> input_ids,
attention_mask). It computes in float32, and loads with TensorFlow and tensorflow-text alone
(`import tensorflow_text` registers the tokenizer's ops), never transformers.
"""
import os

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

from trainer import graph_tokenizer, storage
from trainer.wordpiece_spec import WordPieceSpec

INFO = os.path.join("assets.extra", "serving.json")    # what was exported, with which settings
TEXT = tf.TensorSpec([None], tf.string, name="text")


class TextClassifier(tf.Module):
    """texts -> the classifier's probabilities and most probable label (tokenized as HF does)."""

    def __init__(self, classifier, spec: WordPieceSpec, max_length: int, labels: list[str],
                 input_names: list[str]):
        super().__init__(name="text_classifier")
        self.tokenizer = graph_tokenizer.GraphTokenizer(spec, max_length)
        self.classifier_weights = list(classifier.weights)       # saved; the Keras object is not
        self._logits = lambda inputs: classifier(inputs, training=False).logits
        self.labels = tf.constant(labels)
        self.token_types = "token_type_ids" in input_names

    @tf.function(input_signature=[TEXT])
    def serve(self, text):
        input_ids, attention_mask = self.tokenizer(text)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
        if self.token_types:
            inputs["token_type_ids"] = tf.zeros_like(input_ids)
        probabilities = tf.nn.softmax(tf.cast(self._logits(inputs), tf.float32), axis=-1)
        label = tf.gather(self.labels, tf.argmax(probabilities, axis=-1))
        return {"probabilities": probabilities, "label": label}

    @tf.function(input_signature=[TEXT])
    def tokenize(self, text):
        input_ids, attention_mask = self.tokenizer(text)
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def load_float32(model_dir: str):
    """The export's classifier, computing in float32 whatever the process's Keras policy."""
    from trainer import model as model_lib
    policy = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy("float32")
    try:
        return model_lib.load_export(model_dir)
    finally:
        tf_keras.mixed_precision.set_global_policy(policy)


def export(model_dir: str, spec: WordPieceSpec, max_length: int, input_names: list[str],
           output_dir: str) -> dict:
    """The SavedModel of the export at model_dir, written to output_dir whole or not at all; returns
    what serving.json says of it."""
    classifier = load_float32(model_dir)
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    module = TextClassifier(classifier, spec, max_length, labels, input_names)
    signatures = {"serving_default": module.serve.get_concrete_function(),
                  "tokenize": module.tokenize.get_concrete_function()}
    info = dict(format=1, model_dir=model_dir, labels=labels, max_length=max_length,
                precision="float32", signatures={"serving_default": "text -> probabilities, label",
                                                 "tokenize": "text -> input_ids, attention_mask"},
                tokenizer=dict(module.tokenizer.settings, vocab_size=len(spec.vocab)),
                tensorflow=tf.__version__, tensorflow_text=tf_text.__version__)
    write(module, signatures, info, output_dir)
    return info


def write(module: tf.Module, signatures: dict, info: dict, output_dir: str) -> None:
    """The SavedModel and its serving.json, staged beside output_dir and renamed into place (or
    uploaded, saved_model.pb last): never half-written."""
    with storage.staged_dir(output_dir, last="saved_model.pb") as staged:
        tf.saved_model.save(module, staged, signatures=signatures)
        storage.write_json(os.path.join(staged, INFO), info)
