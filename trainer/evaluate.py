"""Metrics of a classifier on a prepared split or a raw file; trainer-evaluate.

  trainer-evaluate --model_dir=RUN/export --data_dir=DATA --split=test
  trainer-evaluate --model_dir=RUN/export --input=testdata.manual.2009.06.14.csv --format=sentiment140
"""
import os
import tempfile

import datasets
import numpy as np

from trainer import cli, files
from trainer import flags as trainer_flags
from trainer.cli import UsageError
from trainer.data import stream as stream_lib


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, precision/recall/F1 (of `positive` for two classes, else macro), confusion matrix.

    confusion_matrix[i][j] counts rows of true class i predicted as j.
    """
    k = len(label_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positives = np.diag(confusion).astype(float)
    precision = np.divide(true_positives, confusion.sum(axis=0), out=np.zeros(k), where=confusion.sum(axis=0) > 0)
    recall = np.divide(true_positives, confusion.sum(axis=1), out=np.zeros(k), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    positive = label_names.index("positive") if k == 2 and "positive" in label_names else None
    pick = (lambda v: float(v[positive])) if positive is not None else (lambda v: float(v.mean()))
    return {
        "accuracy": float(true_positives.sum() / max(1, confusion.sum())),
        "precision": pick(precision),
        "recall": pick(recall),
        "f1": pick(f1),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(label_names, precision, recall, f1, confusion.sum(axis=1))},
        "confusion_matrix": confusion.tolist(),
        "labels": list(label_names),
        "examples": int(confusion.sum()),
    }


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


def evaluate_split(model, tokenizer, split: datasets.Dataset, *, global_batch_size: int, max_length: int,
                   label_names: list[str]) -> dict:
    """Predict every row of `split` (bucket padding, nothing dropped) and score it."""
    s = stream_lib.stream(split, model, tokenizer, global_batch_size=global_batch_size, padding="bucket",
                          max_length=max_length)
    logits = model.predict(s.dataset.map(lambda features, labels: features), verbose=0)["logits"]
    labels = np.asarray(split.with_format("numpy")["label"])[s.plan.rows]
    return classification_metrics(labels, np.asarray(logits).argmax(axis=-1), label_names)


def check_labels(data_labels: list[str], model_labels: list[str], where: str) -> None:
    if list(data_labels) != list(model_labels):
        raise UsageError(f"{where} has labels {data_labels} but the model's head has {model_labels}: "
                         "prepare the data with the same label set (e.g. without --keep_neutral)")


def _main(argv):
    del argv
    from trainer import hub, model as model_lib
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    fv = trainer_flags.FLAGS
    classifier = model_lib.load_export(fv.model_dir)
    tokenizer = hub.load_tokenizer(fv.model_dir)
    model_labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    with tempfile.TemporaryDirectory() as tmp:
        if fv.input:
            source = trainer_flags.source_from_flags(fv)
            max_length = min(fv.max_length, hub.max_positions(classifier.config) or fv.max_length)
            manifest = prepare.prepare(PrepareConfig(source=source, output_dir=os.path.join(tmp, "data"),
                                                     model=fv.model_dir, max_length=max_length, split_name=fv.split))
            data_dir = os.path.join(tmp, "data")
            print(f"read {manifest['rows_read']} rows, kept {manifest['rows_kept']}, dropped {manifest['dropped']}")
        else:
            data_dir = fv.data_dir
        dataset = prepare.load(data_dir)
        if fv.split not in dataset:
            raise UsageError(f"{data_dir} has no split {fv.split!r} (it has {', '.join(dataset)}): pass --split")
        split = dataset[fv.split]
        check_labels(split.features["label"].names, model_labels, data_dir if not fv.input else fv.input)
        max_length = int(max(stream_lib.lengths_of(split), default=1))
        metrics = evaluate_split(classifier, tokenizer, split, global_batch_size=fv.batch_size,
                                 max_length=max_length, label_names=model_labels)
    print(format_table(metrics))
    if fv.output:
        files.write_json(fv.output, metrics)
        print(f"wrote {fv.output}")


def main():
    trainer_flags.define_evaluate_flags()
    cli.run(_main)


if __name__ == "__main__":
    main()
