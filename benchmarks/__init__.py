"""Measurements that print ratios from one run; never assertions on time."""
import os

# ../shared beside the project (CI has it there): the 20,000-tweet sample and all-MiniLM-L6-v2.
SHARED = os.environ.get("SHARED_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "..", "shared"))
SAMPLE_CSV = os.path.join(SHARED, "data", "sentiment140_sample.csv")
MINILM = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")


def run(main, doc: str) -> None:
    """A benchmark's main under the command layer: its own absl flags, --help, one-line errors."""
    import dataclasses

    from absl import flags

    from trainer import cli

    @dataclasses.dataclass(frozen=True)
    class NoSettings:
        """The benchmark's flags are its own absl flags; the command layer only parses them."""

    cli.run(NoSettings, main, doc, flag_values=flags.FLAGS)
