"""Frozen configs, built once from flags by each entry point's main; library code takes these, never FLAGS."""
import dataclasses

from trainer.data.readers import Source


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """trainer-prepare: one raw file -> a tokenized DatasetDict on disk."""
    source: Source
    output_dir: str
    model: str                      # whose tokenizer: hub id or local directory
    max_length: int = 128
    splits: tuple[float, ...] = (0.8, 0.1, 0.1)
    split_name: str | None = None   # put the whole file in this one split
    seed: int = 42
    num_proc: int | None = None
    keep_neutral: bool = False
    overwrite: bool = False

    def split_fractions(self) -> dict[str, float]:
        if self.split_name:
            return {self.split_name: 1.0}
        names = ("train", "validation", "test")
        return {name: f for name, f in zip(names, self.splits) if f > 0}
