"""Raw files -> on-disk arrow datasets (prepare) -> tf.data batches (stream)."""
