"""Quality bar: fine-tune all-MiniLM-L6-v2 on the shared Sentiment140 sample and report test accuracy.

  python -m benchmarks.finetune_quality [--epochs=2 --learning_rate=5e-5 ...]

80/10/10 split (seed 42), max_length 64, bucket padding, the configs/cpu_finetune.cfg settings,
CPU. Target: >= 83% accuracy on the held-out test split. Writes OUTPUT_DIR/quality.json.
"""
import json
import os
import time

from absl import app, flags

from benchmarks import MINILM, SAMPLE_CSV

import trainer  # noqa: F401  (Keras 2 for transformers, before TensorFlow)
from trainer import train
from trainer.config import PrepareConfig, TrainConfig
from trainer.data import prepare, readers

_DATA = flags.DEFINE_string("data", SAMPLE_CSV, "Sentiment140 CSV.")
_MODEL = flags.DEFINE_string("model", MINILM, "Pretrained model.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/quality", "Prepared data and the training run go here.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate.")
_BATCH = flags.DEFINE_integer("per_replica_batch_size", 32, "Batch size (one device).")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of the split and of training.")
TARGET = 0.83


def main(argv):
    del argv
    data_dir = os.path.join(_OUTPUT_DIR.value, "data")
    manifest = prepare.prepare(PrepareConfig(source=readers.Source(_DATA.value), output_dir=data_dir,
                                             model=_MODEL.value, max_length=64, seed=_SEED.value))
    start = time.time()
    stats = train.run(TrainConfig(
        data_dir=data_dir, model=_MODEL.value, output_dir=os.path.join(_OUTPUT_DIR.value, "train"),
        strategy="one_device", per_replica_batch_size=_BATCH.value, epochs=_EPOCHS.value,
        learning_rate=_LEARNING_RATE.value, warmup_ratio=0.1, weight_decay=0.01, padding="bucket",
        mixed_precision="none", seed=_SEED.value, log_every_steps=50, checkpoint_every_steps=500,
        overwrite_output_dir=True))
    minutes = (time.time() - start) / 60
    result = {"test_accuracy": stats["accuracy"], "test_f1": stats["f1"], "target": TARGET,
              "met": stats["accuracy"] >= TARGET, "train_minutes": round(minutes, 1),
              "train_rows": manifest["splits"]["train"], "test_rows": manifest["splits"]["test"],
              "epochs": _EPOCHS.value, "learning_rate": _LEARNING_RATE.value, "cpus": os.cpu_count(),
              "examples_per_sec": stats.get("examples_per_sec"), "padding_efficiency": stats["padding_efficiency"]}
    with open(os.path.join(_OUTPUT_DIR.value, "quality.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"test accuracy {stats['accuracy']:.4f} (target >= {TARGET}): {'MET' if result['met'] else 'MISSED'}; "
          f"{minutes:.1f} min on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    app.run(main)
