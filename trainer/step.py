"""One optimizer step, whatever the hardware (the recipe is the global batch, not the device count):

  the step's rows, as the unaccumulated plan gives them, in K micro-batches per replica
  each micro-batch: forward, loss summed over its examples, backward -> accumulated
  all-reduce -> divide by the step's examples -> unscale (fp16) -> global norm -> clip -> AdamW

`OptimizerStep.train_step` is the classifier's Keras `train_step` (model.compile_classifier): `fit` calls it,
steps_per_execution steps per call, under any strategy. It adds what the steps did to running sums that the
loop reads, and empties, only at its boundaries (`read_and_reset`): nothing makes the host wait for a step.
"""
import dataclasses
import math

import tensorflow as tf
import tf_keras

SUMS = ("loss", "correct", "examples", "grad_norm", "normed_steps", "clipped", "steps")
DIVERGENCES = {1: "the loss became non-finite", 2: "the loss passed --loss_upper_bound",
               3: "the gradient became non-finite"}


@dataclasses.dataclass(frozen=True)
class StepSettings:
    micro_batches: int = 1               # K: micro-batches per replica and optimizer step
    max_grad_norm: float = 0.0           # clip the global gradient norm to this; 0: never
    loss_upper_bound: float = math.inf   # a step whose mean loss is above this has diverged
    sparse_gradients: bool = True        # False (TPU): embedding gradients made dense, every shape static


def loss_fn(labels, logits):
    """Cross-entropy in float32, whatever precision the logits come in (fp16 logits overflow the loss)."""
    return tf_keras.losses.sparse_categorical_crossentropy(labels, tf.cast(logits, tf.float32), from_logits=True)


def logits_of(model, features, training: bool):
    """The classifier's logits of a batch of rows, one example per row ([rows, labels])."""
    return model(features, training=training).logits


