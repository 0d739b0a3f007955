"""`tunnel`: a local port on 127.0.0.1 carried to a server on the host over the
SSH connection the task already holds, and a command run against it.

Fabric's `Connection.forward_local` binds in a background thread after its block
began, cannot report a port the OS chose and leaks the port on errors (fabric
#2290, #2342). Here the local socket is bound first, in the caller's thread, so
its port is known and a bind error is immediate; each accepted connection gets a
`direct-tcpip` channel on the Connection's transport and a thread that carries
both directions; closing the tunnel ends and joins every one of them.
"""

import errno
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple
from urllib.parse import urlsplit

from invoke import Context
from invoke.exceptions import Exit

from . import remote, report, settings
from .agent.protocol import RUNNING, STOPPED, connect_host
from .config import host_values

Address = Tuple[str, int]
#: Opens the other end for one accepted connection: (destination, the connection's
#: peer) -> a channel, or anything with recv, sendall, shutdown, fileno and close.
Opener = Callable[[Address, Address], Any]

CHUNK = 65536
READY_TIMEOUT = 10.0  # seconds the first request through the tunnel may take
CMD_GRACE = 5.0  # seconds between TERM and KILL for a command that is ended
WATCH = 0.1  # how often the holding loop looks at the connection and the command


class Forwarder:
    """A socket listening on 127.0.0.1:`local_port` (0: one the OS chooses), bound
    when this is built, whose connections `opener` carries to `destination`."""

    def __init__(self, local_port: int, destination: Address, opener: Opener) -> None:
        self.destination = destination
        self.opener = opener
        self.failure = ""  # why the last channel could not be opened, for a message
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # An earlier tunnel's connections in TIME_WAIT are no conflict; a listener still is.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", local_port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        # Written once on close: readable from then on, it wakes every waiting thread.
        self.wake_r, self.wake_w = socket.socketpair()
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.carriers: List[threading.Thread] = []
        self.active: Set[Tuple[socket.socket, Any]] = set()
        self.acceptor = threading.Thread(target=self.accept_all, name="fabserve-tunnel", daemon=True)
        self.acceptor.start()

    def accept_all(self) -> None:
        while not self.closing.is_set():
            ready = select.select([self.listener, self.wake_r], [], [])[0]
            if self.wake_r in ready:
                return
            try:
                conn, peer = self.listener.accept()
            except OSError:
                continue
            carrier = threading.Thread(target=self.carry, args=(conn, peer), name="fabserve-tunnel", daemon=True)
            with self.lock:
                if self.closing.is_set():
                    conn.close()
                    return
                self.carriers.append(carrier)
            carrier.start()

    def carry(self, conn: socket.socket, peer: Address) -> None:
        """One connection: open its channel, then copy both ways until both ends are done."""
        try:
            try:
                chan = self.opener(self.destination, peer)
            except Exception as exc:  # paramiko's ChannelException and SSHException, OSError
                self.failure = str(exc) or type(exc).__name__
                return
            with self.lock:
                if self.closing.is_set():
                    chan.close()
                    return
                self.active.add((conn, chan))
            try:
                self.pump(conn, chan)
            finally:
                with self.lock:
                    self.active.discard((conn, chan))
                chan.close()
        finally:
            conn.close()

    def pump(self, conn: socket.socket, chan: Any) -> None:
        other = {conn: chan, chan: conn}
        reading = [conn, chan]
        while reading:
            ready = select.select(reading + [self.wake_r], [], [])[0]
            if self.wake_r in ready:
                return
            for source in ready:
                try:
                    data = source.recv(CHUNK)
                    if data:
                        other[source].sendall(data)
                        continue
                    # One side is done sending: pass its end on, keep the other direction open.
                    reading.remove(source)
                    other[source].shutdown(socket.SHUT_WR)
                except OSError:  # reset, or a channel closed under us
                    return

    def close(self) -> None:
        """Stop listening, end every connection and join every thread; idempotent."""
        if self.closing.is_set():
            return
        self.closing.set()
        self.wake_w.send(b"x")
        self.acceptor.join()
        self.listener.close()
        with self.lock:
            for conn, chan in self.active:  # a carrier blocked in sendall wakes with an error
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                chan.close()
            carriers = list(self.carriers)
        for carrier in carriers:
            carrier.join()
        self.wake_r.close()
        self.wake_w.close()


def answers(port: int, path: str) -> Optional[str]:
    """None when GET `path` through 127.0.0.1:`port` gets an HTTP response (any
    status: it proves the tunnel, the agent judged the server), else what went wrong."""
    import http.client  # here: only a tunnel needs it, and it costs every fab run its import (email's parser)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READY_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        conn.getresponse().read()
        return None
    except (OSError, http.client.HTTPException) as exc:
        return str(exc) or type(exc).__name__
    finally:
        conn.close()


