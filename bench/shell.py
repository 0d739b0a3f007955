"""The benchmark's messages and its one error."""

from __future__ import annotations

import sys


class BenchError(Exception):
    """The benchmark could not set up or run; the message says why."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
