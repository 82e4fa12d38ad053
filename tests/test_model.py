"""Model loading (TF weights, PyTorch-layout safetensors without torch), freezing, precision."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from safetensors.numpy import load_file

from conftest import MINILM
from trainer import checks, distribute, flops, model, step, storage
from trainer.config import KERAS_POLICY, TrainConfig
from trainer.errors import UsageError

LABELS = ["negative", "positive"]


def test_tiny_tf_weights_with_a_new_head(tiny_model_dir):
    classifier = model.build_classifier(tiny_model_dir, LABELS)
    assert classifier.config.num_labels == 2 and classifier.config.id2label == {0: "negative", 1: "positive"}
    logits = classifier(tf.constant([[2, 50, 3]]), training=False).logits
    assert logits.shape == (1, 2)


def test_pytorch_safetensors_load_without_torch():
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
        checks.model(str(tmp_path))


def test_missing_model_directory_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="does not exist"):
        checks.model(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="cannot reach the model hub.*pass a local directory"):
        checks.model("bert-base-uncased")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "tf_model.h5").write_bytes(b"garbage" * 100), r"tf_model.h5 is damaged"),
    (lambda d: (d / "tf_model.h5").write_bytes((d / "tf_model.h5").read_bytes()[:5000]), r"tf_model.h5 is damaged"),
    (lambda d: (d / "tokenizer.json").write_text("{not json"), r"tokenizer.json is damaged"),
    (lambda d: (d / "config.json").write_text("[1, 2"), r"holds no usable config.json"),
    (lambda d: [p.unlink() for p in d.iterdir()], r"holds no usable config.json"),
])
def test_damaged_model_files_are_named(tmp_path, tiny_model_dir, damage, message):
    import shutil
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    damage(copy)
    with pytest.raises(UsageError, match=message):
        checks.model(str(copy))


def test_damaged_safetensors_are_named(tmp_path):
    import shutil
    copy = tmp_path / "minilm"
    shutil.copytree(MINILM, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(UsageError, match="model.safetensors is damaged"):
        checks.model(str(copy))


def test_lazy_adamw_updates_only_the_rows_a_batch_touches():
    """With every row touched it is AdamW exactly; rows a batch does not touch keep their values and moments."""
    def train(kind, rows_per_step):
        tf_keras.utils.set_random_seed(0)
        table = tf.Variable(tf.random.normal((6, 3)), name="embeddings/weight")
        optimizer = model.make_optimizer(embedding_update=kind, learning_rate=0.1, warmup_ratio=0.0, weight_decay=0.1,
                                         total_steps=10)
        for rows in rows_per_step:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, rows) ** 2)
            optimizer.apply_gradients([(tape.gradient(loss, table), table)])
        return table.numpy(), optimizer.get_slot(table, "m").numpy() if rows_per_step else None

    every_row = [[0, 1, 2, 3, 4, 5]] * 3
    np.testing.assert_allclose(train("lazy", every_row)[0], train("dense", every_row)[0], rtol=1e-5, atol=1e-7)
    start, _ = train("lazy", [])
    values, moments = train("lazy", [[0, 2], [2, 0, 0]])
    np.testing.assert_array_equal(values[[1, 3, 4, 5]], start[[1, 3, 4, 5]])
    assert (moments[[1, 3, 4, 5]] == 0).all() and (values[[0, 2]] != start[[0, 2]]).all()
    dense_values, _ = train("dense", [[0, 2], [2, 0, 0]])
    assert not np.allclose(dense_values[[1, 3]], start[[1, 3]])       # dense decays every row


def test_frozen_embeddings():
    classifier = model.build_classifier(str(MINILM), LABELS, freeze_embeddings=True)
    names = [v.name for v in classifier.trainable_variables]
    assert not any("embeddings" in n for n in names) and any("layer_._0/" in n for n in names)


def test_freezing(tiny_model_dir):
    frozen = model.build_classifier(tiny_model_dir, LABELS, freeze_encoder=True)
    assert {v.name.split("/")[1] for v in frozen.trainable_variables} == {"classifier"}
    partly = model.build_classifier(tiny_model_dir, LABELS, freeze_layers=1)
    names = [v.name for v in partly.trainable_variables]
    assert not any("embeddings" in n or "layer_._0/" in n for n in names)
    assert any("layer_._1/" in n for n in names) and any("classifier" in n for n in names)
    with pytest.raises(UsageError, match="has 2 layers"):
        model.build_classifier(tiny_model_dir, LABELS, freeze_layers=3)


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU with the given flags whose bf16 train step measures `speedup` x float32's (cache in tmp_path)."""
    def make(cpu_flags, speedup=None):
        monkeypatch.setattr(storage, "CACHE", str(tmp_path))
        monkeypatch.setattr(flops, "cpu_flags", lambda: set(cpu_flags))
        monkeypatch.setitem(flops.MEASURES, "step speedup", lambda precision: speedup)
        return distribute.resolve_strategy("one_device")
    return make


