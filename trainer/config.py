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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """trainer-train: fine-tune `model` on the prepared `data_dir`; everything lands in `output_dir`."""
    data_dir: str
    model: str
    output_dir: str
    strategy: str = "auto"
    tpu: str | None = None
    num_gpus: int | None = None
    per_replica_batch_size: int = 32
    epochs: int = 2
    max_steps: int | None = None
    max_train_examples: int | None = None
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    padding: str = "bucket"
    max_length: int | None = None          # default: the prepared data's
    pad_to_multiple_of: int | None = None
    mixed_precision: str = "auto"
    xla: bool = False
    steps_per_execution: int = 1
    freeze_encoder: bool = False
    freeze_layers: int = 0
    classifier_dropout: float | None = None
    seed: int = 42
    log_every_steps: int = 50
    profile_steps: tuple[int, int] | None = None
    checkpoint_every_steps: int = 500
    overwrite_output_dir: bool = False
