"""The benchmark's messages, its one error, and the setup commands it runs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


class BenchError(Exception):
    """The benchmark could not set up or run; the message says why."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sh(*argv: Any, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A setup command; BenchError with its output if it fails."""
    argv_s = [str(arg) for arg in argv]
    result = subprocess.run(argv_s, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(argv_s)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result
