"""The command layer: flags made from the config fields, --flagfile presets, and the one handler that turns
every problem into a single `error: ...` line on stderr and exit status 2.

stdout carries logs, progress and results; stderr is kept for that one error line. Everything a command
can check (flags, paths, files) is checked before TensorFlow is imported, and the mains import the library
only once the flags parse, so --help and a bad flag answer in a fraction of a second.
"""
import dataclasses
import errno
import logging as std_logging
import os
import signal
import sys
import types
import typing
import warnings
from typing import Callable

from absl import flags, logging

from trainer.errors import Error, UsageError

HELP = ("--help", "-h", "-help", "--helpshort", "--helpfull", "-?")


def _kind(field: dataclasses.Field) -> type:
    """The flag type of a config field: its type without None; tuples are given as text."""
    kinds = [t for t in typing.get_args(field.type) if t is not type(None)] if isinstance(
        field.type, types.UnionType) else [field.type]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    return str if kind is tuple else kind


def define_flags(config_class, fv: flags.FlagValues) -> None:
    """One flag per config field, with the field's default and help."""
    for field in dataclasses.fields(config_class):
        meta, kind = field.metadata, _kind(field)
        default = field.default if not isinstance(field.default, tuple) else ",".join(map(str, field.default))
        if meta.get("choices"):
            flags.DEFINE_enum(field.name, default, meta["choices"], _help_text(field), flag_values=fv)
        else:
            define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}.get(
                kind, flags.DEFINE_string)
            define(field.name, default, _help_text(field), flag_values=fv)


def _help_text(field: dataclasses.Field) -> str:
    return field.metadata["help"] + (" (required)" if field.metadata.get("required") else "")


def config_from_flags(config_class, fv: flags.FlagValues):
    """The frozen config; its construction checks every value. Every missing required flag is named in one line."""
    missing = [f"--{field.name}" for field in dataclasses.fields(config_class)
               if field.metadata.get("required") and fv[field.name].value is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (see --help)")
    values = {}
    for field in dataclasses.fields(config_class):
        value, parse = fv[field.name].value, field.metadata.get("parse")
        values[field.name] = parse(value) if parse and isinstance(value, str) else value
    return config_class(**values)


def _flagfiles(args: list[str]):
    """The flag files named in `args`, in both forms: --flagfile=F and --flagfile F."""
    for i, arg in enumerate(args):
        if arg.startswith(("--flagfile=", "-flagfile=")):
            yield arg.split("=", 1)[1]
        elif arg in ("--flagfile", "-flagfile") and i + 1 < len(args):
            yield args[i + 1]


def check_flagfiles(args: list[str], seen: tuple = ()) -> None:
    """Every line of a flag file is a flag (a line without leading dashes would be silently ignored); a flag file
    is a regular file, and never includes itself (also through a link)."""
    for path in _flagfiles(args):
        if os.path.realpath(path) in seen:
            raise UsageError(f"--flagfile={path} includes itself")
        if os.path.exists(path) and not os.path.isfile(path):
            raise UsageError(f"--flagfile={path} is not a regular file: pass the path of a flag file")
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--flagfile={path}: cannot read it ({getattr(e, 'strerror', None) or e}): check the "
                             "path") from None
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if text and not text.startswith(("#", "//", "-")):
                raise UsageError(f"{path} line {number}: {text!r} is not a flag: write it as --{text}")
        check_flagfiles([part for line in lines for part in line.strip().split(None, 1)],
                        (*seen, os.path.realpath(path)))


def os_error_line(error: OSError) -> str:
    """'PATH: reason' for an error the operating system gave (read-only file system, disk full, ...)."""
    path = error.filename or (error.args[-1] if error.args and isinstance(error.args[-1], str) else "")
    reason = error.strerror or errno.errorcode.get(error.errno or 0, "") or str(error)
    hint = {errno.ENOSPC: "free some space or write elsewhere", errno.EROFS: "write elsewhere",
            errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
            errno.EISDIR: "pass a file path", errno.ENOTDIR: "pass a path whose parents are directories",
            errno.EFBIG: "raise the file-size limit or write elsewhere"}.get(error.errno, "check the path")
    if error.errno == errno.ENOSPC and path and "://" not in path:
        from trainer import storage
        reason += f" (the file system mounted at {storage.mount_point(path)} is full)"
    return f"{path}: {reason}: {hint}" if path else f"{reason}: {hint}"


