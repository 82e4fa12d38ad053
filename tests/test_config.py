"""The configs check every value on construction: finite numbers, bounds, choices, plain names, cross-field rules."""
import pytest

from trainer.config import EvaluateConfig, PrepareConfig, TrainConfig
from trainer.errors import UsageError

TRAIN = dict(data_dir="d", model="m", output_dir="o")
PREPARE = dict(input="x.csv", output_dir="o", model="m")


@pytest.mark.parametrize("overrides, message", [
    ({"per_replica_batch_size": 0}, "per_replica_batch_size=0: must be >= 1"),
    ({"epochs": 0}, "epochs"),
    ({"max_steps": 0}, "max_steps"),
    ({"learning_rate": 0.0}, "learning_rate=0.0: must be in"),
    ({"learning_rate": float("inf")}, "learning_rate=inf: must be a finite number"),
    ({"learning_rate": 1e39}, "must be a finite number"),          # inf once TensorFlow holds it in float32
    ({"warmup_ratio": float("nan")}, "warmup_ratio=nan: must be a finite number"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"weight_decay": float("nan")}, "weight_decay=nan"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"classifier_dropout": float("nan")}, "classifier_dropout=nan"),
    ({"classifier_dropout": 1.5}, "classifier_dropout"),
    ({"padding": "dynamic"}, "padding=dynamic: must be one of"),
    ({"strategy": "horovod"}, "strategy"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"max_length": 4}, "max_length"),
    ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
    ({"pad_to_multiple_of": 128, "max_length": 64}, "pad_to_multiple_of=128 is above --max_length=64"),
    ({"steps_per_execution": 0}, "steps_per_execution"),
    ({"profile_steps": (9, 3)}, "START,STOP"),
    ({"freeze_encoder": True, "freeze_layers": 2}, "exclude each other"),
    ({"freeze_layers": -1}, "freeze_layers"),
    ({"seed": -1}, "seed=-1: must be in \\[0, 4294967295\\]"),
    ({"seed": 2**32}, "seed"),
    ({"num_gpus": 0}, "num_gpus"),
    ({"strategy": "mirrored", "tpu": "x"}, "--tpu goes with --strategy=tpu"),
    ({"batch_tokens": 4096, "padding": "batch"}, "--batch_tokens sizes bucket or packed batches"),
    ({"gradient_accumulation_steps": 0}, "--gradient_accumulation_steps=0: must be >= 1"),
    ({"max_grad_norm": -1.0}, "--max_grad_norm=-1.0: must be >= 0.0"),
    ({"max_grad_norm": float("nan")}, "--max_grad_norm=nan: must be a finite number"),
    ({"recovery_max_trials": -1}, "--recovery_max_trials=-1: must be >= 0"),
    ({"loss_upper_bound": 0.0}, "--loss_upper_bound=0.0: must be >= 1e-06"),
    ({"batch_tokens": 10}, "batch_tokens"),
    ({"output_dir": ""}, "--output_dir is empty"),
    ({"eval_every_steps": 0}, "eval_every_steps"),
    ({"early_stopping_patience": 0}, "early_stopping_patience"),
    ({"export": "first"}, "export"),
    ({"best_metric": "auc"}, "best_metric"),
])
def test_train_values_are_checked(overrides, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(**{**TRAIN, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"splits": (float("nan"), 0.5, 0.5)}, "splits=nan,0.5,0.5: must be a finite number"),
    ({"splits": (0.5, 0.1)}, "three fractions"),
    ({"splits": (0.5, 0.5, 0.5)}, "summing to 1"),
    ({"split_name": "../escaped"}, "split name is a plain name"),
    ({"split_name": "/abs/path"}, "split name is a plain name"),
    ({"split_name": ".."}, "split name is a plain name"),
    ({"seed": 2**32}, "seed"),
    ({"encoding": "klingon"}, "not a text encoding"),
    ({"output_dir": ""}, "--output_dir is empty"),
    ({"output_dir": None}, "--output_dir is required"),
    ({"format": "csv"}, "needs --text_column and --label_column"),
])
def test_prepare_values_are_checked(overrides, message):
    with pytest.raises(UsageError, match=message):
        PrepareConfig(**{**PREPARE, **overrides})


def test_evaluate_split_is_a_plain_name():
    with pytest.raises(UsageError, match="plain name"):
        EvaluateConfig(model_dir="m", data_dir="d", split="../train")


def test_defaults_need_no_paths():
    """Benchmarks read the defaults from the config itself: it constructs without the required paths."""
    config = TrainConfig()
    assert config.data_dir is None and config.learning_rate == 5e-5 and config.embedding_update == "lazy"
