r"""trainer-export: a SavedModel that takes raw text, for TF Serving and tf.saved_model.load.

  trainer-export --model_dir=RUN/export --output_dir=models/sentiment/1

The model's tokenizer becomes TensorFlow ops (tensorflow-text's WordPiece) before the classifier,
so clients send strings. Signatures: serving_default (text -> probabilities, label) and tokenize
(text -> input_ids, attention_mask). Only BERT-style WordPiece tokenizers can be exported this way.
Needs tensorflow-text: pip install -e '.[serving]'.
"""
from trainer import cli
from trainer.config import ExportConfig


def _main(config: ExportConfig, arguments) -> None:
    from trainer import runtime, serving_checks
    inputs = serving_checks.for_export(config)
    runtime.import_tensorflow()
    from trainer import serving
    info = serving.export(inputs.model.dir, inputs.spec, inputs.max_length,
                          inputs.model.tokenizer.model_input_names, config.output_dir)
    print(f"wrote {config.output_dir}: signatures serving_default (text -> probabilities, label) "
          f"and tokenize (text -> input_ids, attention_mask); labels {', '.join(info['labels'])}; "
          f"max_length {info['max_length']}; float32")


def main():
    cli.run(ExportConfig, _main, __doc__)


if __name__ == "__main__":
    main()
