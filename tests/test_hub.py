"""hub: a model name -> a local directory, its config, its tokenizer and its weights file, or one `error:` line."""
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from trainer import hub
from trainer.errors import UsageError


def one_line(call, message):
    with pytest.raises(UsageError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_resolve_a_local_directory_is_itself(tiny_model_dir):
    assert hub.resolve(tiny_model_dir) == tiny_model_dir


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "a/b/c"])
def test_resolve_a_missing_directory(name):
    one_line(lambda: hub.resolve(name), f"model directory {name} does not exist: pass --model=<local directory or hub id>")


def test_resolve_a_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    one_line(lambda: hub.resolve(str(tmp_path / "config.json")), "is a file: pass its directory")


def test_config_tokenizer_and_positions(tiny_model_dir):
    config = hub.load_config(tiny_model_dir, num_labels=3)
    assert config.num_labels == 3 and config.max_position_embeddings == 128
    assert hub.load_tokenizer(tiny_model_dir).is_fast


def test_max_length_within_the_positions(tiny_model_dir):
    config = hub.load_config(tiny_model_dir)
    assert hub.fit_max_length(config, 128, "m") == 128 and hub.fit_max_length(config, 200, "m", clip=True) == 128
    one_line(lambda: hub.fit_max_length(config, 129, "m"), "--max_length=129 is above the 128 positions of m: "
                                                          "pass --max_length<=128")


def test_weights_file(tmp_path, tiny_model_dir):
    assert hub.check_weights(tiny_model_dir).endswith("tf_model.h5")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "tf_model.h5").unlink()
    one_line(lambda: hub.check_weights(str(model)), r"holds no tf_model.h5 or \*.safetensors weights \(found: ")
    save_file({"w": np.zeros(2, np.float32)}, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert hub.check_weights(str(model)) == str(model / "model.safetensors")
    one_line(lambda: hub.check_weights(str(model), tf_only=True), "holds no tf_model.h5 .*pass the export/ directory")
    save_file({"w": np.zeros(2, np.float32)}, str(model / "model.safetensors"), metadata={"format": "tf"})
    one_line(lambda: hub.check_weights(str(model)), "is TF-layout safetensors: save it as tf_model.h5")
