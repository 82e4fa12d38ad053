r"""trainer-predict: the label and probability of each text, one tab-separated line per text.

  trainer-predict --model_dir=RUN/export "I don't love this weather so much" "What a lovely day"
  printf 'first text\nsecond text\n' | trainer-predict --model_dir=RUN/export

Texts are the arguments after the flags or, when there are none, the lines on stdin (decoded
with --encoding). Output: label<TAB>probability<TAB>text.
"""
import sys

from trainer import cli
from trainer.config import PredictConfig
from trainer.errors import UsageError


MAX_STDIN = 256 << 20


def read_texts(arguments: list[str], config: PredictConfig) -> list[str]:
    """The arguments, or stdin's non-blank lines; bytes that are not valid text are refused."""
    if arguments:
        for number, text in enumerate(arguments, start=1):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"argument {number} is not valid UTF-8: pass the text on stdin with "
                                 "--encoding=<its encoding>") from None
        return arguments
    data = sys.stdin.buffer.read(MAX_STDIN + 1)       # a device such as /dev/zero never ends
    if len(data) > MAX_STDIN:
        raise UsageError(f"stdin holds more than {MAX_STDIN >> 20} MiB: classify the texts in parts (or check that "
                         "stdin is the file you meant)")
    try:
        text = data.decode(config.encoding)
    except UnicodeDecodeError as e:
        raise UsageError(f"stdin: bytes not valid {config.encoding} near byte {e.start}: pass --encoding=latin-1 "
                         "(or the texts' real encoding)") from None
    texts = [line for line in text.splitlines() if line.strip()]
    if not texts:
        raise UsageError("no text to classify: pass texts as arguments or lines on stdin")
    return texts


def _main(config: PredictConfig, arguments) -> None:
    texts = read_texts(arguments, config)
    from trainer import checks, hub, runtime
    model = checks.for_predict(config)
    runtime.import_tensorflow()
    from trainer import model as model_lib
    from trainer import predict
    classifier = model_lib.load_export(model.dir, config.model_dir)
    max_length = hub.fit_max_length(model.config, config.max_length, config.model_dir, clip=True)
    results = predict.predict(classifier, model.tokenizer, texts, config.batch_size, max_length,
                              config.padding)
    for label, probability, text in results:
        print(f"{label}\t{probability:.4f}\t{text}")


def main():
    cli.run(PredictConfig, _main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    main()
