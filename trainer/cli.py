"""Entry-point plumbing: absl flag parsing, and one line on stderr for every problem a user can fix."""
import logging as std_logging
import sys
from typing import Callable, Sequence

from absl import app, flags, logging


class UsageError(Exception):
    """A problem the user can fix (bad flag, bad path, bad data): printed as one line, exit status 2."""


def fail(message: str) -> None:
    """Print `message` as the last line on stderr and exit with status 2."""
    sys.stderr.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Parse the absl flags (with --flagfile), then call main(remaining_argv).

    Unlike absl.app.run, a flag error or a UsageError ends in a single line and exit status 2.
    """
    argv = list(sys.argv if argv is None else argv)
    app.define_help_flags()   # --help, --helpshort, --helpfull print the flags and their help text
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():   # list our flags under --help
        if module.startswith(("trainer", "benchmarks")) or module == "__main__":
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(argv[0], flag)
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (see --help)")
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().python_handler.stream = sys.stderr
    for noisy in ("tensorflow", "transformers", "datasets", "h5py", "absl"):
        std_logging.getLogger(noisy).setLevel(std_logging.ERROR if noisy != "absl" else std_logging.INFO)
    try:
        main(remaining)
    except UsageError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")
