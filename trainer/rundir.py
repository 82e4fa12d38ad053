"""A run's output directory: its file names, its owner (an OS lock on a local directory, a lease object in a
bucket; for a bucket, a local mirror synced up at every checkpoint), its identity, its checkpoints' soundness,
and the stale staging a killed process left in it.

The directory is a state machine; each state has one outcome on the next run of the same command:

  empty -> running -> resumable (checkpoints) -> finishing -> finished (metrics.json, written last)
  resumable, other settings            -> refused, one line naming each differing setting
  resumable, newest checkpoint damaged -> resumes from the next intact one, saying so in one line
  resumable, no checkpoint intact      -> refused, one line
  finishing (killed after training)    -> the rerun finishes it (every phase after training is idempotent)
  finished                             -> refused, unless --overwrite_output_dir
"""
import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import socket
import threading
import time
import typing
import uuid

from absl import logging

from trainer import schema, storage
from trainer.errors import UsageError

LOCK = ".lock"
IDENTITY = "run.json"           # what makes the run this run: compared on every rerun
METRICS = "metrics.json"        # written last: the run is finished
CHECKPOINTS = "checkpoints"
BEST = "best"                   # the best weights, and best/best.json naming their step and value
BEST_INFO = "best.json"
EXPORT = "export"
STEPS_CSV = "steps.csv"
VALIDATION_CSV = "validation.csv"
RECOVERIES = "recoveries.json"   # recoveries from divergence: the run's state (its lowered learning rate)
LOGS = "logs"
SET_ASIDE = "set-aside"          # intact checkpoints or best weights a run cannot use (another run's, misnamed)
CURVES = "curves.png"            # drawn from the two CSVs at the end of a run

CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)$")
LEASE_SECONDS = 90          # a bucket lock whose holder has not renewed it for this long is free
RENEW_SECONDS = 20


class RunDir:
    """A run's output directory, owned by one process at a time.

    `path` is where the run's files are written: the directory itself, or for a URL a local mirror
    whose state (checkpoints, best weights, CSVs) is downloaded on open and uploaded by `sync()`.
    Only the chief (is_chief) takes the lock and writes; other workers only read.
    """
    MIRRORED = ("checkpoints", "best")          # kept identical remotely, deletions included

    def __init__(self, url: str, is_chief: bool = True):
        self.url, self.is_chief, self.remote = url, is_chief, storage.is_url(url)
        self.path = os.path.join(storage.CACHE, "runs", hashlib.sha256(url.encode()).hexdigest()[:24]) if self.remote else url
        self._lock = None
        self._found: set[str] | None = None      # the names the directory held when opened (None: it did not exist)
        self._uploaded: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> "RunDir":
        if self.is_chief:
            self._found = set(self._names()) if storage.exists(self.url) else None
            self._lock = (BucketLock if self.remote else FileLock)(self.url)
        if self.remote:
            shutil.rmtree(self.path, ignore_errors=True)
            os.makedirs(self.path)
            if storage.exists(self.url):
                self._download_state()
        elif self.is_chief:
            for path in storage.remove_staging(self.path):
                logging.info("removed %s, left by a process that was stopped while writing it", path)
        return self

    def file(self, *names: str) -> str:
        """The local path of one of the run's files."""
        return os.path.join(self.path, *names)

    def __exit__(self, kind, error, traceback):
        try:
            if self.is_chief and kind is None:
                self.sync()
            elif self.is_chief:
                self._undo_if_nothing_trained()
        finally:
            if self._lock:
                self._lock.release()

    def _names(self) -> list[str]:
        if self.remote:
            return storage.remote_files(*storage.filesystem(self.url))
        return os.listdir(self.url) if os.path.isdir(self.url) else []

    def _undo_if_nothing_trained(self) -> None:
        """A run refused (or stopped) before it wrote more than its lock and identity leaves the directory as it
        found it: a directory it made is removed, in one it found only what it added goes. (The lock goes while
        still held: a process waiting for it opens the path anew.)"""
        found, names = self._found or set(), set(self._names())
        added = names - found
        if not added <= {LOCK, IDENTITY}:
            return
        if self._found is None:
            storage.remove_tree(self.url)
        elif not self.remote:
            for name in added:
                os.remove(os.path.join(self.url, name))
            if LOCK in found:
                self._lock.restore_previous_holder()

    def _download_state(self) -> None:
        fs, path = storage.filesystem(self.url)
        for name in storage.remote_files(fs, path):
            if name.split("/")[0] in self.MIRRORED or name.endswith((".csv", ".json")) and "/" not in name:
                destination = os.path.join(self.path, name)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                fs.get_file(posixpath.join(path, name), destination)
                self._uploaded[name] = _stamp(destination)

    def sync(self) -> None:
        """Upload what changed in the local mirror (checkpoint index files last); delete what the mirror
        dropped from checkpoints/ and best/. Nothing to do for a local run directory."""
        if not (self.remote and self.is_chief):
            return
        fs, path = storage.filesystem(self.url)
        current = {name: _stamp(os.path.join(self.path, name)) for name in storage.relative_files(self.path)}
        changed = [name for name, stamp in current.items() if self._uploaded.get(name) != stamp]
        for name in sorted(changed, key=lambda n: (posixpath.basename(n) in ("checkpoint", "best.json"), n)):
            fs.put_file(os.path.join(self.path, name), posixpath.join(path, name))
        for name in set(self._uploaded) - set(current):
            if name.split("/")[0] in self.MIRRORED:
                fs.rm_file(posixpath.join(path, name))
        self._uploaded = current

    def reset(self) -> None:
        """Remove the old run's files (--overwrite_output_dir), keeping the lock."""
        for name in os.listdir(self.path):
            if name != LOCK:
                storage.remove_tree(os.path.join(self.path, name))
        if self.remote:
            fs, path = storage.filesystem(self.url)
            for name in storage.remote_files(fs, path):
                if name != LOCK:
                    fs.rm_file(posixpath.join(path, name))
            self._uploaded = {}


