"""trainer-predict: one line per text (label, probability, text), from arguments or stdin."""
import subprocess
import sys

from trainer import hub, model, predict


def test_predict_function_matches_the_model(one_device_run):
    out, _ = one_device_run
    classifier = model.load_export(str(out / "export"))
    tokenizer = hub.load_tokenizer(str(out / "export"))
    results = predict.predict(classifier, tokenizer, ["a good day", "a bad day", "ok"], batch_size=2)
    assert [text for _, _, text in results] == ["a good day", "a bad day", "ok"]
    logits = classifier(dict(tokenizer(["a bad day"], return_tensors="tf"))).logits.numpy()[0]
    label, probability, _ = results[1]
    assert label == classifier.config.id2label[int(logits.argmax())]
    assert abs(probability - model.softmax(logits[None])[0].max()) < 1e-5


def test_predict_cli_arguments_and_stdin(one_device_run):
    export = str(one_device_run[0] / "export")
    texts = ["I don't love this weather so much", "what a lovely day"]
    for args, stdin in (([*texts], None), ([], "\n".join(texts) + "\n")):
        result = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model_dir={export}", *args],
                                input=stdin, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
        assert [text for _, _, text in lines] == texts
        assert all(label in ("negative", "positive") and 0.5 <= float(p) <= 1 for label, p, _ in lines)


def test_predict_without_text_is_one_line():
    result = subprocess.run([sys.executable, "-m", "trainer.predict", "--model_dir=x"], input="",
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: no text")
