"""tiny_bert: the demo's and the tests' vocabulary is a function of the texts alone."""
import os
import subprocess
import sys

import transformers

from conftest import SAMPLE_CSV
from trainer import tiny_bert

VOCABULARY_SHA256 = ("import hashlib, sys; from trainer import tiny_bert; from trainer.config import SourceConfig; "
                     "from trainer.data import readers; "
                     "rows = readers.read_rows(SourceConfig(input=sys.argv[1]), readers.ReadStats()); "
                     "v = tiny_bert.vocabulary((t for t, _ in rows), vocab_size=1000); "
                     "print(len(v), hashlib.sha256(''.join(t + chr(10) for t in v).encode()).hexdigest())")


def test_words_then_endings_by_count_then_alphabet(tmp_path):
    vocab = tiny_bert.vocabulary(["the cats sat", "The dogs sat", "hats"], vocab_size=100)
    characters = list("acdeghost")
    assert vocab == [*tiny_bert.SPECIAL_TOKENS, *characters, *("##" + c for c in characters),
                     "sat", "the", "##ats", "##ts"]
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    tokenizer = transformers.BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=True)
    assert tokenizer.tokenize("The cats sat dogs") == ["the", "c", "##ats", "sat", "d", "##o", "##g", "##s"]


def test_the_sample_gives_the_same_bytes_in_two_processes():
    """Two fresh processes with different string hashing build byte-identical 1000-token vocabularies."""
    digests = {subprocess.run([sys.executable, "-c", VOCABULARY_SHA256, str(SAMPLE_CSV)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1 and digests.pop().startswith("1000 ")