def _stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _in_use(url: str, holder: dict | None) -> UsageError:
    known = isinstance(holder, dict) and all(key in holder for key in ("pid", "host", "since"))
    who = f"process {holder['pid']} on {holder['host']} since {holder['since']}" if known else "another process"
    return UsageError(f"{url} is in use by {who}: wait for that run to end (or stop it), or pass another "
                      "--output_dir")


class FileLock:
    """An OS lock (flock) on DIR/.lock: released by the kernel when its process ends, even by kill -9."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.file, self.previous_holder = _locked(os.path.join(directory, LOCK), directory)

    def restore_previous_holder(self) -> None:
        """Put back the holder record the file had before this process took the lock (a refused run leaves the
        directory as it found it)."""
        self.file.seek(0)
        self.file.truncate()
        self.file.write(self.previous_holder)
        self.file.flush()

    def release(self) -> None:
        self.file.close()


class BucketLock:
    """A lease on URL/.lock: created only if absent (a generation precondition), renewed every
    RENEW_SECONDS by a thread. A lease is taken over when its holder is a dead process on this host,
    or when it has not been renewed for LEASE_SECONDS (its host is gone, e.g. a preempted VM)."""

    def __init__(self, url: str):
        self.fs, self.path = storage.filesystem(storage.join(url, LOCK))
        self.url, self.stop = url, threading.Event()
        for _ in range(2):
            if self._create():
                break
            holder = storage.read_json(storage.join(url, LOCK))
            if not self._stale(holder):
                raise _in_use(url, holder)
            self.fs.rm_file(self.path)
        else:
            raise _in_use(url, storage.read_json(storage.join(url, LOCK)))
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _create(self) -> bool:
        """Create the lease object only if there is none (GCS: ifGenerationMatch=0, which the emulator the tests
        use does not enforce; real GCS does)."""
        self.holder = {**_holder(), "renewed": time.time()}
        if self.fs.exists(self.path):
            return False
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(json.dumps(self.holder).encode())
            return True
        except FileExistsError:
            return False

    def _stale(self, holder: dict | None) -> bool:
        if not holder:
            return True
        if holder.get("host") == socket.gethostname():
            return not _alive(holder.get("pid", -1))
        return time.time() - holder.get("renewed", 0) > LEASE_SECONDS

    def _renew(self) -> None:
        while not self.stop.wait(RENEW_SECONDS):
            self.holder["renewed"] = time.time()
            with contextlib.suppress(OSError):
                self.fs.pipe_file(self.path, json.dumps(self.holder).encode())

    def release(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError, FileNotFoundError):
            self.fs.rm_file(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


DIRECTORIES, FILES = (CHECKPOINTS, BEST, LOGS, EXPORT), (IDENTITY, METRICS, STEPS_CSV, VALIDATION_CSV, RECOVERIES)


def check_layout(run_dir: RunDir) -> None:
    """Each of the run's names is the kind of thing the run writes there (a directory, or a regular file), and
    nothing in the directory is a pipe, device or socket (reading one would block or never end)."""
    storage.check_regular_files(run_dir.path, run_dir.url, "remove it, or pass --overwrite_output_dir to start "
                                "afresh, or another --output_dir")
    for names, wanted, test in ((DIRECTORIES, "a directory", os.path.isdir), (FILES, "a file", os.path.isfile)):
        for name in names:
            path = run_dir.file(name)
            if os.path.lexists(path) and not test(path):
                raise UsageError(f"{run_dir.url}/{name} is not {wanted}: move it away, or pass --overwrite_output_dir "
                                 "to start afresh, or another --output_dir")


def is_run_dir(path: str) -> bool:
    """A local directory that a training run made: its identity is there, or its lock beside its files (a lock
    alone is any tool's)."""
    names = set(os.listdir(path)) if os.path.isdir(path) else set()
    return IDENTITY in names or (LOCK in names and bool(names & {CHECKPOINTS, METRICS, STEPS_CSV, LOGS}))


class OutputLock:
    """An OS lock on a hidden file beside an output that is replaced whole (a prepared dataset): one writer at a
    time, and the holder removes the staging a killed writer left beside it. The lock file goes on release."""

    def __init__(self, target: str):
        self.target, self.file = target, None
        if storage.is_url(target):
            return                  # staged in the local temp directory: nothing beside a bucket output
        parent = os.path.dirname(os.path.abspath(target))
        os.makedirs(parent, exist_ok=True)           # as staging beside the output would
        self.file, _ = _locked(os.path.join(parent, f".{os.path.basename(target)[:80]}.lock"), target)
        for stale in storage.remove_staging(None, beside=target):
            logging.info("removed %s, left by a process that was stopped while writing it", stale)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.file:
            with contextlib.suppress(OSError):
                os.remove(self.file.name)
            self.file.close()


def _locked(path: str, owner: str) -> tuple[typing.TextIO, str]:
    """An open file holding an exclusive flock on `path` (the same inode the path names after locking, so a
    holder that removes the file on release cannot let two processes in), and the holder record it held."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise storage.not_regular(path, "remove it")
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                holder = json.loads(f.read() or "null")
            except ValueError:
                holder = None
            f.close()
            raise _in_use(owner, holder if isinstance(holder, dict) else None) from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            f.seek(0)
            previous = f.read()
            f.seek(0)
            f.truncate()
            f.write(json.dumps(_holder()) + "\n")
            f.flush()
            return f, previous
        f.close()


# ---- identity ---------------------------------------------------------------------------------------------

def check_identity(run_dir: RunDir, settings: dict, flags: dict, legacy: dict | None = None) -> str | None:
    """Record `settings` (what makes this run this run) and a new run id at the run's start; on a rerun, refuse
    in one line any difference. `flags` maps a setting to the flag that sets it, for the message; `legacy` gives
    the value a setting had before run.json recorded it. Returns the run id its checkpoints and best weights
    carry (None for a run made before run ids were recorded)."""
    path = run_dir.file(IDENTITY)
    recorded = read_state(path, f"{run_dir.url}/{IDENTITY}", schema.RUN_IDENTITY)
    if recorded is not None:
        run_id, recorded = recorded.get("run_id"), {**(legacy or {}), **recorded["settings"]}
    elif has_checkpoints(run_dir):
        raise UsageError(f"{run_dir.url} holds checkpoints but no {IDENTITY} saying which settings made them: restore "
                         "the file, or pass --overwrite_output_dir to start afresh, or another --output_dir")
    if recorded is None:
        if not run_dir.is_chief:
            return None          # the chief writes run.json; a worker's own saves are scratch copies
        run_id = uuid.uuid4().hex
        storage.write_json(path, {"format": 1, "run_id": run_id, "settings": settings})
        return run_id
    differing = [name for name in sorted(set(settings) | set(recorded)) if settings.get(name) != recorded.get(name)]
    if differing:
        shown = "; ".join(f"{flags.get(name, name)} was {_text(recorded.get(name), settings.get(name))}, now "
                          f"{_text(settings.get(name), recorded.get(name))}" for name in differing)
        raise UsageError(f"{run_dir.url} is a run with other settings ({shown}): rerun with the recorded values to "
                         "resume it, or pass --overwrite_output_dir to start afresh, or another --output_dir")
    return run_id


def read_state(path: str, shown: str, spec: dict) -> dict | None:
    """One of the run's state files (run.json, recoveries.json), checked against its schema; None if it is not
    there. A damaged one is refused: the run cannot go on without knowing what it said."""
    if not os.path.exists(path):
        return None
    found = storage.read_json(path)
    fix = "restore it from a copy, or pass --overwrite_output_dir to start afresh, or another --output_dir"
    if found is None:
        raise UsageError(f"{shown} is damaged (not JSON): {fix}")
    schema.check(found, spec, shown, fix)
    return found


def recorded(run_dir: RunDir, name: str):
    """A setting as the run's run.json records it, or None (no run.json yet, or not readable: check_identity
    says what is wrong with it)."""
    path = run_dir.file(IDENTITY)
    found = storage.read_json(path) if os.path.isfile(path) else None
    settings = found.get("settings") if isinstance(found, dict) else None
    return settings.get(name) if isinstance(settings, dict) else None


def _text(value, other) -> str:
    """A value as a flag would show it; as JSON where that would look the same as the value it differs from."""
    shown = {None: "unset"}.get(value) if value is None else ",".join(map(str, value)) if isinstance(value, list) \
        else str(value)
    return json.dumps(value) if shown == (str(other) if other is not None else "unset") else shown


# ---- checkpoints ------------------------------------------------------------------------------------------

def has_checkpoints(run_dir: RunDir) -> bool:
    directory = run_dir.file(CHECKPOINTS)
    return os.path.isdir(directory) and bool(os.listdir(directory))


def checkpoint_numbers(directory: str) -> list[int]:
    """Every step some file of a checkpoint in `directory` is named after, newest first."""
    found = {int(m.group(1)) for name in (os.listdir(directory) if os.path.isdir(directory) else [])
             if (m := CHECKPOINT_NAME.match(name))}
    return sorted(found, reverse=True)


def checkpoint_problem(prefix: str) -> str | None:
    """Why the checkpoint at `prefix` cannot be trusted, or None: every tensor in it must read back (its
    checksum is verified as it is read) and every floating-point one must be finite, optimizer state included."""
    import numpy as np
    import tensorflow as tf
    if not os.path.exists(prefix + ".index"):
        return "its .index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(name))):
                return f"{name.split('/.ATTRIBUTES')[0]} is not finite"
            if not dtype.is_floating:
                reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 (a damaged file fails in many ways: OpError, IndexError, ValueError)
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return None


STAMP = "run/.ATTRIBUTES/py_state"      # the run id a checkpoint carries (callbacks.RunStamp)


def checkpoint_run_id(prefix: str) -> str | None:
    """The run id an (intact) checkpoint carries, or None."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return reader.get_tensor(STAMP).decode() or None if STAMP in reader.get_variable_to_dtype_map() else None


