r"""trainer-evaluate: a fine-tuned model's metrics on a prepared split, or on a raw file.

  trainer-evaluate --model_dir=RUN/export --data_dir=DATA --split=test
  trainer-evaluate --model_dir=RUN/export --input=testdata.manual.2009.06.14.csv --format=sentiment140

A raw file is tokenized with the model's tokenizer on the fly (neutral rows dropped). --output also
writes the metrics as JSON.
"""
from trainer import cli
from trainer.config import EvaluateConfig


def _main(config: EvaluateConfig, arguments) -> None:
    from trainer import checks, runtime
    inputs = checks.for_evaluate(config)
    runtime.import_tensorflow()
    from trainer import evaluate, metrics
    result = evaluate.evaluate(config, inputs)
    print(metrics.format_table(result))
    if config.output:
        print(f"wrote {config.output}")


def main():
    cli.run(EvaluateConfig, _main, __doc__)


if __name__ == "__main__":
    main()
