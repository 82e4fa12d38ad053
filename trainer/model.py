"""The classifier: a pretrained BERT (hub id, TF weights, or PyTorch-layout safetensors) with a new head,
and the optimizer and compile settings every training run and benchmark share.

transformers' TF `from_pretrained` cannot read PyTorch-layout safetensors without torch
("'builtins.safe_open' object is not iterable"), so those are read with safetensors.numpy and
loaded with transformers' own PyTorch->TF name mapping. Build inside `strategy.scope()`.
"""
import math
import os

import tensorflow as tf
import tf_keras
import transformers
from absl import logging
from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

from trainer import hub, packed
from trainer import step as step_lib
from trainer.config import KERAS_POLICY, TrainConfig
from trainer.errors import UsageError
NO_WEIGHT_DECAY = ["LayerNorm", "layer_norm", "bias"]       # as transformers.create_optimizer


BF16_MARGIN = 1.1     # on a CPU, bf16 is picked only if its train step is at least this much faster than float32's


def resolve_precision(precision: str, strategy: tf.distribute.Strategy) -> str:
    """The precision a run uses: `choose_precision`'s, without the reason."""
    return choose_precision(precision, strategy)[0]


def choose_precision(precision: str, strategy: tf.distribute.Strategy, resolved: str | None = None) -> tuple[str, str]:
    """(precision, why) for --mixed_precision. auto: what the run resolved at its start (`resolved`, from its
    run.json), else bf16 on TPU; on GPUs by the lowest compute capability, bf16 from 8.0 (Ampere, Hopper), fp16
    with loss scaling on 7.x, else none; on a CPU, bf16 only if it has amx_bf16 or avx512_bf16 and a bf16 train
    step measures >= BF16_MARGIN x float32's (cached per machine)."""
    from trainer import flops
    if precision != "auto":
        return precision, f"--mixed_precision={precision}"
    if resolved in KERAS_POLICY:
        return resolved, "auto: as this run resolved it at its start (run.json)"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "bf16", "auto: TPU"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major, minor = min(tuple(tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)))
                           for g in gpus)
        found = f"auto: GPU compute capability {major}.{minor}"
        if major >= 8:
            return "bf16", f"{found} (bf16 tensor cores, no loss scaling)"
        return ("fp16", f"{found} (fp16 tensor cores, loss scaling)") if major == 7 else ("none", f"{found} (< 7.0)")
    bf16_flags = sorted({"amx_bf16", "avx512_bf16"} & flops.cpu_flags())
    if not bf16_flags:
        return "none", "auto: CPU without amx_bf16 or avx512_bf16"
    speedup, when, _ = flops.calibrated("step speedup", "bf16")
    found = f"auto: CPU with {', '.join(bf16_flags)}; a bf16 train step is {speedup:.2f}x float32's (measured {when})"
    return ("bf16", found) if speedup >= BF16_MARGIN else ("none", f"{found}, < {BF16_MARGIN}x")


def build_classifier(model_dir: str, label_names: list[str], *, classifier_dropout: float | None = None,
                     freeze_encoder: bool = False, freeze_layers: int = 0,
                     freeze_embeddings: bool = False) -> transformers.TFPreTrainedModel:
    """A TFAutoModelForSequenceClassification with the pretrained encoder weights of the local `model_dir` and
    a fresh head, unless model_dir holds a classifier head of the same shape (a fine-tuned export): that is
    loaded too."""
    overrides = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                     label2id={name: i for i, name in enumerate(label_names)})
    if classifier_dropout is not None:
        overrides["classifier_dropout"] = classifier_dropout
    config = hub.load_config(model_dir, **overrides)
    weights = hub.check_weights(model_dir)
    if weights.endswith(".h5"):
        classifier = _from_h5(model_dir, config, new_head=True)
    else:
        classifier = transformers.TFAutoModelForSequenceClassification.from_config(config)
        classifier.build_in_name_scope()
        _load_pytorch_safetensors(classifier, model_dir)
    _freeze(classifier, freeze_encoder, freeze_layers, freeze_embeddings)
    return classifier


def load_export(model_dir: str, shown: str | None = None) -> transformers.TFPreTrainedModel:
    """A fine-tuned classifier saved by trainer-train (RUN/export) or any save_pretrained TF classifier, whose
    config matches its weights, every one of them finite. `shown`: the directory as the user named it."""
    if not os.path.isdir(model_dir):
        raise UsageError(f"model directory {model_dir} does not exist: pass --model_dir=<run>/export")
    hub.check_weights(model_dir, tf_only=True)
    classifier = _from_h5(model_dir, None, new_head=False, shown=shown)
    if not weights_are_finite(classifier):
        raise UsageError(f"{shown or model_dir}/tf_model.h5 holds weights that are not finite (nan or inf): export "
                         "the model again from a run that did not diverge")
    return classifier


