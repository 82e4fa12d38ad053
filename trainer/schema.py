"""Schemas of the JSON files the trainer reads (manifest.json, run.json, best.json, trainer.json, the parts of a
model's config.json it relies on). Each is checked before use; any deviation is one UsageError line naming the
file, the key and the fix. Keys a schema does not name are allowed (files may grow new keys).

A schema is a dict {key: spec} (every key required), and a spec is one of the classes below.
"""
import dataclasses

from trainer.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Int:
    lower: int | None = None
    upper: int | None = None
    name = "an integer"

    def problem(self, value) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"is {_shown(value)}, not {self.name}"
        return _range(value, self.lower, self.upper)


@dataclasses.dataclass(frozen=True)
class Num:
    lower: float | None = None
    name = "a number"

    def problem(self, value) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            return f"is {_shown(value)}, not {self.name}"
        return _range(value, self.lower, None)


@dataclasses.dataclass(frozen=True)
class Str:
    choices: tuple | None = None

    def problem(self, value) -> str | None:
        if not isinstance(value, str) or not value:
            return f"is {_shown(value)}, not a non-empty text"
        if self.choices and value not in self.choices:
            return f"is {value!r}, not one of {', '.join(self.choices)}"
        return None


class Value:
    """A setting's recorded value: text, number, boolean or list."""

    def problem(self, value) -> str | None:
        return None if isinstance(value, (str, int, float, bool, list)) else f"is {_shown(value)}, not a value"


@dataclasses.dataclass(frozen=True)
class Map:
    """An object with any keys, each value of `values`."""
    values: object
    at_least: int = 0


@dataclasses.dataclass(frozen=True)
class Seq:
    items: object
    at_least: int = 0


@dataclasses.dataclass(frozen=True)
class Maybe:
    """The key may be missing or null."""
    spec: object


def _shown(value) -> str:
    kind = {dict: "an object", list: "a list", str: "a text", bool: "a boolean", type(None): "null"}.get(type(value))
    return f"{kind} {value!r}"[:60] if kind in ("a text", "a boolean") else kind or repr(value)[:40]


def _range(value, lower, upper) -> str | None:
    if lower is not None and value < lower:
        return f"is {value}, below {lower}"
    if upper is not None and value > upper:
        return f"is {value}, above {upper}"
    return None


def problem(value, spec, key: str = "") -> str | None:
    """The first deviation of `value` from `spec`, as "key 'a.b' is ...", or None."""
    where = f"key {key!r}" if key else "the file"
    if isinstance(spec, Maybe):
        return None if value is None else problem(value, spec.spec, key)
    if isinstance(spec, (dict, Map)):
        if not isinstance(value, dict):
            return f"{where} is {_shown(value)}, not an object"
        if isinstance(spec, Map):
            if len(value) < spec.at_least:
                return f"{where} has {len(value)} entries, fewer than {spec.at_least}"
            items = [(name, item, spec.values) for name, item in value.items()]
        else:
            missing = [name for name, sub in spec.items() if name not in value and not isinstance(sub, Maybe)]
            if missing:
                return f"key {_join(key, missing[0])!r} is missing"
            items = [(name, value.get(name), sub) for name, sub in spec.items()]
        for name, item, sub in items:
            found = problem(item, sub, _join(key, str(name)))
            if found:
                return found
        return None
    if isinstance(spec, Seq):
        if not isinstance(value, list):
            return f"{where} is {_shown(value)}, not a list"
        if len(value) < spec.at_least:
            return f"{where} has {len(value)} items, fewer than {spec.at_least}"
        for index, item in enumerate(value):
            found = problem(item, spec.items, f"{key}[{index}]")
            if found:
                return found
        return None
    found = spec.problem(value)
    return f"{where} {found}" if found else None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def check(value, spec, file: str, fix: str) -> None:
    """Raise one line naming `file`, the first deviating key, and `fix`."""
    found = problem(value, spec)
    if found:
        raise UsageError(f"{file}: {found}: {fix}")


SHA256 = Str()
MANIFEST = {
    "settings": {"format_version": Int(), "source_sha256": SHA256, "tokenizer": Str()},
    "source": {"sha256": SHA256, "bytes": Int(0), "path": Str()},
    "tokenizer": {"name_or_path": Str()},
    "max_length": Int(8),
    "labels": Seq(Str(), at_least=2),
    "splits": Map(Int(0), at_least=1),
    "files": Map({"bytes": Int(0), "sha256": SHA256}, at_least=1),
}
BEST = {"step": Int(1), "metric": Str(("accuracy", "loss", "f1")), "value": Num(), "run_id": Maybe(Str())}
EXPORT_INFO = {"data_source_sha256": SHA256, "global_step": Int(0), "weights": Str(("best", "last"))}
RUN_IDENTITY = {"format": Int(1, 1), "run_id": Maybe(Str()), "settings": Map(Maybe(Value()), at_least=1)}
MODEL_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
               "max_position_embeddings")
MODEL_CONFIG = {name: Int(1) if name in MODEL_SIZES[:4] else Maybe(Int(1)) for name in MODEL_SIZES}
RECOVERY = {"step": Int(1), "why": Str(), "resumed_from": Int(0), "rate_factor": Num(0)}
RECOVERIES = {"recoveries": Seq(RECOVERY), "stopped": Maybe({"step": Int(1), "why": Str()})}
