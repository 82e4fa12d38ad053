"""A tiny BERT (random weights, WordPiece vocabulary trained on given texts) saved like a pretrained model.

For the offline demo and the tests: it loads through the same code as a real checkpoint.
"""
import os
import tempfile

import tokenizers
import transformers


def build(output_dir: str, texts, vocab_size: int = 2000, hidden_size: int = 32, num_layers: int = 2,
          max_positions: int = 128, seed: int = 0) -> str:
    """Write config.json, tf_model.h5 and tokenizer files for a tiny uncased BERT to output_dir."""
    from trainer import runtime
    tf = runtime.import_tensorflow()
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
