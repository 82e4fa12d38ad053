"""The errors a user can act on. The command layer prints each as one line (`error: ...`) and exits 2."""


class Error(Exception):
    """A problem the user can act on; its message names the problem and the fix."""


class UsageError(Error):
    """Bad input: a flag, a path or a file. Found before any work wherever possible."""


class Diverged(Error):
    """Training produced a non-finite loss or weights. Not a usage error, but a setting fixes it."""
