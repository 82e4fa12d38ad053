"""Every file the project reads or writes, on a local path or a bucket URL (gs://, or any fsspec URL).

The rule: TensorFlow and datasets only ever see local paths. A URL is served through fsspec
(gcsfs for gs://): a prepared dataset or a model is copied to a local cache once and
memory-mapped from there; a run directory is worked on in a local mirror (rundir.py); whole
outputs (prepared data, exports) are staged locally and uploaded whole, with the file that marks
them complete last. Local outputs are staged beside their final place and renamed. Everything
follows the umask. Output paths are checked here too, before anything is written.
"""
import contextlib
import errno
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile

from trainer.errors import UsageError

CACHE = os.environ.get("TRAINER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sentiment-trainer"))


def is_url(path: str) -> bool:
    return "://" in path


def location(path: str) -> str:
    """The one form every check and write sees: a `file://` URL becomes its local path; a local path and a
    bucket URL stay as given (configs pass every path setting through this)."""
    if path.startswith("file://"):
        path = path[len("file://"):] or "/"
        return path if path.startswith("/") else "/" + path.split("/", 1)[-1]   # file://host/p -> /p
    return path


def hidden_name(target: str, tag: str) -> str:
    """The prefix of a staging name beside `target`: hidden, tagged, and short enough for any legal name."""
    return f".{posixpath.basename(target.rstrip('/'))[:80]}-{tag}-"


STAGING_TAGS = ("staged", "work", "old", "tmp")


def is_staging(name: str) -> bool:
    """A name this project gives staging files and directories (hidden_name), or TensorFlow's checkpoint temps."""
    return (name.startswith(".") and any(f"-{tag}-" in name for tag in STAGING_TAGS)) or name.endswith("_temp") \
        or (name.startswith("checkpoint.tmp"))


def remove_staging(directory: str, *, beside: str | None = None) -> list[str]:
    """Remove stale staging left by a killed process: inside `directory` (recursively), or only the siblings
    staged for `beside`. Call only while holding the lock that owns them. Returns what was removed."""
    removed = []
    if beside is not None:
        prefixes = tuple(hidden_name(beside, tag) for tag in STAGING_TAGS)
        parent = os.path.dirname(os.path.abspath(beside))
        names = [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefixes)]
    else:
        names = [os.path.join(root, n) for root, dirs, files in os.walk(directory) for n in dirs + files
                 if is_staging(n)]
    for path in names:
        if os.path.lexists(path):
            _remove(path)
            removed.append(path)
    return removed


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL."""
    # gcsfs >= 2026.3 first probes each bucket's layout over gRPC (for zonal and hierarchical buckets, which
    # this project does not need); against an emulator every call then waits 60 s for that probe to time out.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import fsspec
    try:
        fs, path = fsspec.core.url_to_fs(url, **_options(url))
    except (ImportError, ValueError) as e:
        scheme = url.split("://", 1)[0]
        raise UsageError(f"{url}: no filesystem for {scheme}:// ({e}): for gs:// install the gcs extra, "
                         "pip install -e '.[gcs]'") from None
    return fs, path


def _options(url: str) -> dict:
    if url.startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
        return {"token": "anon"}     # an emulator (the tests): no credentials
    return {}


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    fs, p = filesystem(path)
    return fs.exists(p)


def read_bytes(path: str) -> bytes:
    """A file's bytes. A local path must name a regular file: it is opened without blocking and checked before
    it is read (a pipe would block the read forever, a device never end)."""
    if not is_url(path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise not_regular(path)
            return f.read()
    fs, p = filesystem(path)
    return fs.cat_file(p)


def not_regular(path: str, fix: str = "remove it") -> UsageError:
    return UsageError(f"{path} is not a regular file (a pipe, device or socket): {fix}")


def check_regular_files(directory: str, shown: str, fix: str) -> None:
    """Every entry under a local directory is a directory or a regular file, checked before anything in it is
    opened (a pipe where a file should be would block its reader). `shown`: the directory as the user named it."""
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
                raise not_regular(os.path.join(shown, os.path.relpath(path, directory)), fix)


def read_json(path: str):
    """The parsed JSON at `path`, or None if it is missing or unreadable."""
    try:
        return json.loads(read_bytes(path))
    except (OSError, ValueError):
        return None


def named(error: OSError, path: str) -> OSError:
    """The error, naming `path` if the operating system's report named no file (e.g. a full disk mid-write)."""
    return error if error.filename else OSError(error.errno, error.strerror or str(error), path)


