"""Ports, TCP and HTTP probes of servers under test."""

from __future__ import annotations

import ctypes
import http.client
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

_TCP_LISTEN = "0A"
# A proxy from the CI environment must never see requests for local servers.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on host a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_between(low: int, high: int, host: str = "127.0.0.1") -> int:
    """A TCP port from low to high (inclusive) that was free on host a moment ago,
    for tests that keep to a range of their own; any free port if none is."""
    for port in random.sample(range(low, high + 1), high + 1 - low):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


def accepts(address: str, port: int, timeout: float = 1) -> bool:
    """True if address:port accepts a TCP connection."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def socket_in_netns(netns: Path, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket created inside the network namespace bound at netns.

    setns(CLONE_NEWNET) changes only the calling thread's namespace, so a
    short-lived thread enters it and makes the socket; the socket stays in that
    namespace for good and can be used from any thread.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            outcome["socket"] = socket.socket(family, socket.SOCK_STREAM)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=work, name="host-setns")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["socket"]


class NetnsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns: Path, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = socket_in_netns(self._netns)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


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
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == _TCP_LISTEN:
            address, port = fields[1].rsplit(":", 1)
            yield _decode_address(address), int(port, 16)


def port_listening(port: int, host: str | None = None, proc_root: str | Path = "/proc") -> bool:
    """True if some socket listens on TCP port: on any address, or only on host if given.

    Reads <proc_root>/net/tcp and tcp6 without connecting; pass /proc/<pid> to look
    into the network namespace that process is in.
    """
    root = Path(proc_root)
    return any(
        listen_port == port and host in (None, address)
        for table in ("tcp", "tcp6")
        for address, listen_port in _listening(root / "net" / table)
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
