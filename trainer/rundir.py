"""A run's output directory, owned by one process at a time: an OS lock on a local directory, a lease object in
a bucket; for a bucket, a local mirror that is synced up at every checkpoint."""
import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import socket
import threading
import time

from trainer import storage
from trainer.errors import UsageError

LOCK = ".lock"
LEASE_SECONDS = 90          # a bucket lock whose holder has not renewed it for this long is free
RENEW_SECONDS = 20


class RunDir:
    """A run's output directory, owned by one process at a time.

    `path` is where the run's files are written: the directory itself, or for a URL a local mirror
    whose state (checkpoints, best weights, CSVs) is downloaded on open and uploaded by `sync()`.
    Only the writer (the chief) takes the lock and writes; other workers only read.
    """
    MIRRORED = ("checkpoints", "best")          # kept identical remotely, deletions included

    def __init__(self, url: str, writer: bool = True):
        self.url, self.writer, self.remote = url, writer, storage.is_url(url)
        self.path = os.path.join(storage.CACHE, "runs", hashlib.sha256(url.encode()).hexdigest()[:24]) if self.remote else url
        self._lock = None
        self._created = False
        self._uploaded: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> "RunDir":
        if self.writer:
            self._created = not storage.exists(self.url)
            self._lock = (BucketLock if self.remote else FileLock)(self.url)
        if self.remote:
            shutil.rmtree(self.path, ignore_errors=True)
            os.makedirs(self.path)
            if storage.exists(self.url):
                self._download_state()
        return self

    def __exit__(self, kind, error, traceback):
        try:
            if self.writer and kind is None:
                self.sync()
        finally:
            if self._lock:
                self._lock.release()
            if self._created and kind is not None:
                self._remove_if_only_the_lock()

    def _remove_if_only_the_lock(self) -> None:
        """A run refused before it wrote anything leaves nothing behind."""
        names = set(storage.remote_files(*storage.filesystem(self.url)) if self.remote else
                    (os.listdir(self.url) if os.path.isdir(self.url) else []))
        if names <= {LOCK}:
            storage.remove_tree(self.url)

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
        if not (self.remote and self.writer):
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
        """Remove a finished run's files (--overwrite_output_dir), keeping the lock."""
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
    who = f"process {holder['pid']} on {holder['host']} since {holder['since']}" if holder else "another process"
    return UsageError(f"{url} is in use by {who}: wait for that run to end (or stop it), or pass another "
                      "--output_dir")


class FileLock:
    """An OS lock (flock) on DIR/.lock: released by the kernel when its process ends, even by kill -9."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, LOCK)
        self.file = open(path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = storage.read_json(path)
            self.file.close()
            raise _in_use(directory, holder) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps(_holder()) + "\n")
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