def no_space(error: Exception, path: str) -> OSError | None:
    """The error as an OSError naming `path` if it says the disk is full (TensorFlow and h5py report it in their
    own types), else None."""
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return None


def mount_point(path: str) -> str:
    """The mount point of the file system holding a local path (its nearest existing ancestor)."""
    path = os.path.abspath(path)
    while not (os.path.exists(path) and os.path.ismount(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def write_bytes(path: str, data: bytes) -> None:
    """Whole or not at all: a local file is written beside `path` and renamed; a bucket object is one upload."""
    if is_url(path):
        fs, p = filesystem(path)
        fs.pipe_file(p, data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, staged = tempfile.mkstemp(dir=directory, prefix=hidden_name(path, "tmp"))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(staged, 0o666 & ~umask())
        os.replace(staged, path)
    except OSError as e:
        _remove(staged)
        raise named(e, path) from None
    except BaseException:
        _remove(staged)
        raise


def write_json(path: str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def remove_tree(path: str) -> None:
    if is_url(path):
        fs, p = filesystem(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_dir(parent: str, prefix: str) -> str:
    """mkdtemp, with the mode a plain mkdir would give (mkdtemp's 0700 would hide shared outputs)."""
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, 0o777 & ~umask())
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@contextlib.contextmanager
def staged_dir(target: str, last: str | None = None):
    """Yield a new empty local directory. When the block succeeds its content becomes `target`, whole;
    when it fails it is removed and `target` is untouched.

    Local: built beside `target` and renamed (an old `target` is removed only after). URL: built in
    a local temporary directory and uploaded, `last` (the file that marks the output complete) last.
    """
    parent = tempfile.gettempdir() if is_url(target) else os.path.dirname(os.path.abspath(target))
    staged = new_dir(parent, hidden_name(target, "staged"))
    try:
        yield staged
        if is_url(target):
            upload_dir(staged, target, last=last)
        else:
            _replace_dir(staged, target)
    finally:
        _remove(staged)


def scratch_dir(near: str) -> str:
    """A new local directory for intermediate files: beside `near` if local (same disk), else in the temp dir."""
    parent = tempfile.gettempdir() if is_url(near) else os.path.dirname(os.path.abspath(near))
    return new_dir(parent, hidden_name(near, "work"))


def _replace_dir(staged: str, target: str) -> None:
    old = None
    if os.path.lexists(target):
        old = new_dir(os.path.dirname(os.path.abspath(target)), hidden_name(target, "old"))
        os.rename(target, os.path.join(old, "previous"))
    os.rename(staged, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def upload_dir(local_dir: str, url: str, last: str | None = None) -> None:
    """Replace the bucket prefix `url` by the content of `local_dir`; `last` is uploaded after everything else."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    files = sorted(relative_files(local_dir), key=lambda name: name == last)
    for name in files:
        fs.put_file(os.path.join(local_dir, name), posixpath.join(path, name))


def download_dir(url: str, local_dir: str) -> None:
    fs, path = filesystem(url)
    for name in remote_files(fs, path):
        destination = os.path.join(local_dir, name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        fs.get_file(posixpath.join(path, name), destination)


def relative_files(local_dir: str) -> list[str]:
    return [os.path.relpath(os.path.join(root, name), local_dir)
            for root, _, names in os.walk(local_dir) for name in names]


def remote_files(fs, path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    return [name[len(prefix):] for name in fs.find(path) if name.startswith(prefix)]


def local_copy(path: str) -> str:
    """A local directory holding `path`'s files: `path` itself if local; for a URL a cache copy, downloaded
    once and reused while every remote file keeps its name, size and generation (or modification time)."""
    if not is_url(path):
        return path
    fs, p = filesystem(path)
    listing = sorted((name, info.get("size"), str(info.get("generation") or info.get("mtime") or info.get("etag")))
                     for name, info in fs.find(p, detail=True).items())
    if not listing:
        raise UsageError(f"{path} holds no files: check the URL")
    key = hashlib.sha256(json.dumps([path, listing]).encode()).hexdigest()[:24]
    cached = os.path.join(CACHE, "copies", key)
    if not os.path.isdir(cached):
        staged = new_dir(os.path.dirname(cached), ".copy-")
        try:
            download_dir(path, staged)
            with contextlib.suppress(OSError):      # another process (a local worker) put it in place first
                os.rename(staged, cached)
        finally:
            _remove(staged)
    return cached


def _canonical(path: str) -> str:
    return path.rstrip("/") if is_url(path) else os.path.realpath(os.path.expanduser(path))


def _inside(path: str, parent: str) -> bool:
    separator = "/" if is_url(parent) else os.sep
    return path.startswith(parent.rstrip(separator) + separator)


def check_no_overlap(output: str, flag: str, inputs: dict[str, str | None]) -> None:
    """An output may never be, lie inside, or hold an input (data file, data directory, model directory)."""
    out = _canonical(output)
    for input_flag, path in inputs.items():
        if not path or is_url(path) != is_url(output) or (not is_url(path) and not os.path.exists(path)):
            continue
        source = _canonical(path)
        relation = ("is" if out == source else "lies inside" if _inside(out, source) else
                    "holds" if _inside(source, out) else None)
        if relation:
            raise UsageError(f"{flag}={output} {relation} the input {input_flag}={path}: writing there could destroy "
                             f"it; pass another {flag}")


def check_writable(path: str, flag: str, kind: str) -> None:
    """Refuse, touching nothing, an output path of the wrong kind (kind: "dir" or "file") or one that cannot be
    written: the nearest existing ancestor must be a writable directory."""
    if is_url(path):
        fs, p = filesystem(path)
        bucket = p.split("/")[0]
        try:
            found = fs.exists(bucket)
        except OSError as e:
            raise UsageError(f"{flag}={path}: cannot reach bucket {bucket} ({_reason(e)}): check the URL and "
                             "credentials") from None
        if not found:
            raise UsageError(f"{flag}={path}: there is no bucket {bucket}: create it, or check the URL")
        return
    if os.path.islink(path) and not os.path.exists(path):
        raise UsageError(f"{flag}={path} is a symlink to {os.readlink(path)}, which does not exist: pass another "
                         f"{flag}, or remove the link")
    if os.path.exists(path) and not (os.path.isdir(path) or stat.S_ISREG(os.stat(path).st_mode)):
        raise UsageError(f"{flag}={path} is a device or special file, not a {'directory' if kind == 'dir' else 'file'}"
                         f": pass a path on a file system")
    if os.path.isdir(path) and kind == "file":
        raise UsageError(f"{flag}={path} is a directory: pass a file path")
    if os.path.exists(path) and not os.path.isdir(path) and kind == "dir":
        raise UsageError(f"{flag}={path} is a file: pass a directory")
    ancestor = os.path.abspath(path if kind == "dir" else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UsageError(f"{flag}={path}: {ancestor} is a file, not a directory: pass another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}={path}: cannot write in {ancestor} ({_access_reason(ancestor)}): pass a "
                         f"writable {flag}")


def _access_reason(path: str) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error).splitlines()[0][:120] or type(error).__name__


def check_input_file(path: str, flag: str) -> None:
    """A data file that exists, is a readable regular file and is not empty."""
    if not os.path.exists(path):
        raise UsageError(f"{flag}={path} does not exist: pass the path of the data file")
    if os.path.isdir(path):
        raise UsageError(f"{flag}={path} is a directory: pass the path of a data file")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise UsageError(f"{flag}={path} is not a regular file (a device, pipe or socket): pass the path of a data "
                         "file")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise UsageError(f"{flag}={path} cannot be read ({_reason(e)}): check its permissions") from None
    if empty:
        raise UsageError(f"{flag}={path} is empty: pass a file with rows of text and label")
