"""One way for every command to report a user error: one line on stderr, exit code 2.

A user error is a bad flag value, a missing or corrupt input file, an unusable output location:
something the person running the command can fix, and for which a traceback is noise. Every
module raises `UserError` (or a subclass: `train.UserError`, `checkpointing.CheckpointError`,
`super_resolve.SuperResolveError`, `image_io.ImageReadError`) with a message that names the flag
or the file and says what to do; the command's entry point wraps its `main` with
`reports_user_errors(prog)`, which prints `prog: error: <message>` and exits with status 2 (the
status argparse uses for bad arguments). Anything else is a bug and keeps its traceback.

`UserExit` is the SystemExit raised: its exit code is 2 and its str() is the message, so callers
that run `main` in-process (tests, notebooks) can still match on the text.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from typing import Any, Callable, TypeVar

from lfcsr_jax import paths

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """A problem the user can fix; the message names the flag or file and the remedy."""


class UserExit(SystemExit):
    """SystemExit with status 2 whose str() is the one-line message already printed."""

    def __init__(self, message: str):
        super().__init__(EXIT_USER_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message


def one_line(text: str) -> str:
    """Collapses whitespace runs (including newlines) so a message stays on one line."""
    return " ".join(str(text).split())


def exit_with(prog: str, error: BaseException | str) -> None:
    """Prints `prog: error: message` on stderr and raises UserExit (status 2)."""
    message = f"{prog}: error: {one_line(error)}"
    print(message, file=sys.stderr, flush=True)
    raise UserExit(message)


def reports_user_errors(prog: str) -> Callable[[F], F]:
    """Decorator for a command's `main`: UserError -> one stderr line and exit status 2."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UserError as error:
                exit_with(prog, error)
            return None  # unreachable

        return wrapper  # type: ignore[return-value]

    return decorate


# ----------------------------------------------------------------------------- output locations


def check_output_dir(path: paths.PathLike, flag: str) -> paths.Path:
    """Fails now (before any compute) unless `path` is, or can be created as, a writable folder.

    Creates no folder: walks up to the nearest existing ancestor, which must be a folder where a
    file can be created (tested by creating and removing one).
    On an object store (gs://) there are no folders to create and no write permission to probe
    without writing; the checks are that no object has the name of the folder or of a folder
    above it, and that the bucket exists.
    """
    shown = os.fspath(path)
    out = paths.location(path)
    if paths.is_remote(out):
        try:
            _check_remote_output_dir(out, shown, flag)
        except UserError:
            raise
        except Exception as error:  # no credentials, no network: gcsfs raises its own types
            raise UserError(f"{flag}={shown} cannot be checked ({type(error).__name__}: "
                            f"{error})") from error
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag}={shown} exists and is not a folder")
    probe = out
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{flag}={shown}: {probe} is a file, so no folder can be created below it")
    _check_writable_by_writing(probe, shown, flag)
    return out


def _check_writable_by_writing(folder: paths.Path, shown: str, flag: str) -> None:
    """Creates and removes a small file in `folder`. os.access answers from the permission bits
    and says yes to root on any folder, including read-only mounts and pseudo file systems
    (/sys, /proc) where every write fails; only a write tells."""
    try:
        fd, probe_file = tempfile.mkstemp(prefix=".lfcsr-write-probe-", dir=os.fspath(folder))
    except OSError as error:
        raise UserError(f"{flag}={shown}: {folder} is not writable ({error.strerror or error}); "
                        "choose a folder you can write to") from error
    os.close(fd)
    os.unlink(probe_file)


def _check_remote_output_dir(out: paths.Path, shown: str, flag: str) -> None:
    """An object named like the folder or a folder above it would hide what is written below;
    a missing bucket would fail only at the first write, after the compute."""
    if out.is_file():
        raise UserError(f"{flag}={shown} exists and is not a folder")
    bucket = bucket_of(out)
    probe = out.parent
    while len(os.fspath(probe)) > len(os.fspath(bucket)):
        if probe.is_file():
            raise UserError(f"{flag}={shown}: {probe} is a file, so no folder can be created "
                            "below it")
        probe = probe.parent
    if not bucket.exists():
        raise UserError(f"{flag}={shown}: bucket {bucket} does not exist or is not readable")


def bucket_of(path: paths.PathLike) -> paths.Path:
    """gs://bucket of gs://bucket/a/b (the URI's scheme and first component)."""
    scheme, _, rest = os.fspath(path).partition("://")
    return paths.Path(f"{scheme}://{rest.split('/', 1)[0]}")


def same_location(a: paths.PathLike, b: paths.PathLike) -> bool:
    """Whether two user-given locations name the same file or folder (an output that would
    overwrite an input). Local: file identity (a symlink or hard link counts), else the resolved
    paths; URIs: the normalised strings (an object store has no links)."""
    if paths.is_remote(a) or paths.is_remote(b):
        return os.fspath(paths.location(a)) == os.fspath(paths.location(b))
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)
