"""Build a tiny BERT (2 layers, hidden 32, random weights) with a WordPiece vocabulary built from a
Sentiment140 CSV's texts (the same texts give the same vocabulary), saved like a pretrained model: the
offline demo's model.

  python -m trainer.cli.tiny_bert --output_dir=runs/demo/tiny-bert --texts=../shared/data/sentiment140_sample.csv
"""
import dataclasses

from trainer import cli
from trainer.config import Checked, SourceConfig, setting


@dataclasses.dataclass(frozen=True)
class TinyBertConfig(Checked):
    output_dir: str | None = setting(None, "Where to write the model.", required=True)
    texts: str | None = setting(None, "A Sentiment140 CSV whose texts the vocabulary is built from.", required=True)
    vocab_size: int = setting(2000, "WordPiece vocabulary size.", lower=100)


def _main(config: TinyBertConfig, arguments) -> None:
    from trainer import storage, tiny_bert
    from trainer.data import readers
    storage.check_no_overlap(config.output_dir, "--output_dir", {"--texts": config.texts})
    storage.check_writable(config.output_dir, "--output_dir", "dir")
    rows = readers.read_rows(SourceConfig(input=config.texts), readers.ReadStats())
    tiny_bert.build(config.output_dir, (text for text, _ in rows), vocab_size=config.vocab_size)
    print(f"tiny BERT written to {config.output_dir}")


if __name__ == "__main__":
    cli.run(TinyBertConfig, _main, __doc__)
