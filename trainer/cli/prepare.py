r"""trainer-prepare: a raw file -> a tokenized, split DatasetDict with manifest.json (a local directory or gs://).

  trainer-prepare --input=training.1600000.processed.noemoticon.csv --model=bert-base-uncased \
    --max_length=64 --output_dir=data/s140

The input is a Sentiment140 CSV, or a CSV/TSV/JSONL of text + label (--format, --text_column,
--label_column). A rerun with the same inputs and settings reuses what is on disk.
"""
import json

from trainer import cli
from trainer.config import PrepareConfig


def _main(config: PrepareConfig, arguments) -> None:
    from trainer.data import prepare
    manifest = prepare.prepare(config)
    print(json.dumps({k: manifest[k] for k in ("rows_read", "rows_kept", "dropped", "splits")}))
    print(f"{'reused' if manifest.get('reused') else 'prepared'} {config.output_dir}")


def main():
    cli.run(PrepareConfig, _main, __doc__)


if __name__ == "__main__":
    main()
