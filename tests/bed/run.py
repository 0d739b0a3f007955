"""Running setup commands: checked, or with a timeout that ends the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from . import BedError

Argv = Sequence[str | os.PathLike[str]]


def run_checked(argv: Argv, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a setup command to completion, output captured; BedError with that output
    if it exits non-zero. Keywords go to subprocess.run (cwd, env, timeout, ...)."""
    args = [str(arg) for arg in argv]
    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise BedError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def run_in_group(
    argv: Argv, *, timeout: float, input: str | None = None, check: bool = False, **popen: Any
) -> subprocess.CompletedProcess[Any]:
    """subprocess.run in a new session, but a timeout kills the whole process group, not
    just its leader: killing only runuser (or fab, or nsenter) would leave its children
    running as orphans. Raises subprocess.TimeoutExpired after the kill."""
    args = [str(arg) for arg in argv]
    if input is not None:
        popen["stdin"] = subprocess.PIPE
    with subprocess.Popen(args, start_new_session=True, **popen) as proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result
