"""The machine-wide state directory of the test bed, and the locks that let several
test sessions (and the benchmark) share this machine."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path

STATE_DIR = Path("/var/tmp/fabserve-test")


def ensure_dir(path: Path = STATE_DIR) -> Path:
    """Create path if needed, mode 0755: the test accounts must traverse it to reach
    the venvs and product copies inside."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def locked(lock_file: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on lock_file (created, with its directory, as needed).
    on_wait, if given, is called once when another holder makes us wait."""
    ensure_dir(lock_file.parent)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def state_lock() -> contextlib.AbstractContextManager[None]:
    """The lock over STATE_DIR's shared setup: test accounts, authorized_keys, venvs."""
    return locked(STATE_DIR / ".lock")


class AccountClaim:
    """Whether this test session has a test account's processes to itself.

    The first session to work as the account holds its claim (an exclusive flock
    on `.processes-<account>.lock`) for its whole run; a later one is a guest and
    holds a shared flock on `.processes-<account>.guests` instead, so the holder
    can tell at any moment, with a probe that never waits, whether a guest works
    as the account beside it."""

    def __init__(self, account: str) -> None:
        ensure_dir()
        self._claim = open(STATE_DIR / f".processes-{account}.lock", "a")
        self._guests = open(STATE_DIR / f".processes-{account}.guests", "a")
        try:
            fcntl.flock(self._claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            fcntl.flock(self._guests, fcntl.LOCK_SH)
            self.held = False

    def sole(self) -> bool:
        """True while no other session works as the account: this one holds the
        claim and no guest is there."""
        if not self.held:
            return False
        try:
            fcntl.flock(self._guests, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(self._guests, fcntl.LOCK_UN)
        return True

    def release(self) -> None:
        """Give the claim (or the guest's place) up: closing drops the flocks."""
        self._guests.close()
        self._claim.close()


@contextlib.contextmanager
def account_claim(account: str) -> Iterator[AccountClaim]:
    """The session's AccountClaim on account, released on the way out."""
    claim = AccountClaim(account)
    try:
        yield claim
    finally:
        claim.release()