LIBRARIES = tuple(f"{os.sep}{name}{os.sep}" for name in ("tensorflow", "tf_keras", "keras", "transformers", "datasets"))


def _ours_or_a_warning(record: std_logging.LogRecord) -> bool:
    """The libraries' own info lines (e.g. TensorFlow's "Sharding callback duration") say nothing to a user."""
    return record.levelno >= std_logging.WARNING or not any(part in record.pathname for part in LIBRARIES)


def _route_logs_to_stdout() -> None:
    flags.FLAGS.mark_as_parsed()    # absl logging: no "logging before flag parsing" notice
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    handler.python_handler.stream = sys.stdout
    handler.addFilter(_ours_or_a_warning)
    std_logging.captureWarnings(True)
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")   # read when these libraries set their loggers up
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    for noisy in ("tensorflow", "transformers", "datasets", "h5py", "urllib3", "filelock"):
        std_logging.getLogger(noisy).setLevel(std_logging.ERROR)
    for network in ("fsspec", "gcsfs", "aiohttp", "asyncio", "google", "google_auth_httplib2"):   # retries, tracebacks
        std_logging.getLogger(network).setLevel(std_logging.CRITICAL + 1)
    if not sys.stderr.isatty():   # datasets' progress bars go to stderr: only on a terminal
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"


def _help(fv: flags.FlagValues, script: bool) -> str:
    """The command's own flags with their help (for a script on absl's global flags: its module's only)."""
    if not script:
        return fv.get_help(include_special_flags=False)
    return "\n".join(fv.module_help(module) for module in fv.flags_by_module_dict() if "absl" not in module)


def _interrupt(signum, frame):
    """The first SIGINT/SIGTERM unwinds (so every staged output is removed on the way out); later ones are
    ignored, so cleanup code (datasets' included) is never cut short with a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


TRACEBACK = "TRAINER_TRACEBACK"      # set to 1 to see the traceback behind an internal error (for a bug report)


def fail(message: str, status: int = 2) -> typing.NoReturn:
    """`error: message` as the one stderr line (newlines inside it, e.g. from a path, are shown escaped)."""
    sys.stdout.flush()
    print(f"error: {message}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr, flush=True)
    sys.exit(status)


def _internal(error: BaseException) -> typing.NoReturn:
    """The net under every specific message: one line, exit 1; the traceback only when asked for."""
    if os.environ.get(TRACEBACK):
        import traceback
        traceback.print_exception(error, file=sys.stdout)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    fail(f"internal error: {type(error).__name__}: {first} (set {TRACEBACK}=1 to see the traceback, and please "
         "report it)", 1)


def run(config_class, main: Callable, doc: str, takes_arguments: bool = False, argv: list[str] | None = None,
        flag_values: flags.FlagValues | None = None) -> None:
    """Parse and check the flags into a config, then main(config, arguments). Every user-fixable problem ends
    in one line on stderr and exit status 2; --help prints the usage and the flags, exit 0. flag_values: a
    script's own absl flags (benchmarks), parsed beside the config's."""
    argv = list(sys.argv if argv is None else argv)
    fv = flag_values or flags.FlagValues()
    define_flags(config_class, fv)
    if any(arg in HELP for arg in argv[1:]):
        print(doc.strip() + "\n\nflags:\n" + _help(fv, script=flag_values is not None))
        sys.exit(0)
    try:
        check_flagfiles(argv[1:])
        try:
            arguments = fv(argv)[1:]
        except flags.Error as e:
            raise UsageError(f"{e} (see --help)") from None
        if arguments and not takes_arguments:
            raise UsageError(f"unexpected argument {arguments[0]!r}: flags take the form --name=value (booleans: "
                             "--name or --noname)")
        config = config_from_flags(config_class, fv)
        _route_logs_to_stdout()
        signal.signal(signal.SIGTERM, _interrupt)     # training installs its own (save, then stop)
        signal.signal(signal.SIGINT, _interrupt)
        main(config, arguments)
    except Error as e:
        fail(str(e))
    except OSError as e:
        fail(os_error_line(e))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 (the last line of defence)
        _internal(e)
