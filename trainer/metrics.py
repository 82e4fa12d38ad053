"""Classification metrics, and scoring a model on batches under any tf.distribute strategy.

Every replica sums its rows' loss and confusion counts, the sums are all-reduced, and the
metrics are computed from them: exact over the rows scored, equal on every worker (so every
worker of a multi-worker run takes the same decisions from them), and independent of Keras'
compiled metrics, which the training loop's running means need untouched.
"""
import numpy as np
import tensorflow as tf

from trainer import packed
from trainer.step import loss_fn


def classification_metrics(confusion: np.ndarray, label_names: list[str], loss_sum: float | None = None) -> dict:
    """Accuracy, precision/recall/F1 (of the class named `positive` when there are two classes and one is so
    named, else macro averages), macro F1, per-class figures, from a confusion matrix whose [i][j] counts rows
    of true class i predicted as j. A class never predicted or never present scores 0, not NaN. With
    loss_sum: the mean loss too."""
    confusion = np.asarray(confusion, dtype=np.int64)
    k = len(label_names)
    true_positives = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    positive = label_names.index("positive") if k == 2 and "positive" in label_names else None
    pick = (lambda v: float(v[positive])) if positive is not None else (lambda v: float(v.mean()))
    examples = int(confusion.sum())
    metrics = {
        "accuracy": float(true_positives.sum() / max(1, examples)),
        "precision": pick(precision),
        "recall": pick(recall),
        "f1": pick(f1),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(label_names, precision, recall, f1, actual)},
        "confusion_matrix": confusion.tolist(),
        "labels": list(label_names),
        "examples": examples,
    }
    if loss_sum is not None:
        metrics = {"loss": float(loss_sum / max(1, examples)), **metrics}
    return metrics


def confusion_of(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """[i][j]: how many rows of true class i were predicted as j."""
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return confusion


class Scorer:
    """Scores a classifier on (features, labels) batches, plain or packed (stream `pack` padding):
    one tf.function step (traced once per batch shape), reused by every evaluation."""

    def __init__(self, model, strategy: tf.distribute.Strategy, label_names: list[str], jit_compile: bool = False):
        self.model, self.strategy, self.label_names = model, strategy, list(label_names)
        num_labels = len(label_names)

        def step(features, labels):    # packed: logits [B, S, C], labels [B, S], -1 ignored
            labels, logits, weights = packed.per_example(labels, packed.logits_of(model, features))
            loss = tf.reduce_sum(loss_fn(labels, logits) * weights)
            predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
            confusion = tf.math.confusion_matrix(labels, predictions, num_classes=num_labels,
                                                 weights=weights, dtype=tf.float32)
            return loss, confusion

        step = tf.function(step, jit_compile=jit_compile or None, reduce_retracing=True, autograph=False)

        @tf.function(reduce_retracing=True, autograph=False)
        def distributed_step(batch):
            sums = strategy.run(step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

        self.distributed_step = distributed_step

    def score(self, distributed_dataset) -> dict:
        """Metrics (with `loss`) over every batch of a dataset already distributed by the strategy."""
        loss_sum, confusion = 0.0, np.zeros((len(self.label_names),) * 2)
        for batch in distributed_dataset:
            loss, counts = self.distributed_step(batch)
            loss_sum += float(loss)
            confusion += counts.numpy()
        return classification_metrics(np.rint(confusion), self.label_names, loss_sum)


def format_table(metrics: dict) -> str:
    names = metrics["labels"]
    width = max(10, *(len(n) for n in names))
    lines = [f"accuracy {metrics['accuracy']:.4f}   precision {metrics['precision']:.4f}   "
             f"recall {metrics['recall']:.4f}   f1 {metrics['f1']:.4f}   ({metrics['examples']} examples)",
             f"{'':{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} "
                     f"{row['support']:9d}")
    lines.append("confusion (rows: true, columns: predicted)")
    lines.append(f"{'':{width}} " + " ".join(f"{n:>9}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"{name:{width}} " + " ".join(f"{c:9d}" for c in row))
    return "\n".join(lines)