HEAD = {"classifier", "pre_classifier", "score"}


def _from_h5(model_dir: str, config, new_head: bool, shown: str | None = None):
    """from_pretrained on tf_model.h5, refusing in one line weights the config contradicts: every encoder weight
    must be there with the config's shape and no encoder weight may be left over; with `new_head` the
    classification head may be new or of another shape (a pretrained encoder), else it must load too."""
    fix = "restore the model's config.json, or save the model again with save_pretrained"
    where = f"{shown or model_dir}/config.json does not match its weights"
    try:
        classifier, info = transformers.TFAutoModelForSequenceClassification.from_pretrained(
            model_dir, config=config, ignore_mismatched_sizes=new_head, output_loading_info=True)
    except (ValueError, OSError, TypeError, KeyError) as e:
        raise UsageError(f"{where} ({hub.first_line(e)}): {fix}") from None
    prefix = classifier.base_model_prefix + "/"
    wrong = [f"{key} is missing" for key in info["missing_keys"] if not (new_head and key.split("/")[0] in HEAD)]
    wrong += [f"{key} has shape {list(found)}, the config says {list(wanted)}"
              for key, found, wanted in info["mismatched_keys"] if not (new_head and key.split("/")[0] in HEAD)]
    wrong += [f"{key} is not in the model the config describes" for key in info["unexpected_keys"]
              if key.startswith(prefix) or not new_head and "/" in key]
    if wrong:
        raise UsageError(f"{where} ({wrong[0]}{f', and {len(wrong) - 1} more' if len(wrong) > 1 else ''}): {fix}")
    return classifier


def _load_pytorch_safetensors(classifier, model_dir: str) -> None:
    from safetensors.numpy import load_file
    state = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            state.update(load_file(os.path.join(model_dir, name)))
    _, info = load_pytorch_state_dict_in_tf2_model(classifier, state, allow_missing_keys=True,
                                                   output_loading_info=True)
    head = {"classifier", "pre_classifier", "score"}
    missing = [k for k in info["missing_keys"] if k.split(".")[0] not in head]
    if missing:
        raise UsageError(f"{model_dir}: weights for {len(missing)} encoder tensors are missing "
                         f"(e.g. {missing[0]}): is it a {classifier.config.model_type} checkpoint?")
    logging.info("loaded %d tensors from %s; new: %s", len(state), model_dir, ", ".join(info["missing_keys"]))


def _freeze(classifier, freeze_encoder: bool, freeze_layers: int, freeze_embeddings: bool) -> None:
    """freeze_encoder: train only the head. freeze_layers=N: embeddings and the first N layers fixed.
    freeze_embeddings: the embedding layer (word, position, token-type, its LayerNorm) fixed."""
    encoder = getattr(classifier, classifier.base_model_prefix)
    if freeze_encoder:
        encoder.trainable = False
        return
    if freeze_layers:
        layers = encoder.encoder.layer
        if freeze_layers > len(layers):
            raise UsageError(f"--freeze_layers={freeze_layers} but the model has {len(layers)} layers")
        for layer in layers[:freeze_layers]:
            layer.trainable = False
    if freeze_layers or freeze_embeddings:
        encoder.embeddings.trainable = False


class LazyAdamWeightDecay(transformers.AdamWeightDecay):
    """AdamW whose sparse update (an embedding's gradient arrives as IndexedSlices) touches only the rows the
    batch used: their moments, their decoupled weight decay, their values. Dense variables are updated as by
    transformers' AdamWeightDecay. Rows a batch does not use keep their moments until they are used again
    (as LazyAdam in TensorFlow Addons): the cost of a step no longer grows with the vocabulary."""

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coefficients = ((apply_state or {}).get((var.device, var.dtype.base_dtype))
                        or self._fallback_apply_state(var.device, var.dtype.base_dtype))
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_rows = coefficients["beta_1_t"] * tf.gather(m, indices) + coefficients["one_minus_beta_1_t"] * grad
        v_rows = coefficients["beta_2_t"] * tf.gather(v, indices) + coefficients["one_minus_beta_2_t"] * grad * grad
        step = coefficients["lr"] * m_rows / (tf.sqrt(v_rows) + coefficients["epsilon"])
        if self._do_use_weight_decay(var.name):
            step += coefficients["lr_t"] * coefficients["weight_decay_rate"] * tf.gather(var, indices)
        return tf.group(m.scatter_update(tf.IndexedSlices(m_rows, indices)),
                        v.scatter_update(tf.IndexedSlices(v_rows, indices)),
                        var.scatter_sub(tf.IndexedSlices(step, indices)))


class ScaledSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a factor that a recovery from divergence lowers. The factor is the run's
    state (RUN/recoveries.json), not the checkpoints': a resume restores it from there."""

    def __init__(self, schedule, factor: float = 1.0):
        self.schedule = schedule
        self.factor = tf.Variable(factor, trainable=False, dtype=tf.float32, name="rate_factor")

    def __call__(self, step):
        return self.schedule(step) * self.factor

    def get_config(self):
        return {"schedule": tf_keras.optimizers.schedules.serialize(self.schedule), "factor": float(self.factor.numpy())}


def make_optimizer(*, learning_rate: float, warmup_ratio: float, weight_decay: float, embedding_update: str,
                   total_steps: int) -> transformers.AdamWeightDecay:
    """AdamW with transformers' schedule (linear warm-up, then linear decay to 0) times a factor recoveries lower:
    LazyAdamWeightDecay with embedding_update="lazy", else transformers' AdamWeightDecay (frozen embeddings get
    no gradient)."""
    warmup_steps = int(warmup_ratio * total_steps)
    schedule = tf_keras.optimizers.schedules.PolynomialDecay(learning_rate, total_steps - warmup_steps, 0.0)
    if warmup_steps:      # transformers.create_optimizer's schedule, without the optimizer it would build
        schedule = transformers.WarmUp(learning_rate, schedule, warmup_steps)
    kind = LazyAdamWeightDecay if embedding_update == "lazy" else transformers.AdamWeightDecay
    return kind(learning_rate=ScaledSchedule(schedule), weight_decay_rate=weight_decay, epsilon=1e-8,
                exclude_from_weight_decay=NO_WEIGHT_DECAY)


def rate_factor(classifier) -> tf.Variable:
    """The factor on the learning rate that recoveries from divergence lower."""
    return classifier.optimizer.learning_rate.factor


def compile_classifier(classifier, config: TrainConfig, total_steps: int) -> None:
    """AdamW, XLA, steps per call and the train step (micro-batches, clipping, the divergence bound): as every
    run and benchmark compiles. The step reads a batch's logits with packed.logits_of: an example per row, or
    a packed batch's examples (it has cls_index)."""
    optimizer = make_optimizer(learning_rate=config.learning_rate, warmup_ratio=config.warmup_ratio,
                               weight_decay=config.weight_decay, embedding_update=config.embedding_update,
                               total_steps=total_steps)
    classifier.compile(optimizer=optimizer, jit_compile=config.xla, steps_per_execution=config.steps_per_execution)
    on_tpu = isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)      # compiled in its scope
    classifier.optimizer_step = step_lib.OptimizerStep(classifier, step_lib.StepSettings(
        micro_batches=config.gradient_accumulation_steps, max_grad_norm=config.max_grad_norm,
        loss_upper_bound=config.loss_upper_bound, sparse_gradients=not on_tpu), packed.logits_of)
    classifier.train_step = classifier.optimizer_step.train_step


def build_and_compile(model_dir: str, label_names: list[str], config: TrainConfig, total_steps: int):
    """The classifier of a training run, compiled; call inside strategy.scope()."""
    classifier = build_classifier(model_dir, label_names, classifier_dropout=config.classifier_dropout,
                                  freeze_encoder=config.freeze_encoder, freeze_layers=config.freeze_layers,
                                  freeze_embeddings=config.embedding_update == "frozen")
    compile_classifier(classifier, config, total_steps)
    return classifier


def weights_are_finite(classifier) -> bool:
    """Every weight and every optimizer variable (AdamW's moments too) is finite: a checkpoint is sound only if
    everything in it is."""
    optimizer_variables = getattr(classifier.optimizer, "variables", [])
    optimizer_variables = optimizer_variables() if callable(optimizer_variables) else optimizer_variables
    return all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in [*classifier.weights, *optimizer_variables]
               if w.dtype.is_floating)


def total_steps(steps_per_epoch: int, config: TrainConfig) -> int:
    return int(min(config.max_steps or math.inf, config.epochs * steps_per_epoch))
