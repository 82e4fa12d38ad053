"""Fine-tune pretrained BERT models for sentiment analysis with TensorFlow.

transformers' TensorFlow classes need Keras 2 (tf-keras): the switch must be set before
TensorFlow is first imported, so it lives here, ahead of every module of the package.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off stderr
