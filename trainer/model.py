"""The classifier: a pretrained BERT (hub id, TF weights, or PyTorch-layout safetensors) with a new head.

transformers' TF `from_pretrained` cannot read PyTorch-layout safetensors without torch
("'builtins.safe_open' object is not iterable"), so those are read with safetensors.numpy and
loaded with transformers' own PyTorch->TF name mapping. Build inside `strategy.scope()`.
"""
import glob
import os

import numpy as np
import tensorflow as tf
import tf_keras
import transformers
from absl import logging
from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

from trainer import hub
from trainer.cli import UsageError

PRECISIONS = ("auto", "none", "fp16", "bf16")
KERAS_POLICY = {"none": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}


def resolve_precision(precision: str, strategy: tf.distribute.Strategy) -> str:
    """auto: bf16 on TPU, fp16 on GPUs of compute capability >= 7, else none (CPU)."""
    if precision != "auto":
        return precision
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "bf16"
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    return "fp16" if capabilities and min(capabilities) >= (7, 0) else "none"


def build_classifier(model: str, label_names: list[str], *, classifier_dropout: float | None = None,
                     freeze_encoder: bool = False, freeze_layers: int = 0) -> transformers.TFPreTrainedModel:
    """A TFAutoModelForSequenceClassification with pretrained encoder weights and a fresh head."""
    model_dir = hub.resolve(model)
    overrides = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                     label2id={name: i for i, name in enumerate(label_names)})
    if classifier_dropout is not None:
        overrides["classifier_dropout"] = classifier_dropout
    config = hub.load_config(model_dir, **overrides)
    if os.path.exists(os.path.join(model_dir, "tf_model.h5")):
        classifier = transformers.TFAutoModelForSequenceClassification.from_pretrained(
            model_dir, config=config, ignore_mismatched_sizes=True)
    else:
        classifier = transformers.TFAutoModelForSequenceClassification.from_config(config)
        classifier.build_in_name_scope()
        _load_pytorch_safetensors(classifier, model_dir)
    _freeze(classifier, freeze_encoder, freeze_layers)
    return classifier


def load_export(model_dir: str) -> transformers.TFPreTrainedModel:
    """A fine-tuned classifier saved by trainer-train (RUN/export) or any save_pretrained TF classifier."""
    if not os.path.isdir(model_dir):
        raise UsageError(f"model directory {model_dir} does not exist: pass --model_dir=<run>/export")
    if not os.path.exists(os.path.join(model_dir, "tf_model.h5")):
        raise UsageError(f"{model_dir} holds no tf_model.h5: pass the export/ directory of a training run")
    return transformers.TFAutoModelForSequenceClassification.from_pretrained(model_dir)


def _load_pytorch_safetensors(classifier, model_dir: str) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        found = ", ".join(sorted(os.listdir(model_dir)))
        raise UsageError(f"{model_dir} holds no tf_model.h5 or *.safetensors weights (found: {found}): "
                         "pass a directory saved with save_pretrained")
    with safe_open(files[0], framework="np") as f:
        if (f.metadata() or {}).get("format") == "tf":
            raise UsageError(f"{files[0]} is TF-layout safetensors: save it as tf_model.h5 (save_pretrained "
                             "with safe_serialization=False)")
    state = {}
    for path in files:
        state.update(load_file(path))
    _, info = load_pytorch_state_dict_in_tf2_model(classifier, state, allow_missing_keys=True,
                                                   output_loading_info=True)
    head = {"classifier", "pre_classifier", "score"}
    missing = [k for k in info["missing_keys"] if k.split(".")[0] not in head]
    if missing:
        raise UsageError(f"{model_dir}: weights for {len(missing)} encoder tensors are missing "
                         f"(e.g. {missing[0]}): is it a {classifier.config.model_type} checkpoint?")
    logging.info("loaded %d tensors from %s; new: %s", len(state), model_dir, ", ".join(info["missing_keys"]))


def _freeze(classifier, freeze_encoder: bool, freeze_layers: int) -> None:
    """freeze_encoder: train only the head. freeze_layers=N: embeddings and the first N layers fixed."""
    encoder = getattr(classifier, classifier.base_model_prefix)
    if freeze_encoder:
        encoder.trainable = False
    elif freeze_layers:
        layers = encoder.encoder.layer
        if freeze_layers > len(layers):
            raise UsageError(f"--freeze_layers={freeze_layers} but the model has {len(layers)} layers")
        encoder.embeddings.trainable = False
        for layer in layers[:freeze_layers]:
            layer.trainable = False


def loss_fn(labels, logits):
    """Cross-entropy in float32, whatever precision the logits come in (fp16 logits overflow the loss)."""
    return tf_keras.losses.sparse_categorical_crossentropy(labels, tf.cast(logits, tf.float32), from_logits=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
