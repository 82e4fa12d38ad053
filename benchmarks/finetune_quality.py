"""Quality bar: fine-tune all-MiniLM-L6-v2 on the shared Sentiment140 sample with the configs/cpu_finetune.cfg
preset and report held-out test accuracy.

  python -m benchmarks.finetune_quality [--mixed_precision=auto --batch_tokens=2048 --output_dir=runs/quality]

80/10/10 split (seed 42), max_length 64; the training run is the preset's flags, then these overrides, parsed as
trainer-train parses them (every other setting the trainer's default); the exported weights score the test
split. Target: >= 83%. Compare precisions with two runs (--mixed_precision=none and =auto, different
--output_dir): a 2,000-tweet test split moves +-1.7 points. Writes OUTPUT_DIR/quality.json.
"""
import json
import os
import time

from absl import flags

from benchmarks import MINILM, SAMPLE_CSV, run

import trainer  # noqa: F401  (Keras 2 for transformers, before TensorFlow)

PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu_finetune.cfg")
_DATA = flags.DEFINE_string("data", SAMPLE_CSV, "Sentiment140 CSV.")
_MODEL = flags.DEFINE_string("model", MINILM, "Pretrained model.")
_PRESET = flags.DEFINE_string("preset", PRESET, "The trainer flag file the run starts from.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/quality", "Prepared data and the training run go here.")
_PRECISION = flags.DEFINE_enum("mixed_precision", None, ["auto", "none", "fp16", "bf16"], "Default: the preset's.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", None, "Token-sized batches: padded tokens per step.",
                                     lower_bound=8)
_EMBEDDING_UPDATE = flags.DEFINE_enum("embedding_update", None, ["lazy", "dense", "frozen"], "Default: the preset's.")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of the split and of training.")
FLAGS = flags.FLAGS
TARGET = 0.83


def preset_config(**overrides):
    """The preset's TrainConfig with `overrides` (None: not given) after it, as trainer-train parses its flags."""
    from trainer import cli
    from trainer.config import TrainConfig
    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, fv)
    cli.check_flagfiles([f"--flagfile={_PRESET.value}"])
    fv(["finetune_quality", f"--flagfile={_PRESET.value}",
        *(f"--{name}={value}" for name, value in overrides.items() if value is not None)])
    return cli.config_from_flags(TrainConfig, fv)


def _main(config, arguments):
    del config, arguments
    from trainer import runtime
    from trainer.config import PrepareConfig
    from trainer.data import prepare
    data_dir = os.path.join(_OUTPUT_DIR.value, "data")
    manifest = prepare.prepare(PrepareConfig(input=_DATA.value, output_dir=data_dir, model=_MODEL.value, max_length=64,
                                             seed=_SEED.value))
    config = preset_config(data_dir=data_dir, model=_MODEL.value, output_dir=os.path.join(_OUTPUT_DIR.value, "train"),
                           seed=_SEED.value, mixed_precision=_PRECISION.value, batch_tokens=_BATCH_TOKENS.value,
                           embedding_update=_EMBEDDING_UPDATE.value, overwrite_output_dir=True)
    runtime.import_tensorflow()
    from trainer import train
    start = time.time()
    stats = train.run(config)
    minutes = (time.time() - start) / 60
    result = {"test_accuracy": stats["accuracy"], "test_f1": stats["f1"], "target": TARGET,
              "met": stats["accuracy"] >= TARGET, "mixed_precision": stats.get("mixed_precision"),
              "train_minutes": round(minutes, 1), "best": stats.get("best"), "global_step": stats["global_step"],
              "train_rows": manifest["splits"]["train"], "test_rows": manifest["splits"]["test"],
              "cpus": os.cpu_count(), "examples_per_sec": stats.get("examples_per_sec"),
              "padding_efficiency": stats["padding_efficiency"], "preset": _PRESET.value,
              "overrides": {k: v for k, v in (("mixed_precision", _PRECISION.value), ("batch_tokens", _BATCH_TOKENS.value),
                                              ("embedding_update", _EMBEDDING_UPDATE.value)) if v is not None}}
    with open(os.path.join(_OUTPUT_DIR.value, "quality.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"test accuracy {stats['accuracy']:.4f} (target >= {TARGET}): {'MET' if result['met'] else 'MISSED'}; "
          f"{minutes:.1f} min on {os.cpu_count()} CPUs, {result['mixed_precision']}")


if __name__ == "__main__":
    run(_main, __doc__)
