r"""trainer-train: fine-tune a pretrained BERT on data made by trainer-prepare.

  trainer-train --flagfile=configs/cpu_finetune.cfg --data_dir=data/s140 --model=bert-base-uncased \
    --output_dir=runs/s140

Rerunning the same command with the same --output_dir resumes an unfinished run. Presets are flag
files in configs/; flags after --flagfile override them.
"""
import json

from trainer import cli
from trainer.config import TrainConfig

SUMMARY = ("global_step", "examples_seen", "padding_efficiency", "train_seconds", "best", "exported", "worker",
           "weights_sha256")


def _main(config: TrainConfig, arguments) -> None:
    from trainer import checks, runtime
    inputs = checks.for_train(config)
    runtime.import_tensorflow()
    from trainer import metrics, train
    stats = train.run(config, inputs)
    if "accuracy" in stats:
        print(metrics.format_table(stats))
    print(json.dumps({k: stats[k] for k in SUMMARY if k in stats}))


def main():
    cli.run(TrainConfig, _main, __doc__)


if __name__ == "__main__":
    main()
