"""Model loading (TF weights, PyTorch-layout safetensors without torch), freezing, precision."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from safetensors.numpy import load_file

from conftest import MINILM
from trainer import distribute, model
from trainer.cli import UsageError

LABELS = ["negative", "positive"]


def test_tiny_tf_weights_with_a_new_head(tiny_model_dir):
    classifier = model.build_classifier(tiny_model_dir, LABELS)
    assert classifier.config.num_labels == 2 and classifier.config.id2label == {0: "negative", 1: "positive"}
    logits = classifier(tf.constant([[2, 50, 3]]), training=False).logits
    assert logits.shape == (1, 2)


def test_pytorch_safetensors_load_without_torch():
    pytest.importorskip("safetensors")
    import importlib.util
    assert importlib.util.find_spec("torch") is None      # the point: no PyTorch in this environment
    classifier = model.build_classifier(str(MINILM), LABELS)
    state = load_file(str(MINILM / "model.safetensors"))
    embeddings = classifier.bert.embeddings.weight.numpy()
    np.testing.assert_array_equal(embeddings, state["embeddings.word_embeddings.weight"])
    query = classifier.bert.encoder.layer[5].attention.self_attention.query.kernel.numpy()
    np.testing.assert_array_equal(query, state["encoder.layer.5.attention.self.query.weight"].T)
    assert classifier.config.num_hidden_layers == 6


def test_directory_without_weights(tmp_path, tiny_model_dir):
    import shutil
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{tiny_model_dir}/{name}", tmp_path / name)
    with pytest.raises(UsageError, match="holds no tf_model.h5 or \\*.safetensors"):
        model.build_classifier(str(tmp_path), LABELS)


def test_missing_model_directory_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="does not exist"):
        model.build_classifier(str(tmp_path / "nope"), LABELS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="cannot reach the model hub.*pass a local directory"):
        model.build_classifier("bert-base-uncased", LABELS)


def test_freezing(tiny_model_dir):
    frozen = model.build_classifier(tiny_model_dir, LABELS, freeze_encoder=True)
    assert {v.name.split("/")[1] for v in frozen.trainable_variables} == {"classifier"}
    partly = model.build_classifier(tiny_model_dir, LABELS, freeze_layers=1)
    names = [v.name for v in partly.trainable_variables]
    assert not any("embeddings" in n or "layer_._0/" in n for n in names)
    assert any("layer_._1/" in n for n in names) and any("classifier" in n for n in names)
    with pytest.raises(UsageError, match="has 2 layers"):
        model.build_classifier(tiny_model_dir, LABELS, freeze_layers=3)


def test_precision_auto_is_none_on_cpu():
    strategy = distribute.resolve_strategy("one_device")
    assert model.resolve_precision("auto", strategy) == "none"
    assert model.resolve_precision("bf16", strategy) == "bf16"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_keeps_float32_variables_and_loss(tiny_model_dir, precision):
    tf_keras.mixed_precision.set_global_policy(model.KERAS_POLICY[precision])
    classifier = model.build_classifier(tiny_model_dir, LABELS)
    classifier.compile(optimizer=tf_keras.optimizers.legacy.Adam(1e-3), loss=model.loss_fn)
    if precision == "fp16":
        assert isinstance(classifier.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    features = {"input_ids": tf.constant([[2, 40, 50, 3]] * 4), "attention_mask": tf.ones((4, 4), tf.int32)}
    labels = tf.constant([0, 1, 0, 1])
    logits = classifier(features, training=False).logits
    assert logits.dtype == {"fp16": tf.float16, "bf16": tf.bfloat16}[precision]
    loss = model.loss_fn(labels, logits)
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy()).all()
    history = classifier.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(3), verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert {v.dtype for v in classifier.trainable_variables} == {tf.float32}
