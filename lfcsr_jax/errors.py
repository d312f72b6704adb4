"""One way for every command to report a user error: one line on stderr, exit code 2.

A user error is a bad flag value, a missing or corrupt input file, an unusable output location:
something the person running the command can fix, and for which a traceback is noise. Every
module raises `UserError` (or a subclass: `train.UserError`, `exports.CheckpointError`,
`super_resolve.SuperResolveError`, `image_io.ImageReadError`) with a message that names the flag
or the file and says what to do; the command's entry point wraps its `main` with
`reports_user_errors(prog)`, which prints `prog: error: <message>` and exits with status 2 (the
status argparse uses for bad arguments). Anything else is a bug and keeps its traceback.

`UserExit` is the SystemExit raised: its exit code is 2 and its str() is the message, so callers
that run `main` in-process (tests, notebooks) can still match on the text. The checks of output
locations that raise these errors (check_output_dir, same_location) live in paths.py.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

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
