"""Quality bar: fine-tune all-MiniLM-L6-v2 on the shared Sentiment140 sample and report held-out test accuracy.

  python -m benchmarks.finetune_quality [--batch_tokens=2048 --embedding_update=lazy --learning_rate=...]

80/10/10 split (seed 42), max_length 64, bucket padding, the configs/cpu_finetune.cfg settings (every
other setting the trainer's default), one CPU device; the exported weights (the best by validation
accuracy, validated every epoch unless --eval_every_steps) score the test split. Target: >= 83%.
Writes OUTPUT_DIR/quality.json.
"""
import dataclasses
import json
import os
import time

from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (Keras 2 for transformers, before TensorFlow)

_DATA = flags.DEFINE_string("data", SAMPLE_CSV, "Sentiment140 CSV.")
_MODEL = flags.DEFINE_string("model", MINILM, "Pretrained model.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/quality", "Prepared data and the training run go here.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate.")
_BATCH = flags.DEFINE_integer("per_replica_batch_size", 32, "Rows per step (one device), unless --batch_tokens.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", None, "Token-sized batches: padded tokens per step.")
_EMBEDDING_UPDATE = flags.DEFINE_string("embedding_update", None, "dense, lazy or frozen (default: the trainer's).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every_steps", None, "Validation interval (default: every epoch).")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of the split and of training.")
FLAGS = flags.FLAGS
TARGET = 0.83


def _main(config, arguments):
    del config, arguments
    from trainer import runtime
    from trainer.config import PrepareConfig, TrainConfig
    from trainer.data import prepare
    data_dir = os.path.join(_OUTPUT_DIR.value, "data")
    manifest = prepare.prepare(PrepareConfig(input=_DATA.value, output_dir=data_dir, model=_MODEL.value, max_length=64,
                                             seed=_SEED.value))
    overrides = {"embedding_update": _EMBEDDING_UPDATE.value} if _EMBEDDING_UPDATE.value else {}
    config = TrainConfig(
        data_dir=data_dir, model=_MODEL.value, output_dir=os.path.join(_OUTPUT_DIR.value, "train"),
        strategy="one_device", per_replica_batch_size=_BATCH.value, batch_tokens=_BATCH_TOKENS.value,
        epochs=_EPOCHS.value, learning_rate=_LEARNING_RATE.value, warmup_ratio=0.1, weight_decay=0.01,
        padding="bucket", mixed_precision="none", seed=_SEED.value, log_every_steps=50, checkpoint_every_steps=500,
        eval_every_steps=_EVAL_EVERY.value, overwrite_output_dir=True, **overrides)
    runtime.import_tensorflow()
    from trainer import train
    start = time.time()
    stats = train.run(config)
    minutes = (time.time() - start) / 60
    result = {"test_accuracy": stats["accuracy"], "test_f1": stats["f1"], "target": TARGET,
              "met": stats["accuracy"] >= TARGET, "train_minutes": round(minutes, 1), "best": stats.get("best"),
              "global_step": stats["global_step"], "train_rows": manifest["splits"]["train"],
              "test_rows": manifest["splits"]["test"], "cpus": os.cpu_count(),
              "examples_per_sec": stats.get("examples_per_sec"), "padding_efficiency": stats["padding_efficiency"],
              "settings": {k: v for k, v in dataclasses.asdict(config).items()
                           if k in ("epochs", "learning_rate", "per_replica_batch_size", "batch_tokens",
                                    "embedding_update", "eval_every_steps", "seed")}}
    with open(os.path.join(_OUTPUT_DIR.value, "quality.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"test accuracy {stats['accuracy']:.4f} (target >= {TARGET}): {'MET' if result['met'] else 'MISSED'}; "
          f"{minutes:.1f} min on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    run(_main, __doc__)
