"""trainer-predict: one line per text (label, probability, text), from arguments or stdin."""
import numpy as np
import pytest

from conftest import run_cli
from trainer import hub, model, predict


def test_predict_function_matches_the_model(one_device_run):
    out, _ = one_device_run
    classifier = model.load_export(str(out / "export"))
    tokenizer = hub.load_tokenizer(str(out / "export"))
    texts = ["a good day", "a bad day", "ok"]
    results = predict.predict(classifier, tokenizer, texts, batch_size=2)
    assert [text for _, _, text in results] == texts
    for text, (label, probability, _) in zip(texts, results):
        logits = classifier(dict(tokenizer([text], return_tensors="tf"))).logits.numpy()[0].astype(np.float64)
        by_hand = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert label == classifier.config.id2label[int(logits.argmax())]
        assert abs(probability - by_hand.max()) < 1e-5


@pytest.mark.slow
def test_predict_cli_arguments_and_stdin(one_device_run):
    """Both ways in print, for each text, the label and probability (4 decimals) the predict function gives."""
    export = str(one_device_run[0] / "export")
    texts = ["I don't love this weather so much", "what a lovely day"]
    classifier, tokenizer = model.load_export(export), hub.load_tokenizer(export)
    expected = [[label, f"{p:.4f}", text] for label, p, text in predict.predict(classifier, tokenizer, texts)]
    for args, stdin in (([*texts], None), ([], "\n".join(texts) + "\n")):
        result = run_cli("predict", f"--model_dir={export}", *args, stdin=stdin)
        assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
        assert [line.split("\t") for line in result.stdout.strip().splitlines()[-2:]] == expected


def test_latin1_stdin_with_its_encoding(one_device_run):
    export = str(one_device_run[0] / "export")
    result = run_cli("predict", f"--model_dir={export}", "--encoding=latin-1", stdin="caf\xe9 au lait\n".encode("latin-1"))
    assert result.returncode == 0 and result.stdout.strip().endswith("\tcafé au lait")


def varied_texts():
    """Texts of 1 to 60 words (longer than max_length 32 too), in no order of length."""
    words = ["good", "bad", "day", "not", "so", "love", "hate", "rain", "sun", "what"]
    lengths = [(7 * i) % 61 + 1 for i in range(30)]
    return [" ".join(words[(i + j) % len(words)] for j in range(n)) for i, n in enumerate(lengths)]


def test_packed_predictions_are_the_unpacked_ones_in_input_order(one_device_run):
    export = str(one_device_run[0] / "export")
    classifier, tokenizer = model.load_export(export), hub.load_tokenizer(export)
    texts = varied_texts()
    padded = predict.predict(classifier, tokenizer, texts, batch_size=8, max_length=32)
    packed = predict.predict(classifier, tokenizer, texts, batch_size=4, max_length=32,
                             padding="pack")
    assert [text for _, _, text in packed] == texts
    assert [label for label, _, _ in packed] == [label for label, _, _ in padded]
    np.testing.assert_allclose([p for _, p, _ in packed], [p for _, p, _ in padded], atol=1e-5)


def test_predict_cli_with_packing(one_device_run):
    export = str(one_device_run[0] / "export")
    texts = varied_texts()[:6]
    expected = predict.predict(model.load_export(export), hub.load_tokenizer(export), texts)
    result = run_cli("predict", f"--model_dir={export}", "--padding=pack", *texts)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()[-6:]]
    assert [(label, text) for label, _, text in lines] == [(lb, text) for lb, _, text in expected]
    np.testing.assert_allclose([float(p) for _, p, _ in lines], [p for _, p, _ in expected],
                               atol=1e-4)
