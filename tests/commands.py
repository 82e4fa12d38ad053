"""The commands run as `python -m trainer.cli.NAME` would run them, in children of a fork server (multiprocessing's
"forkserver") that has imported transformers and datasets once: a refusal then costs a fork, not the seconds a
fresh process spends importing them. Never TensorFlow: it starts threads at import, and forking after that is unsafe
(the server runs at most OpenBLAS's thread pool and jemalloc's background thread besides, which both handle a fork)."""
import atexit
import multiprocessing
import os
import pathlib
import runpy
import subprocess
import sys
import tempfile
from multiprocessing import forkserver
from unittest import mock

PRELOAD = ["commands", "trainer.cli", "trainer.config", "trainer.checks", "transformers", "datasets"]
# Not the trainer.cli.* modules themselves: runpy would warn on stderr that the module it runs is already imported.

# The commands set these before they import transformers and datasets, which read them at import (see
# trainer/cli/__init__.py, _route_logs_to_stdout): the server imports them with the same values, or a child would
# show datasets' progress bars on stderr where a fresh process shows none.
QUIET = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def start() -> multiprocessing.context.BaseContext:
    """The fork server of this process (one per pytest-xdist worker), with this process's environment plus QUIET
    and its sys.path, which finds `trainer` and this module."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with mock.patch.dict(os.environ, QUIET):
        forkserver.ensure_running()
    probe = context.Process(target=_check_preloaded)
    probe.start()
    probe.join(600)
    assert probe.exitcode == 0, f"the fork server did not import all of {PRELOAD}, or it imported TensorFlow"
    return context


def _check_preloaded() -> None:
    """In a child: the server imported every module of PRELOAD (it ignores an ImportError), and not TensorFlow."""
    sys.exit(0 if set(PRELOAD) <= sys.modules.keys() and "tensorflow" not in sys.modules else 3)


def run(context, module: str, args: list[str], cwd, timeout: float) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `python -m MODULE ARGS` in cwd, stdin from /dev/null, run by a child of the fork
    server; killed after `timeout` seconds (subprocess.TimeoutExpired, as subprocess.run)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = pathlib.Path(tmp, "stdout"), pathlib.Path(tmp, "stderr")
        out.touch()
        err.touch()
        child = context.Process(target=_run_module, args=(module, list(args), str(cwd), str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([module, *args], timeout)
        status = child.exitcode
        child.close()
        return status, out.read_bytes().decode(errors="replace"), err.read_bytes().decode(errors="replace")


def _run_module(module: str, args: list[str], cwd: str, out: str, err: str) -> None:
    """In a child: the command on fds 0-2 of its own (so what C and C++ code writes is caught too). Its SystemExit
    ends the child with its status, through multiprocessing, as it ends the interpreter."""
    sys.stdout.flush()       # nothing of the server's may land in the files
    sys.stderr.flush()
    os.chdir(cwd)
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY), (2, err, os.O_WRONLY)):
        opened = os.open(path, mode)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)     # multiprocessing's stand-in reads another descriptor
    sys.argv = [module, *args]           # runpy makes argv[0] the module's path, as `python -m` does
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()          # as the interpreter does on its way out
        sys.stdout.flush()
        sys.stderr.flush()
