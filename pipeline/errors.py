"""User-facing errors: one paragraph naming the file/layer/parameter and the fix."""
from __future__ import annotations

import functools
import sys


class TvmqError(Exception):
    """An error caused by the user's input or configuration, not by a bug in tvmq.

    Stages print it as a single paragraph (no traceback) and exit with status 2.
    """


def cli_main(fn):
    """Wrap a stage's `main` so that a TvmqError becomes a clear message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TvmqError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
