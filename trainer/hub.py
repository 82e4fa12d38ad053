"""A model name (hub id, local directory or bucket URL) -> a local directory, its config and its fast tokenizer.

No TensorFlow here: data preparation uses this too and may fork worker processes.
"""
import json
import os

import huggingface_hub
import transformers

from trainer import schema, storage
from trainer.errors import UsageError

# What a fine-tuning run needs from a hub snapshot: config, tokenizer files, TF or safetensors weights.
SNAPSHOT_FILES = ["*.json", "*.txt", "*.model", "tf_model*.h5", "*.safetensors"]


def resolve(model: str, flag: str = "--model") -> str:
    """The local directory holding `model`'s files: a directory as it is; a hub id's snapshot (huggingface_hub's
    cache) or a bucket URL's copy, downloaded when not already there. A name that can only be a path and
    does not exist, or a file, is a UsageError naming `flag`."""
    if storage.is_url(model):
        if not storage.exists(storage.join(model, "config.json")):
            raise UsageError(f"{model} holds no config.json: pass a model directory saved with save_pretrained")
        local = storage.local_copy(model)
        storage.check_regular_files(local, model, "restore the model's files")
        return local
    if os.path.isdir(model):
        storage.check_regular_files(model, model, "restore the model's files")
        return model
    if os.path.exists(model):
        raise UsageError(f"model {model} is a file: pass its directory (config.json, tokenizer and weights)")
    if os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1:
        raise UsageError(f"model directory {model} does not exist: pass {flag}=<local directory"
                         f"{' or hub id' if flag == '--model' else ''}>")
    try:
        local = huggingface_hub.snapshot_download(model, allow_patterns=SNAPSHOT_FILES)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise UsageError(f"no model {model!r} on the hub and no such local directory: check --model") from None
    except (huggingface_hub.errors.LocalEntryNotFoundError, OSError) as e:
        raise UsageError(f"cannot reach the model hub for {model!r} ({type(e).__name__}): "
                         "pass a local directory with --model") from None
    storage.check_regular_files(local, model, "remove the model's files from the hub cache to download them anew")
    return local


def first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:160]


def load_config(model_dir: str, **overrides) -> transformers.PretrainedConfig:
    """The model's config, with the sizes the trainer relies on checked (positive integers) and its labels
    numbered 0..n-1."""
    fix = "pass a model directory saved with save_pretrained"
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, **overrides)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{model_dir} holds no usable config.json ({first_line(e)}): {fix}") from None
    where = os.path.join(model_dir, "config.json")
    schema.check({name: getattr(config, name, None) for name in schema.MODEL_SIZES}, schema.MODEL_CONFIG, where, fix)
    labels = getattr(config, "id2label", None)
    if not isinstance(labels, dict) or sorted(labels) != list(range(len(labels))):
        raise UsageError(f"{where}: key 'id2label' does not number its labels 0..{len(labels or {}) - 1}: {fix}")
    return config


def check_head(weights: str, config: transformers.PretrainedConfig) -> None:
    """An export's classifier head has as many outputs as its config has labels."""
    import h5py
    found = []
    with h5py.File(weights, "r") as f:
        f.visititems(lambda name, item: found.append(item.shape) if name.endswith("classifier/kernel:0") else None)
    if found and found[0][-1] != config.num_labels:
        raise UsageError(f"{os.path.dirname(weights)}/config.json names {config.num_labels} labels but the weights' "
                         f"head has {found[0][-1]}: restore the export's config.json, or export the model again")


def load_tokenizer(model_dir: str) -> transformers.PreTrainedTokenizerFast:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(model_dir, name)
        try:
            with open(path, "rb") as f:
                json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is damaged ({first_line(e)}): restore the model's tokenizer files") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:   # damaged vocabularies fail in many ways, Rust errors included
        raise UsageError(f"{model_dir} holds no usable tokenizer ({first_line(e)}): pass a model directory "
                         "with its tokenizer files (tokenizer.json, or vocab.txt)") from None
    if not tokenizer.is_fast:
        raise UsageError(f"{model_dir}: only fast (Rust) tokenizers are supported; add its tokenizer.json")
    unknown = tokenizer.unk_token
    try:               # a text of characters no vocabulary holds (the Rust tokenizer itself: its settings stay)
        tokenizer.backend_tokenizer.encode("\u2603\ue000 zzqxjv")
    except Exception as e:   # noqa: BLE001 (the Rust tokenizer fails in many ways, e.g. no [UNK] in the vocabulary)
        raise UsageError(f"{model_dir}'s tokenizer cannot encode an unknown word ({first_line(e)}): restore its "
                         "vocabulary (vocab.txt, tokenizer.json) with its unknown token "
                         f"{unknown or '[UNK]'}") from None
    if unknown is None or unknown not in tokenizer.get_vocab():
        raise UsageError(f"{model_dir}'s vocabulary has no unknown token ({unknown or 'none named'}): restore its "
                         "vocabulary (vocab.txt, tokenizer.json)")
    return tokenizer


def fit_max_length(config: transformers.PretrainedConfig, max_length: int, model: str, clip: bool = False) -> int:
    """max_length within the model's position embeddings: refused above them, or (clip) lowered to them."""
    positions = getattr(config, "max_position_embeddings", None) or max_length
    if max_length > positions and not clip:
        raise UsageError(f"--max_length={max_length} is above the {positions} positions of {model}: pass "
                         f"--max_length<={positions}")
    return min(max_length, positions)


def check_weights(model_dir: str, tf_only: bool = False) -> str:
    """The weights file a model will load from, checked for damage without loading it: tf_model.h5 (an HDF5
    file that opens) or, unless tf_only, PyTorch-layout *.safetensors (headers that cover the files)."""
    h5 = os.path.join(model_dir, "tf_model.h5")
    if os.path.exists(h5):
        import h5py
        try:
            with h5py.File(h5, "r") as f:
                if not len(f.keys()):
                    raise OSError("no weights in it")
        except OSError as e:
            raise UsageError(f"{h5} is damaged ({first_line(e)}): restore it, or save the model again with "
                             "save_pretrained") from None
        return h5
    found = sorted(name for name in os.listdir(model_dir) if name.endswith(".safetensors"))
    if tf_only or not found:
        wanted = "tf_model.h5" if tf_only else "tf_model.h5 or *.safetensors weights"
        hint = "pass the export/ directory of a training run" if tf_only else "pass a directory saved with save_pretrained"
        raise UsageError(f"{model_dir} holds no {wanted} (found: {', '.join(sorted(os.listdir(model_dir))) or 'nothing'}): "
                         f"{hint}")
    from safetensors import SafetensorError, safe_open
    for name in found:
        path = os.path.join(model_dir, name)
        try:
            with safe_open(path, framework="np") as f:
                layout = (f.metadata() or {}).get("format")
        except (SafetensorError, OSError) as e:
            raise UsageError(f"{path} is damaged ({first_line(e)}): restore the model's weights") from None
        if layout == "tf":
            raise UsageError(f"{path} is TF-layout safetensors: save it as tf_model.h5 (save_pretrained with "
                             "safe_serialization=False)")
    return os.path.join(model_dir, found[0])
