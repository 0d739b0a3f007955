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
