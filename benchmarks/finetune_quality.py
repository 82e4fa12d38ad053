"""Quality bar: fine-tune all-MiniLM-L6-v2 on the shared Sentiment140 sample with the configs/cpu_finetune.cfg
preset and report held-out test accuracy.

  python -m benchmarks.finetune_quality [--mixed_precision=auto --batch_tokens=2048 --output_dir=runs/quality]

80/10/10 split (seed 42), max_length 64; the training run is the preset's flags, then these overrides, parsed as
trainer-train parses them (every other setting the trainer's default); the exported weights score the test
split (the README states the target). Compare precisions with two runs (--mixed_precision=none and =auto, different
--output_dir): a 2,000-tweet test split moves +-1.7 points. Writes OUTPUT_DIR/quality.json.
"""
import json
import os
import time

from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (Keras 2 for transformers, before TensorFlow)

PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu_finetune.cfg")
flags.DEFINE_string("data", SAMPLE_CSV, "Sentiment140 CSV.")
flags.DEFINE_string("model", MINILM, "Pretrained model.")
flags.DEFINE_string("preset", PRESET, "The trainer flag file the run starts from.")
flags.DEFINE_string("output_dir", "runs/quality", "Prepared data and the training run go here.")
flags.DEFINE_enum("mixed_precision", None, ["auto", "none", "fp16", "bf16"], "Default: the preset's.")
flags.DEFINE_integer("batch_tokens", None, "Token-sized batches: padded tokens per step.", lower_bound=8)
flags.DEFINE_enum("embedding_update", None, ["lazy", "dense", "frozen"], "Default: the preset's.")
flags.DEFINE_enum("padding", None, ["max_length", "batch", "bucket", "pack"], "Default: the preset's.")
flags.DEFINE_integer("seed", 42, "Seed of the split and of training.")
FLAGS = flags.FLAGS


def preset_config(**overrides):
    """The preset's TrainConfig with `overrides` (None: not given) after it, as trainer-train parses its flags."""
    from trainer import cli
    from trainer.config import TrainConfig
    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, fv)
    cli.check_flagfiles([f"--flagfile={FLAGS.preset}"])
    fv(["finetune_quality", f"--flagfile={FLAGS.preset}",
        *(f"--{name}={value}" for name, value in overrides.items() if value is not None)])
    return cli.config_from_flags(TrainConfig, fv)


def _main(config, arguments):
    del config, arguments
    from trainer import runtime
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    data_dir = os.path.join(FLAGS.output_dir, "data")
    manifest = prepare.prepare(PrepareConfig(input=FLAGS.data, output_dir=data_dir, model=FLAGS.model, max_length=64,
                                             seed=FLAGS.seed))
    config = preset_config(data_dir=data_dir, model=FLAGS.model, output_dir=os.path.join(FLAGS.output_dir, "train"),
                           seed=FLAGS.seed, mixed_precision=FLAGS.mixed_precision, batch_tokens=FLAGS.batch_tokens,
                           embedding_update=FLAGS.embedding_update, padding=FLAGS.padding, overwrite_output_dir=True)
    runtime.import_tensorflow()
    from trainer import train
    start = time.time()
    stats = train.run(config)
    minutes = (time.time() - start) / 60
    result = {"test_accuracy": stats["accuracy"], "test_f1": stats["f1"], "mixed_precision": stats.get("mixed_precision"),
              "train_minutes": round(minutes, 1), "best": stats.get("best"), "global_step": stats["global_step"],
              "train_rows": manifest["splits"]["train"], "test_rows": manifest["splits"]["test"],
              "cpus": os.cpu_count(), "examples_per_sec": stats.get("examples_per_sec"),
              "padding_efficiency": stats["padding_efficiency"], "preset": FLAGS.preset,
              "examples_seen": stats["examples_seen"],
              "overrides": {k: v for k, v in (("mixed_precision", FLAGS.mixed_precision), ("batch_tokens", FLAGS.batch_tokens),
                                              ("embedding_update", FLAGS.embedding_update), ("padding", FLAGS.padding))
                            if v is not None}}
    with open(os.path.join(FLAGS.output_dir, "quality.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"test accuracy {stats['accuracy']:.4f}; {minutes:.1f} min on {os.cpu_count()} CPUs, "
          f"{result['mixed_precision']}")


if __name__ == "__main__":
    run(_main, __doc__)
