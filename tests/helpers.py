"""What tests use besides fixtures: the bed's probes under short names, the flags
naming a server instance, and the pytest side of the bed's errors."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bed import BedError, BedUnavailable, wait_for
from bed.fab import FabResult
from bed.net import free_port, http_status, port_listening
from bed.procs import alive, group_members, kill_pids, pids_with_cwd_under, proc_state
from bed.target import REPO, Target

__all__ = [
    "REPO", "FabResult", "Target", "alive", "bed_outcome", "fab_plain", "free_port", "fresh_key", "group_members",
    "http_status", "keygen_fingerprint", "kill_pids", "pids_with_cwd_under", "port_listening", "proc_state",
    "skip_or_fail", "wait_for", "where",
]


def where(project: str | os.PathLike[str], port: int | str) -> list[str]:
    """The flags naming one server instance."""
    return ["--project", str(project), "--port", str(port)]


def fab_plain(*args: str, timeout: float = 60, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """fab without the fixture's ssh_config: hosts as users type them (HOME: the
    caller's, e.g. the `own_home` fixture's)."""
    return subprocess.run([*wrapper, sys.executable, "-m", "fabric", "-r", str(REPO), *args], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def keygen_fingerprint(pub: Path) -> str:
    """SHA256:... of a public key file, as ssh-keygen prints it."""
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True).stdout.split()[1]


def fresh_key(directory: Path) -> str:
    """`type base64` of a newly generated ed25519 key (directory/fresh_ed25519): no sshd's."""
    path = directory / "fresh_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def skip_or_fail(reason: str) -> None:
    """Skip on a machine that lacks a prerequisite, but fail under CI=true, where
    every test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def bed_outcome() -> Iterator[None]:
    """Turn the bed's errors into test outcomes: BedUnavailable skips (fails under
    CI=true), any other BedError fails with its message and no traceback."""
    try:
        yield
    except BedUnavailable as error:
        skip_or_fail(str(error))
    except BedError as error:
        pytest.fail(str(error), pytrace=False)
