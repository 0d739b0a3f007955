"""Plain helpers for fabserve's integration tests (no fixtures here).

Process inspection reads /proc directly so that tests can check exactly the
processes they care about, by PID, without pgrep-style pattern matching.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO: Path = Path(__file__).resolve().parent.parent

_TCP_LISTEN = "0A"
# A proxy from the CI environment must never see requests for local servers.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Target:
    """The local sshd standing in for a remote host, and the account it serves."""

    user: str
    uid: int
    home: Path
    port: int
    alias: str
    ssh_config: Path
    key: Path
    venv: Path
    python: Path
    sshd_pid: int
    sshd_log: Path


@dataclass(frozen=True)
class FabResult:
    """Outcome of one `fab` invocation."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        """stdout as JSON lines: the object if there is exactly one line, else the list."""
        documents = [json.loads(line) for line in self.stdout.splitlines() if line.strip()]
        return documents[0] if len(documents) == 1 else documents


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll predicate until it is truthy or timeout expires; return its final truthiness."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 on; None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may itself contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    """State letter of the process (R, S, Z, ...), or None if it does not exist."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (kill -0 would succeed on one)."""
    return proc_state(pid) not in (None, "Z", "X")


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def group_members(pgid: int) -> list[int]:
    """Live, non-zombie processes whose process group is pgid."""
    members = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(pid)
    return members


def _real_uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def _is_within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def pids_with_cwd_under(path: str | os.PathLike[str], uid: int) -> list[int]:
    """PIDs of uid's processes whose working directory is path or below it."""
    base = os.path.realpath(path)
    found = []
    for pid in _all_pids():
        if _real_uid(pid) != uid:
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


def _decode_address(hex_address: str) -> str:
    """/proc/net/tcp{,6} print addresses as host-order 32-bit words in hex."""
    raw = bytes.fromhex(hex_address)
    host_order = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, host_order)


def _listening(table: Path) -> Iterator[tuple[str, int]]:
    """(address, port) of each LISTEN socket in one /proc/net table."""
    try:
        lines = table.read_text().splitlines()[1:]
    except FileNotFoundError:
        return
    for line in lines:
        fields = line.split()
        if fields[3] == _TCP_LISTEN:
            address, port = fields[1].rsplit(":", 1)
            yield _decode_address(address), int(port, 16)


def port_listening(port: int, host: str | None = None) -> bool:
    """True if some socket listens on TCP port: on any address, or only on host if given."""
    return any(
        listen_port == port and host in (None, address)
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for address, listen_port in _listening(Path(table))
    )


def http_status(url: str, timeout: float = 5) -> int | None:
    """Status code of a GET (error statuses included); None if nothing answered HTTP."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, http.client.HTTPException):
        return None


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


def where(project: str | os.PathLike[str], port: int | str) -> list[str]:
    """The flags naming one server instance."""
    return ["--project", str(project), "--port", str(port)]
