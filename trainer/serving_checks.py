"""trainer-export's checks, before TensorFlow loads: the export, its tokenizer, the output path."""
import dataclasses
import importlib.util
import json
import os

from trainer import checks, hub, storage, wordpiece_spec
from trainer.config import ExportConfig
from trainer.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ExportInputs:
    model: checks.Model
    spec: wordpiece_spec.WordPieceSpec
    max_length: int


def for_export(config: ExportConfig) -> ExportInputs:
    out = config.output_dir
    storage.check_no_overlap(out, "--output_dir", {"--model_dir": config.model_dir})
    checks.check_not_inside_an_output(out, "--output_dir")
    if storage.exists(out) if storage.is_url(out) else os.path.lexists(out):
        raise UsageError(f"--output_dir={out} exists: pass a new directory (an export never "
                         "replaces one)")
    storage.check_writable(out, "--output_dir", "dir")
    model = checks.model(config.model_dir, "--model_dir", tf_only=True)
    check_classifier(model.dir)
    tokenizer = model.tokenizer
    spec = wordpiece_spec.from_json(json.loads(tokenizer.backend_tokenizer.to_str()),
                                    f"{config.model_dir}'s tokenizer", tokenizer.truncation_side,
                                    tokenizer.pad_token_id)
    max_length = hub.fit_max_length(model.config, config.max_length, config.model_dir, clip=True)
    if importlib.util.find_spec("tensorflow_text") is None:
        raise UsageError("tensorflow-text is not installed (the SavedModel's tokenizer is its "
                         "ops): pip install -e '.[serving]'")
    return ExportInputs(model, spec, max_length)


def check_classifier(model_dir: str) -> None:
    """A fine-tuned export has a classifier head; a pretrained encoder has none to serve."""
    import h5py
    heads = []
    with h5py.File(os.path.join(model_dir, "tf_model.h5"), "r") as f:
        f.visit(lambda name: heads.append(name) if name.endswith("classifier/kernel:0") else None)
    if not heads:
        raise UsageError(f"{model_dir} holds no classifier head (a pretrained encoder, not a "
                         "fine-tuned model): pass the export/ directory of a training run")
