"""Process inspection and signalling, by PID, read straight from /proc.

Tests check exactly the processes they care about, by PID, without
pgrep-style pattern matching; nothing here signals by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import wait_for

PR_SET_PDEATHSIG = 1
_GONE = ("Z", "X")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may itself contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    """State letter of the process (R, S, Z, ...), or None if it does not exist."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (kill -0 would succeed on one)."""
    return proc_state(pid) not in (None, *_GONE)


def parent(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def children(pid: int) -> list[int]:
    return [child for child in all_pids() if parent(child) == pid]


def cmdline(pid: int) -> str:
    """The process's arguments joined by spaces; "" if it is gone (or a kernel thread)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    """The process's environment as it started (root, or its own user, may read it); {} if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def group_members(pgid: int) -> list[int]:
    """Live, non-zombie processes whose process group is pgid."""
    members = []
    for pid in all_pids():
        fields = stat_fields(pid)
        if fields and fields[0] not in _GONE and int(fields[2]) == pgid:
            members.append(pid)
    return members


def real_uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def uid_processes(uids: Iterable[int]) -> list[int]:
    """Live, non-zombie processes whose real uid is one of uids."""
    wanted = set(uids)
    return [pid for pid in all_pids() if real_uid(pid) in wanted and alive(pid)]


def process_set(uid: int) -> set[tuple[int, str]]:
    """(pid, start time) of each live process of uid: a PID reused by a new
    process counts as a new process."""
    found = set()
    for pid in uid_processes([uid]):
        fields = stat_fields(pid)
        if fields:
            found.add((pid, fields[19]))
    return found


def _is_within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def pids_with_cwd_under(path: str | os.PathLike[str], uid: int) -> list[int]:
    """PIDs of uid's processes whose working directory is path or below it."""
    base = os.path.realpath(path)
    found = []
    for pid in all_pids():
        if real_uid(pid) != uid:
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        # A process can outlive its directory; the kernel then appends this.
        cwd = cwd.removesuffix(" (deleted)")
        if _is_within(cwd, base):
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Send sig to each PID; already-gone processes are fine."""
    for pid in pids:
        # 0, 1 and negative numbers signal groups or everything: never here.
        if pid <= 1 or pid == os.getpid():
            raise ValueError(f"refusing to signal pid {pid}")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_uid_processes(uids: Iterable[int], grace: float = 5) -> None:
    """End every process of the given (test-only) accounts, by PID: TERM, then KILL
    whatever is still there after grace seconds."""
    wanted = list(uids)
    pids = uid_processes(wanted)
    if not pids:
        return
    kill_pids(pids, signal.SIGTERM)
    wait_for(lambda: not uid_processes(wanted), timeout=grace)
    kill_pids(uid_processes(wanted), signal.SIGKILL)


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets sig when the thread that forked it ends, so a
    test run or benchmark killed outright leaves no sshd or host behind."""

    def arrange() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return arrange


def terminate(proc: subprocess.Popen[Any], grace: float = 5) -> None:
    """TERM a child we started, KILL it if it is still there after grace seconds; reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
