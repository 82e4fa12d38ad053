#!/usr/bin/env python3
"""Print the README's flag tables from the configs (each setting is stated once, on its config field).

    python scripts/flag_tables.py            # every table, between the README's markers
    python scripts/flag_tables.py --write    # rewrite them in README.md

tests/test_cli.py checks that README.md holds exactly what this prints.
"""
import dataclasses
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import (EvaluateConfig, ExportConfig, PredictConfig, PrepareConfig,  # noqa: E402
                            TrainConfig)

TABLES = {"prepare": PrepareConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "predict": PredictConfig,
          "export": ExportConfig}


def default_text(field: dataclasses.Field) -> str:
    if field.metadata.get("required"):
        return "required"
    value = field.default
    if value is None:
        return ""
    if isinstance(value, tuple):
        return "`" + ",".join(map(str, value)) + "`"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def table(config_class) -> str:
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(config_class):
        lines.append(f"| `--{field.name}` | {default_text(field)} | {field.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    return {name: f"<!-- flags:{name} -->\n{table(cls)}\n<!-- /flags:{name} -->" for name, cls in TABLES.items()}


def readme_with_tables(text: str) -> str:
    for name, block in blocks().items():
        text = re.sub(rf"<!-- flags:{name} -->.*?<!-- /flags:{name} -->", lambda m: block, text, flags=re.S)
    return text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        readme = ROOT / "README.md"
        readme.write_text(readme_with_tables(readme.read_text()))
    else:
        print("\n\n".join(blocks().values()))