#: The signals that close the tunnel: Ctrl-C, a TERM, and a HUP (the terminal closed).
CLOSING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_caught(caught: threading.Event) -> Iterator[None]:
    """CLOSING signals set `caught` instead of ending fab, so the tunnel closes
    cleanly and the command is ended; only the main thread can install handlers
    (a single host runs there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def handler(signum: int, frame: Any) -> None:
        caught.set()

    previous = {sig: signal.signal(sig, handler) for sig in CLOSING}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def end_group(proc: "subprocess.Popen[bytes]") -> None:
    """End the command's process group, whether the command itself still runs or
    not (`sleep 1234 &` stays in it after the shell exits): TERM, then KILL after
    CMD_GRACE to whatever of it is left. The group is the one we made; its ID is
    the command's PID, which no other group can take while any member lives, and
    each signal goes only to a group just seen to have members."""
    for sig, grace in ((signal.SIGTERM, CMD_GRACE), (signal.SIGKILL, CMD_GRACE)):
        if not group_signalled(proc, sig):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not group_signalled(proc, 0):
                return
            time.sleep(WATCH)


def group_signalled(proc: "subprocess.Popen[bytes]", sig: int) -> bool:
    """Send `sig` (0: none) to the command's group; False once it has no member left.
    The command is reaped first, so its own exit does not count as a member."""
    proc.poll()
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):  # gone, or what is left runs as another user (sudo)
        return False
    return True


def run_command(command: str, env: Dict[str, str], transport: Any, caught: threading.Event) -> Tuple[int, bool]:
    """Run `command` through the user's shell in a process group of its own, its
    output going where ours goes, until it exits, a signal is caught or the
    connection is lost; then its whole group is ended (end_group: a caught signal
    reaches it as TERM), whatever way out this takes. Returns (exit status as a shell reports it, whether the
    connection was lost)."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    proc = subprocess.Popen([shell, "-c", command], env=env, start_new_session=True)
    lost = False
    try:
        while proc.poll() is None:
            if caught.is_set() or not transport.is_active():
                lost = not caught.is_set()
                break
            caught.wait(WATCH)
    finally:
        end_group(proc)
    code = proc.wait()
    return (128 - code if code < 0 else code), lost


def refuse(host: str, message: str, code: int) -> Exit:
    return Exit(f"{host}: tunnel failed: {message}", code)


def open_tunnel(c: Context, flags: Dict[str, Any], status: Callable[[], Dict[str, Any]]) -> None:
    """The tunnel task: checks, the instance's status (`status`, one agent call),
    the local port, a first request through it, then --run or holding it open."""
    host = remote.host_label(c)
    if getattr(c, "fabserve_fanout", False):
        raise Exit(f"{host}: tunnel works on exactly one host; -H named several", 2)
    if not remote.is_remote(c):
        raise Exit("tunnel needs a host (-H): a server here answers on its own URL", 2)
    values = host_values(c.config, getattr(c, "fabserve_settings", {}), flags)
    try:
        local_port = settings.checked(values, "local_port")
        command = settings.SETTING["run"].check(flags.get("run"))  # a flag only: not among the merged values
        as_json = settings.checked(values, "json")
    except settings.UsageError as exc:
        raise Exit(f"{host}: {exc}", 2) from None
    result = status()  # with --check (or fabserve.check), the agent GETs it on the host as status does
    if result.get("error") or result["state"] != RUNNING:
        reason = "the server is not running" if result["state"] == STOPPED else result["error"] or result["message"]
        raise refuse(host, reason, 1)
    try:  # the path given, else the one the instance was started with, as the agent reports it
        path = settings.parse_check(result.get("check") or "/")
    except settings.Invalid as exc:
        raise refuse(host, f"the check path {exc}", 1) from None
    addr = connect_host(urlsplit(result["url"]).hostname or "127.0.0.1")
    destination = (addr, result["port"])
    transport = c.transport

    def opener(dest: Address, origin: Address) -> Any:
        return transport.open_channel("direct-tcpip", dest, origin, timeout=READY_TIMEOUT)

    try:
        forwarder = Forwarder(local_port, destination, opener)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):  # the port given is the problem
            why = "in use" if exc.errno == errno.EADDRINUSE else "not allowed for this user"
            raise Exit(f"{host}: --local-port {local_port}: 127.0.0.1:{local_port} is {why}", 2) from None
        raise refuse(host, f"cannot listen on 127.0.0.1:{local_port}: {exc.strerror}", 1) from None
    caught = threading.Event()
    try:
        with signals_caught(caught):
            hold(c, host, forwarder, path, command, as_json, caught)
    finally:
        forwarder.close()


def hold(c: Context, host: str, forwarder: Forwarder, path: str, command: Optional[str], as_json: bool,
         caught: threading.Event) -> None:
    """Report the tunnel once a request for `path` through it answers, then run the
    command or wait for a signal; Exit with the command's status or for a lost connection."""
    addr, port = forwarder.destination
    failed = answers(forwarder.port, path)
    if failed:
        raise refuse(host, f"no HTTP answer to GET {path} through the tunnel from {addr}:{port}: "
                           f"{forwarder.failure or failed}", 1)
    url = f"http://127.0.0.1:{forwarder.port}/"
    if as_json:
        report.say(json.dumps({"host": host, "url": url, "local_port": forwarder.port, "port": port},
                              sort_keys=True))
    else:
        report.say(f"{host}: tunnel {url} -> {addr}:{port} on the host"
                   + ("" if command else "; Ctrl-C closes it"))
    transport = c.transport
    if command is None:
        while not caught.wait(WATCH):
            if not transport.is_active():
                raise refuse(host, "the SSH connection was lost", 1)
        return
    env = dict(os.environ, FABSERVE_URL=url, FABSERVE_HOST=host, FABSERVE_PORT=str(forwarder.port))
    code, lost = run_command(command, env, transport, caught)
    if lost:
        raise refuse(host, "the SSH connection was lost; the command was ended", 1)
    if code:
        raise Exit(code=code)