def not_this_runs(prefix: str, number: int, run_id: str | None) -> str | None:
    """Why an intact checkpoint is not this run's checkpoint `number`, or None: another run's id, or a step
    that is not its number. Read from the file alone: nothing is restored."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    names = reader.get_variable_to_dtype_map()
    stamp = checkpoint_run_id(prefix)
    if run_id and stamp != run_id:
        return f"another run's ({'run id ' + stamp if stamp else 'no run id'}; this run's is {run_id})"
    step = next((int(reader.get_tensor(n)) for n in names if n.startswith("optimizer/")
                 and n.endswith("/iter/.ATTRIBUTES/VARIABLE_VALUE")), None)
    return None if step == number else f"it holds step {step}"


def remove_checkpoint(directory: str, number: int) -> None:
    for name in os.listdir(directory):
        m = CHECKPOINT_NAME.match(name)
        if m and int(m.group(1)) == number:
            os.remove(os.path.join(directory, name))


def set_aside(run_dir: "RunDir", directory: str, number: int) -> str:
    """Move an intact checkpoint this run cannot use out of its way, into RUN/set-aside/<kind>/ (a later one of
    the same name goes beside it, numbered). Returns where it went, as the user names the run."""
    kind = os.path.basename(directory)
    target = storage.new_dir(run_dir.file(SET_ASIDE), f"{kind}-ckpt-{number}-")
    for name in os.listdir(directory):
        m = CHECKPOINT_NAME.match(name)
        if m and int(m.group(1)) == number:
            os.rename(os.path.join(directory, name), os.path.join(target, name))
    return f"{run_dir.url}/{SET_ASIDE}/{os.path.basename(target)}"


def point_to(directory: str, numbers: list[int]) -> None:
    """Rewrite the `checkpoint` pointer file to list these checkpoints, the last one newest (none: remove it).
    Each gets a save time (its index file's): a CheckpointManager keeps a listed checkpoint without one forever,
    and deletes one with one in its turn, so a resumed run keeps only the newest checkpoints, as an uninterrupted
    one does."""
    import tensorflow as tf
    if not numbers:
        os.remove(os.path.join(directory, "checkpoint"))
        return
    paths = [os.path.join(directory, f"ckpt-{n}") for n in numbers]
    times = [os.stat(f"{path}.index").st_mtime for path in paths]
    tf.compat.v1.train.update_checkpoint_state(directory, paths[-1], all_model_checkpoint_paths=paths,
                                               all_model_checkpoint_timestamps=times, last_preserved_timestamp=0)
