"""A tiny BERT (random weights, WordPiece vocabulary trained on given texts) saved like a pretrained model.

For the offline demo and the tests: it loads through the same code as a real checkpoint.
Usage: python -m trainer.tiny_bert OUTPUT_DIR SENTIMENT140_CSV [VOCAB_SIZE]
"""
import os
import tempfile

import tokenizers
import transformers

from trainer import cli
from trainer.cli import UsageError


def build(output_dir: str, texts, vocab_size: int = 2000, hidden_size: int = 32, num_layers: int = 2,
          max_positions: int = 128, seed: int = 0) -> str:
    """Write config.json, tf_model.h5 and tokenizer files for a tiny uncased BERT to output_dir."""
    import tensorflow as tf  # after trainer/__init__ has chosen Keras 2
    wordpiece = tokenizers.BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wordpiece.save_model(tmp)
        tokenizer = transformers.BertTokenizerFast(os.path.join(tmp, "vocab.txt"), do_lower_case=True,
                                                   model_max_length=max_positions)
    tokenizer.save_pretrained(output_dir)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=max_positions)
    tf.random.set_seed(seed)
    model = transformers.TFBertModel(config)
    model.build_in_name_scope()
    model.save_pretrained(output_dir)
    return output_dir


def _main(argv):
    from trainer.data import readers
    if len(argv) not in (3, 4):
        raise UsageError("usage: python -m trainer.tiny_bert OUTPUT_DIR SENTIMENT140_CSV [VOCAB_SIZE]")
    rows = readers.read_rows(readers.Source(argv[2]), readers.ReadStats())
    build(argv[1], (text for text, _ in rows), vocab_size=int(argv[3]) if len(argv) > 3 else 2000)
    print(f"tiny BERT written to {argv[1]}")


if __name__ == "__main__":
    cli.run(_main)
