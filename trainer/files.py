"""Outputs appear whole or not at all: written beside their final place, then renamed."""
import json
import os
import shutil
import tempfile


def write_json(path: str, obj) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(f.name, path)


def staging_dir(target: str, prefix: str) -> str:
    """A new empty directory beside `target` (same file system, so the final rename is atomic)."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def replace_dir(staged: str, target: str) -> None:
    """Rename the finished `staged` directory to `target`; an old `target` is removed only afterwards."""
    old = None
    if os.path.exists(target):
        old = staging_dir(target, ".old-")
        os.rename(target, os.path.join(old, "previous"))
    os.rename(staged, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)
