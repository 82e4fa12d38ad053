"""trainer-predict: one line per text (label, probability, text), from arguments or stdin."""
import numpy as np

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
