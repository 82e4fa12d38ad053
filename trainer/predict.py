"""trainer-predict: label and probability for each text (arguments, or lines on stdin).

  trainer-predict --model_dir=RUN/export "I don't love this weather so much"
  negative	0.9731	I don't love this weather so much
"""
import sys

import numpy as np

from trainer import cli, hub
from trainer import flags as trainer_flags
from trainer import model as model_lib


def predict(classifier, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128):
    """[(label, probability, text)] for each text, in order."""
    results = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        inputs = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        logits = np.asarray(classifier(dict(inputs), training=False).logits, dtype=np.float32)
        probabilities = model_lib.softmax(logits)
        for text, p in zip(chunk, probabilities):
            label = int(p.argmax())
            results.append((classifier.config.id2label[label], float(p[label]), text))
    return results


def _main(argv):
    fv = trainer_flags.FLAGS
    texts = list(argv[1:]) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise cli.UsageError("no text to classify: pass texts as arguments or lines on stdin")
    classifier = model_lib.load_export(fv.model_dir)
    tokenizer = hub.load_tokenizer(fv.model_dir)
    max_length = min(fv.max_length, hub.max_positions(classifier.config) or fv.max_length)
    for label, probability, text in predict(classifier, tokenizer, texts, fv.batch_size, max_length):
        print(f"{label}\t{probability:.4f}\t{text}")


def main():
    trainer_flags.define_predict_flags()
    cli.run(_main)


if __name__ == "__main__":
    main()
