"""fabserve's test bed: plain modules (no pytest) that build real hosts to test against.

Used by tests/conftest.py, the multi-host tests and bench/. Failures raise
BedError (BedUnavailable when the machine lacks a prerequisite) with a
one-line-first message; callers decide whether that skips, fails or aborts.

  procs   process inspection and signalling by PID, from /proc
  net     ports, TCP and HTTP probes
  run     running setup commands
  state   the machine-wide state directory, its locks, and which session has a test account to itself
  users   unprivileged accounts and their authorized_keys
  sshd    host keys, sshd and ssh client configuration, starting sshd
  venv    virtualenvs keyed by their requirements
  target  the local sshd target and its accounts, as the integration tests use it; one with pam_namespace
  accounts  running and spawning commands as a test account, its Django projects
  fab     running fab against the target
  procfiles  a Django project's companion processes (worker, watcher) and its Procfile
  package fabserve built as a wheel and installed in a fresh virtualenv
  interpreters  the CPythons (pyenv's, Debian's) a target may run fabserve's code under
  hosts   namespaced hosts, each with its own network, processes and sshd
  disks   scratch file systems (tmpfs, ext4, btrfs on a loop device)
  ansible ansible-core against those hosts, the fabserve.django collection from the checkout
  unprivileged  the unit tier as `nobody`, from a copy of the checkout (CI's .ci/run)
"""

from __future__ import annotations

import time
from collections.abc import Callable


class BedError(Exception):
    """The test bed could not be set up, used or torn down; the message says why."""


class BedUnavailable(BedError):
    """This machine cannot host that part of the bed (not root, a tool missing, no
    namespaces): tests skip on it, or fail where everything must run (CI=true)."""


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll predicate until it is truthy or timeout expires; return its final truthiness."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
