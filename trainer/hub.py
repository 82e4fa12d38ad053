"""A model name (hub id or local directory) -> a local directory, its config and its fast tokenizer.

No TensorFlow here: data preparation uses this too and may fork worker processes.
"""
import os

import huggingface_hub
import transformers

from trainer.cli import UsageError

# What a fine-tuning run needs from a hub snapshot: config, tokenizer files, TF or safetensors weights.
SNAPSHOT_FILES = ["*.json", "*.txt", "*.model", "tf_model*.h5", "*.safetensors"]


def resolve(model: str) -> str:
    """Return the local directory holding `model`'s files, downloading a hub snapshot if needed."""
    if os.path.isdir(model):
        return model
    if os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1:
        raise UsageError(f"model directory {model} does not exist: pass --model=<local directory or hub id>")
    try:
        return huggingface_hub.snapshot_download(model, allow_patterns=SNAPSHOT_FILES)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise UsageError(f"no model {model!r} on the hub and no such local directory: check --model") from None
    except (huggingface_hub.errors.LocalEntryNotFoundError, OSError) as e:
        raise UsageError(f"cannot reach the model hub for {model!r} ({type(e).__name__}): "
                         "pass a local directory with --model") from None


def load_config(model_dir: str, **overrides) -> transformers.PretrainedConfig:
    try:
        return transformers.AutoConfig.from_pretrained(model_dir, **overrides)
    except (OSError, ValueError) as e:
        raise UsageError(f"{model_dir} holds no usable config.json ({str(e).splitlines()[0][:120]}): "
                         "pass a model directory saved with save_pretrained") from None


def load_tokenizer(model_dir: str) -> transformers.PreTrainedTokenizerFast:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"{model_dir} holds no usable tokenizer ({str(e).splitlines()[0][:120]}): "
                         "pass a model directory with tokenizer files") from None
    if not tokenizer.is_fast:
        raise UsageError(f"{model_dir}: only fast (Rust) tokenizers are supported; add its tokenizer.json")
    return tokenizer


def max_positions(config: transformers.PretrainedConfig) -> int | None:
    """How many tokens the model's position embeddings hold (None if it does not say)."""
    return getattr(config, "max_position_embeddings", None)
