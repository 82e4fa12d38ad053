"""trainer-predict: one line per text (label, probability, text), from arguments or stdin."""
from conftest import run_cli
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
        result = run_cli("predict", f"--model_dir={export}", *args, stdin=stdin)
        assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
        lines = [line.split("\t") for line in result.stdout.strip().splitlines()[-2:]]
        assert [text for _, _, text in lines] == texts
        assert all(label in ("negative", "positive") and 0.5 <= float(p) <= 1 for label, p, _ in lines)


def test_latin1_stdin_with_its_encoding(one_device_run):
    export = str(one_device_run[0] / "export")
    result = run_cli("predict", f"--model_dir={export}", "--encoding=latin-1", stdin="caf\xe9 au lait\n".encode("latin-1"))
    assert result.returncode == 0 and result.stdout.strip().endswith("\tcafé au lait")
