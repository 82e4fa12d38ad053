"""The command layer: flags made from the config fields, flag files and presets, stray arguments, --help."""
import dataclasses
import pathlib

import pytest
from absl import flags

from conftest import run_cli
from trainer import cli
from trainer.config import EvaluateConfig, ExportConfig, PredictConfig, PrepareConfig, TrainConfig
from trainer.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED_TRAIN = ["--data_dir=d", "--model=m", "--output_dir=o"]


def parse(config_class, args):
    fv = flags.FlagValues()
    cli.define_flags(config_class, fv)
    cli.check_flagfiles(args)
    fv(["prog", *args])
    return cli.config_from_flags(config_class, fv)


@pytest.mark.parametrize("config_class", [PrepareConfig, TrainConfig, EvaluateConfig, PredictConfig,
                                          ExportConfig])
def test_one_flag_per_field_with_its_default_and_help(config_class):
    fv = flags.FlagValues()
    cli.define_flags(config_class, fv)
    for field in dataclasses.fields(config_class):
        flag = fv[field.name]
        assert flag.help.endswith(cli._help_text(field)) and field.metadata["help"]   # enums prefix <choices>
        default = field.default if not isinstance(field.default, tuple) else ",".join(map(str, field.default))
        assert flag.default == default


def test_train_defaults_and_frozen_config():
    config = parse(TrainConfig, REQUIRED_TRAIN)
    assert config == TrainConfig(data_dir="d", model="m", output_dir="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_flagfile_then_command_line_override(tmp_path):
    preset = tmp_path / "preset.cfg"
    preset.write_text("# a comment\n--epochs=5\n--padding=batch\n--profile_steps=10,15\n\n")
    config = parse(TrainConfig, [f"--flagfile={preset}", *REQUIRED_TRAIN, "--epochs=1"])
    assert config.epochs == 1 and config.padding == "batch" and config.profile_steps == (10, 15)


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.cfg")), ids=lambda p: p.name)
def test_every_preset_parses_into_its_settings(preset):
    config = parse(TrainConfig, [*REQUIRED_TRAIN, f"--flagfile={preset}"])
    for line in preset.read_text().splitlines():
        if not line.startswith("--"):
            continue
        name, _, text = line[2:].partition("=")
        value = getattr(config, name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        expected = {bool: lambda t: t == "", float: float, int: int}.get(type(value), str)(text)
        assert value == expected, line


def test_a_flag_file_line_without_dashes_is_refused(tmp_path):
    preset = tmp_path / "p.cfg"
    preset.write_text("--epochs=2\nsplits=0.5,0.25,0.25\n")
    with pytest.raises(UsageError, match=r"p.cfg line 2: 'splits=0.5,0.25,0.25' is not a flag: write it as --splits"):
        parse(PrepareConfig, [f"--flagfile={preset}"])


def test_required_flags_are_named_in_one_line_and_marked_in_the_help():
    with pytest.raises(UsageError, match=r"^--data_dir is required \(see --help\)$"):
        parse(TrainConfig, ["--model=m", "--output_dir=o"])
    with pytest.raises(UsageError, match=r"^--data_dir, --model, --output_dir are required"):
        parse(TrainConfig, [])
    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, fv)
    assert fv["data_dir"].help.endswith("(required)") and not fv["seed"].help.endswith("(required)")


def test_the_first_interrupt_unwinds_and_later_ones_are_ignored():
    import signal
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):
            cli._interrupt(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


INTERNAL = """
import sys
from trainer import checks
from trainer.cli import train
def broken(config):
    raise TypeError("boom\\nsecond line")
checks.for_train = broken
sys.argv = ["trainer-train", "--data_dir=d", "--model=m", "--output_dir=o"]
train.main()
"""


def test_an_internal_error_is_one_line_exit_1_and_the_traceback_on_request():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", INTERNAL], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: internal error: TypeError: boom (set TRAINER_TRACEBACK=1")
    shown = subprocess.run([sys.executable, "-c", INTERNAL], capture_output=True, text=True, cwd=ROOT,
                           env={**__import__("os").environ, "TRAINER_TRACEBACK": "1"})
    assert shown.returncode == 1 and shown.stderr.count("\n") == 1 and "Traceback" in shown.stdout


def test_prepare_and_evaluate_flags():
    config = parse(PrepareConfig, ["--input=a.tsv", "--format=tsv", "--text_column=0", "--label_column=1",
                                   "--output_dir=o", "--model=m", "--splits=0.9,0,0.1"])
    assert config.split_fractions() == {"train": 0.9, "test": 0.1} and config.resolved_encoding == "utf-8"
    with pytest.raises(UsageError, match="needs --text_column"):
        parse(PrepareConfig, ["--input=a", "--format=jsonl", "--output_dir=o", "--model=m"])
    with pytest.raises(UsageError, match="exactly one of --data_dir"):
        parse(EvaluateConfig, ["--model_dir=x"])
    with pytest.raises(UsageError, match="exactly one of --data_dir"):
        parse(EvaluateConfig, ["--model_dir=x", "--data_dir=d", "--input=f"])


def test_help_exits_0_and_lists_each_flag_with_its_help():
    result = run_cli("train", "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert "--per_replica_batch_size: Rows per replica per step" in result.stdout
    assert "--verbosity" not in result.stdout          # only this command's own flags
    predict = run_cli("predict", "--helpshort")
    assert predict.returncode == 0 and "lines on stdin" in predict.stdout and "arguments" in predict.stdout


def test_a_stray_argument_is_refused_but_predict_takes_texts(tmp_path):
    result = run_cli("prepare", "--input=x.csv", "--output_dir=o", "--model=m", "--keep_neutral", "false")
    assert result.returncode == 2 and result.stderr == ("error: unexpected argument 'false': flags take the form "
                                                        "--name=value (booleans: --name or --noname)\n")
    predict = run_cli("predict", f"--model_dir={tmp_path / 'none'}", "false")     # a text: on to the model check
    assert predict.returncode == 2 and predict.stderr.startswith(f"error: model directory {tmp_path / 'none'} ")


def test_the_readme_flag_tables_are_the_configs():
    import importlib.util
    spec = importlib.util.spec_from_file_location("flag_tables", ROOT / "scripts" / "flag_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    readme = (ROOT / "README.md").read_text()
    assert tables.readme_with_tables(readme) == readme, "run: python scripts/flag_tables.py --write"
    for block in tables.blocks().values():
        assert block in readme


def test_the_layers():
    """Library code never imports the command layer; no function in trainer/ is over 80 lines."""
    import ast
    for path in (ROOT / "trainer").rglob("*.py"):
        tree = ast.parse(path.read_text())
        if "cli" not in path.relative_to(ROOT / "trainer").parts:
            imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
            imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module == "trainer" for alias in node.names}
            assert not any(m.startswith("trainer.cli") for m in imported) and "cli" not in names, path
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{path}:{node.lineno} {node.name}"
