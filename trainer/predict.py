"""Label and probability for each text, in order."""
import tensorflow as tf


def predict(classifier, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128):
    """[(label, probability, text)] for each text, in order: the most probable label and its softmax probability."""
    results = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        inputs = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        logits = tf.cast(classifier(dict(inputs), training=False).logits, tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1).numpy()
        for text, p in zip(chunk, probabilities):
            label = int(p.argmax())
            results.append((classifier.config.id2label[label], float(p[label]), text))
    return results
