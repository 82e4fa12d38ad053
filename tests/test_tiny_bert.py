"""tiny_bert: the demo's and the tests' model (vocabulary and initial weights) is a function of the texts alone."""
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import transformers

from conftest import SAMPLE_CSV
from trainer import tiny_bert

BUILD = ("import sys; from trainer import tiny_bert; from trainer.config import SourceConfig; "
         "from trainer.data import readers; "
         "rows = readers.read_rows(SourceConfig(input=sys.argv[1]), readers.ReadStats()); "
         "tiny_bert.build(sys.argv[2], (t for t, _ in rows), vocab_size=1000)")


def test_words_then_endings_by_count_then_alphabet(tmp_path):
    vocab = tiny_bert.vocabulary(["the cats sat", "The dogs sat", "hats"], vocab_size=100)
    characters = list("acdeghost")
    assert vocab == [*tiny_bert.SPECIAL_TOKENS, *characters, *("##" + c for c in characters),
                     "sat", "the", "##ats", "##ts"]
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    tokenizer = transformers.BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=True)
    assert tokenizer.tokenize("The cats sat dogs") == ["the", "c", "##ats", "sat", "d", "##o", "##g", "##s"]


def weights(model_dir) -> dict:
    with h5py.File(model_dir / "tf_model.h5", "r") as f:
        found = {}
        f.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def test_a_fresh_process_builds_the_same_model(tmp_path, tiny_model_dir):
    """A new process (other string hashing, nothing run before) rebuilds the session's tiny BERT: the same
    vocab.txt bytes and the same initial weights."""
    subprocess.run([sys.executable, "-c", BUILD, str(SAMPLE_CSV), str(tmp_path / "again")], capture_output=True,
                   timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"}, check=True)
    session, again = pathlib.Path(tiny_model_dir), tmp_path / "again"
    assert (again / "vocab.txt").read_bytes() == (session / "vocab.txt").read_bytes()
    assert len((again / "vocab.txt").read_text().splitlines()) == 1000
    a, b = weights(session), weights(again)
    assert a.keys() == b.keys() and len(a) > 30 and all(np.array_equal(a[k], b[k]) for k in a)