def test_explicit_precisions_are_kept(cpu):
    strategy = cpu({"avx2"})
    assert model.choose_precision("bf16", strategy) == ("bf16", "--mixed_precision=bf16")
    assert model.resolve_precision("none", strategy) == "none"


@pytest.mark.parametrize("cpu_flags, speedup, precision", [
    ({"avx2", "fma"}, None, "none"),              # no bf16 instructions: nothing measured
    ({"avx512f", "avx512_bf16"}, 1.05, "none"),   # bf16 instructions, but not faster here
    ({"amx_bf16", "amx_tile"}, 1.4, "bf16"),
])
def test_auto_on_a_cpu(cpu, cpu_flags, speedup, precision):
    chosen, why = model.choose_precision("auto", cpu(cpu_flags, speedup))
    assert chosen == precision and why.startswith("auto: CPU")
    assert ("x float32's" in why) == (speedup is not None)


def test_auto_keeps_what_the_run_resolved_at_its_start(cpu):
    """A resume never measures again: a re-measured cache entry could flip the choice and refuse the resume."""
    strategy = cpu({"amx_bf16"}, speedup=0.5)          # measured now, bf16 would lose ...
    assert model.choose_precision("auto", strategy, "bf16") == (
        "bf16", "auto: as this run resolved it at its start (run.json)")     # ... but the run chose bf16
    assert model.choose_precision("none", strategy, "bf16")[0] == "none"     # an explicit flag: the identity says


def test_auto_on_a_tpu(monkeypatch):
    class FakeTPUStrategy:
        pass
    monkeypatch.setattr(tf.distribute, "TPUStrategy", FakeTPUStrategy)
    assert model.choose_precision("auto", FakeTPUStrategy()) == ("bf16", "auto: TPU")


@pytest.mark.parametrize("capabilities, precision", [
    ([(9, 0)], "bf16"), ([(8, 0), (8, 6)], "bf16"), ([(7, 5)], "fp16"), ([(8, 0), (7, 0)], "fp16"),
    ([(6, 1)], "none")])
def test_auto_on_gpus_follows_the_lowest_compute_capability(cpu, monkeypatch, capabilities, precision):
    strategy = cpu({"amx_bf16"}, 2.0)   # the GPUs decide, not the host CPU
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: list(range(len(capabilities))) if kind == "GPU" else real(kind))
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda gpu: {"compute_capability": capabilities[gpu]})
    chosen, why = model.choose_precision("auto", strategy)
    assert chosen == precision and why.startswith(f"auto: GPU compute capability {min(capabilities)[0]}.")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_keeps_float32_variables_and_loss(tiny_model_dir, precision):
    tf_keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    classifier = model.build_classifier(tiny_model_dir, LABELS)
    model.compile_classifier(classifier, TrainConfig(), total_steps=10)
    scaled = isinstance(classifier.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    assert scaled == (precision == "fp16")          # bf16 has float32's range: no loss scaling
    features = {"input_ids": tf.constant([[2, 40, 50, 3]] * 4), "attention_mask": tf.ones((4, 4), tf.int32)}
    labels = tf.constant([0, 1, 0, 1])
    logits = classifier(features, training=False).logits
    assert logits.dtype == {"fp16": tf.float16, "bf16": tf.bfloat16}[precision]
    loss = step.loss_fn(labels, logits)
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy()).all()
    history = classifier.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(3), verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert {v.dtype for v in classifier.trainable_variables} == {tf.float32}
