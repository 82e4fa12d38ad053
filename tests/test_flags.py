"""Flag parsing: flag files, presets, every validator, the frozen configs."""
import dataclasses
import pathlib

import pytest
from absl import flags

from trainer import flags as trainer_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED_TRAIN = ["--data_dir=d", "--model=m", "--output_dir=o"]


def parse(define, args):
    fv = flags.FlagValues()
    define(fv)
    fv(["prog", *args])
    return fv


def test_train_defaults_and_frozen_config():
    config = trainer_flags.train_config(parse(trainer_flags.define_train_flags, REQUIRED_TRAIN))
    assert config.padding == "bucket" and config.per_replica_batch_size == 32 and config.profile_steps is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_flagfile_then_command_line_override(tmp_path):
    preset = tmp_path / "preset.cfg"
    preset.write_text("--epochs=5\n--padding=batch\n--profile_steps=10,15\n")
    config = trainer_flags.train_config(parse(trainer_flags.define_train_flags,
                                              [f"--flagfile={preset}", *REQUIRED_TRAIN, "--epochs=1"]))
    assert config.epochs == 1 and config.padding == "batch" and config.profile_steps == (10, 15)


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.cfg")), ids=lambda p: p.name)
def test_every_preset_parses(preset):
    config = trainer_flags.train_config(parse(trainer_flags.define_train_flags,
                                              [f"--flagfile={preset}", *REQUIRED_TRAIN]))
    assert config.per_replica_batch_size > 0


@pytest.mark.parametrize("args, message", [
    (["--per_replica_batch_size=0"], "per_replica_batch_size"),
    (["--epochs=0"], "epochs"),
    (["--max_steps=0"], "max_steps"),
    (["--learning_rate=0"], "learning_rate must be > 0"),
    (["--warmup_ratio=1.5"], "warmup_ratio"),
    (["--weight_decay=-1"], "weight_decay"),
    (["--padding=dynamic"], "padding"),
    (["--strategy=horovod"], "strategy"),
    (["--mixed_precision=fp8"], "mixed_precision"),
    (["--max_length=4"], "max_length"),
    (["--pad_to_multiple_of=0"], "pad_to_multiple_of"),
    (["--steps_per_execution=0"], "steps_per_execution"),
    (["--profile_steps=5"], "START,STOP"),
    (["--profile_steps=9,3"], "START,STOP"),
    (["--freeze_encoder", "--freeze_layers=2"], "exclude each other"),
    (["--freeze_layers=-1"], "freeze_layers"),
    (["--classifier_dropout=1.5"], "classifier_dropout"),
    (["--log_every_steps=0"], "log_every_steps"),
    (["--checkpoint_every_steps=0"], "checkpoint_every_steps"),
    (["--num_gpus=0"], "num_gpus"),
    (["--strategy=mirrored", "--tpu=x"], "--tpu goes with --strategy=tpu"),
    (["--flagfile=/no/such/preset.cfg"], "preset.cfg"),
])
def test_train_validators(args, message):
    with pytest.raises(flags.Error, match=message):
        parse(trainer_flags.define_train_flags, [*REQUIRED_TRAIN, *args])


def test_required_flags():
    with pytest.raises(flags.Error, match="data_dir"):
        parse(trainer_flags.define_train_flags, ["--model=m", "--output_dir=o"])


def test_prepare_flags():
    fv = parse(trainer_flags.define_prepare_flags, ["--input=a.tsv", "--format=tsv", "--text_column=0",
                                                    "--label_column=1", "--output_dir=o", "--model=m",
                                                    "--splits=0.9,0,0.1"])
    config = trainer_flags.prepare_config(fv)
    assert config.split_fractions() == {"train": 0.9, "test": 0.1}
    assert config.source.resolved_encoding == "utf-8"
    with pytest.raises(flags.Error, match="needs --text_column"):
        parse(trainer_flags.define_prepare_flags, ["--input=a", "--format=jsonl", "--output_dir=o", "--model=m"])


def test_evaluate_needs_exactly_one_source():
    with pytest.raises(flags.Error, match="exactly one of --data_dir"):
        parse(trainer_flags.define_evaluate_flags, ["--model_dir=x"])
    with pytest.raises(flags.Error, match="exactly one of --data_dir"):
        parse(trainer_flags.define_evaluate_flags, ["--model_dir=x", "--data_dir=d", "--input=f"])


def test_help_lists_flags_with_their_help_text():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "trainer.train", "--helpshort"], capture_output=True, text=True)
    assert "--per_replica_batch_size: Examples per replica per step" in result.stdout + result.stderr