class OptimizerStep:
    """The classifier's train step (see the module's docstring). Batches come as `fit` gives them: features
    [K, rows, length] and labels [K, rows] (a batch without the K axis is one micro-batch); a label below 0 marks
    a slot that holds no example (a packed row's unused segment). `forward(model, features, training)` gives
    logits shaped like the labels plus the classes."""

    def __init__(self, model, settings: StepSettings, forward=logits_of):
        self.model, self.settings, self.forward = model, settings, forward
        sync, first = tf.VariableSynchronization.ON_READ, tf.VariableAggregation.ONLY_FIRST_REPLICA
        # Every sum is of all-reduced values, the same on every replica: each keeps its own copy, read from one.
        self.sums = {name: tf.Variable(0.0, trainable=False, synchronization=sync, aggregation=first,
                                       name=f"step_{name}") for name in SUMS}
        self.first_bad = {name: tf.Variable(0, trainable=False, synchronization=sync, aggregation=first,
                                            name=f"first_bad_{name}") for name in ("step", "kind")}   # 0: none

    def read_and_reset(self) -> dict:
        """What the steps since the last read did (host values), and empty the sums."""
        read = {name: float(variable.numpy()) for name, variable in self.sums.items()}
        step, kind = (int(variable.numpy()) for variable in self.first_bad.values())
        read["divergence"] = (step, DIVERGENCES[kind]) if step else None
        for variable in (*self.sums.values(), *self.first_bad.values()):
            variable.assign(tf.zeros_like(variable))
        return read

    @tf.autograph.experimental.do_not_convert     # plain graph code: AutoGraph would only re-parse HF's layers
    def train_step(self, data):
        features, labels = data
        if tf.nest.flatten(features)[0].shape.rank == 2:    # [rows, length]: one micro-batch, without the K axis
            features, labels = tf.nest.map_structure(lambda t: t[None], (features, labels))
        optimizer, variables = self.model.optimizer, self.model.trainable_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        slots = tf.cast(tf.size(labels) * replicas, tf.float32)     # the step's label slots, on every replica
        sums, grads = self._accumulate(features, labels, variables, slots)
        present = [i for i, g in enumerate(grads) if g is not None]      # frozen by use: no gradient
        context = tf.distribute.get_replica_context()
        (loss, correct, examples), reduced = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                                                (sums, [grads[i] for i in present]))
        grads = [_scaled(g, slots / examples) for g in reduced]          # the mean over the step's examples
        variables = [variables[i] for i in present]
        if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
            grads = optimizer.get_unscaled_gradients(grads)
        grads = [_deduplicated(g) for g in grads]           # a sparse gradient's norm counts each row once
        norm = tf.linalg.global_norm(grads)
        if self.settings.max_grad_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.settings.max_grad_norm, use_norm=norm)
        applied = optimizer.apply_gradients(zip(grads, variables), experimental_aggregate_gradients=False)
        with tf.control_dependencies([applied]):
            self._record(loss, correct, examples, norm, optimizer.iterations.read_value())
        window = {name: variable.read_value() for name, variable in self.sums.items()}
        return {"loss": window["loss"] / tf.maximum(window["examples"], 1.0),
                "accuracy": window["correct"] / tf.maximum(window["examples"], 1.0)}

    def _micro_batch(self, features, labels, variables, slots):
        """(loss sum, correct, examples) of one micro-batch and the gradient of its loss sum / slots."""
        optimizer = self.model.optimizer
        mask = tf.cast(labels >= 0, tf.float32)
        labels = tf.maximum(labels, 0)
        with tf.GradientTape() as tape:
            logits = self.forward(self.model, features, training=True)
            loss = tf.reduce_sum(loss_fn(labels, logits) * mask)
            objective = loss / slots
            if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
                objective = optimizer.get_scaled_loss(objective)      # one scale for the whole step
        grads = tape.gradient(objective, variables)
        if not self.settings.sparse_gradients:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(predicted == labels, tf.float32) * mask)
        return [loss, correct, tf.reduce_sum(mask)], grads

    def _accumulate(self, features, labels, variables, slots):
        """Sums and gradients over the K micro-batches: the first traced alone (its gradients' kinds, dense or
        sparse, set the accumulators'), the others in a loop that holds one micro-batch's activations at a time.
        Sparse gradients (embedding rows) stay sparse: their rows are gathered, never added into a dense table."""
        sums, grads = self._micro_batch(tf.nest.map_structure(lambda t: t[0], features), labels[0], variables, slots)
        count = self.settings.micro_batches
        if count == 1:
            return sums, grads
        sparse = {i: (tf.TensorArray(g.values.dtype, size=count, element_shape=g.values.shape).write(0, g.values),
                      tf.TensorArray(g.indices.dtype, size=count, element_shape=g.indices.shape).write(0, g.indices))
                  for i, g in enumerate(grads) if isinstance(g, tf.IndexedSlices)}
        dense = {i: g for i, g in enumerate(grads) if g is not None and i not in sparse}

        def body(k, sums, dense, sparse):
            more_sums, more = self._micro_batch(tf.nest.map_structure(lambda t: t[k], features), labels[k],
                                                variables, slots)
            sums = [a + b for a, b in zip(sums, more_sums)]
            dense = {i: g + more[i] for i, g in dense.items()}
            sparse = {i: (values.write(k, more[i].values), indices.write(k, more[i].indices))
                      for i, (values, indices) in sparse.items()}
            return k + 1, sums, dense, sparse

        _, sums, dense, sparse = tf.while_loop(lambda k, *_: k < count, body, (tf.constant(1), sums, dense, sparse),
                                               parallel_iterations=1)   # else several micro-batches run at once
        return sums, [dense[i] if i in dense else tf.IndexedSlices(
            sparse[i][0].concat(), sparse[i][1].concat(), grads[i].dense_shape) if i in sparse else None
            for i in range(len(grads))]

    def _record(self, loss, correct, examples, norm, step):
        finite = tf.math.is_finite(norm)
        added = {"loss": loss, "correct": correct, "examples": examples, "grad_norm": tf.where(finite, norm, 0.0),
                 "normed_steps": tf.cast(finite, tf.float32), "steps": 1.0,
                 "clipped": tf.cast(finite & (norm > self.settings.max_grad_norm), tf.float32)
                 if self.settings.max_grad_norm else 0.0}
        for name, value in added.items():
            self.sums[name].assign_add(value)
        mean = loss / tf.maximum(examples, 1.0)
        scaled = isinstance(self.model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
        # Under fp16 a non-finite gradient is an overflow: the step is skipped and the scale lowered, no divergence.
        kind = tf.where(~tf.math.is_finite(mean), 1, tf.where(mean > self.settings.loss_upper_bound, 2,
                                                              tf.where(tf.logical_or(finite, scaled), 0, 3)))
        first = (kind > 0) & (self.first_bad["step"] == 0)
        self.first_bad["kind"].assign(tf.where(first, kind, self.first_bad["kind"]))
        self.first_bad["step"].assign(tf.where(first, tf.cast(step, tf.int32), self.first_bad["step"]))


def _scaled(grad, factor):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


def _deduplicated(grad):
    """A sparse gradient with each row once (duplicates summed), as the optimizer applies it."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    rows, positions = tf.unique(grad.indices)
    return tf.IndexedSlices(tf.math.unsorted_segment_sum(grad.values, positions, tf.shape(rows)[0]), rows,
                            grad.dense_shape)
