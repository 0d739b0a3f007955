"""Running the agent on a host: one shell command per operation, over SSH or locally.

The agent travels compressed inside the command itself (see payload), so a
host needs nothing but a Python 3.6+ interpreter; the request goes on its stdin.
"""

import json
import shlex
import socket
import sys
import threading
from contextlib import nullcontext
from functools import lru_cache
from typing import Any, Dict, List, Optional

from invoke import Context
from invoke.exceptions import CommandTimedOut, ThreadException
from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError, SSHException

from . import hostkeys, report, runners
from .payload import BOOTSTRAP, LOADER_WORD, payload
from .agent.protocol import MARKER, run_limit
from .config import setting

# Seconds on top of the agent's own deadlines before a hung call is given up:
# more than the agent's own bound (agent.dispatch.GIVE_UP), so it gets the agent's answer.
SLACK = 30


class HostError(Exception):
    """The host could not be reached or the agent could not run there."""


class ReaderGone(Exception):
    """Nothing reads our stdout any more (`fab logs --follow | head -1`): a streamed
    run ends there, like any writer into a closed pipe."""


#: Set once stdout's reader is gone: it is the whole process's, so every host's stream ends.
READER_GONE = threading.Event()
READER_POLL = 250  # ms between looks at stdout for a reader gone while no line comes


@lru_cache(maxsize=1)
def watch_reader() -> None:
    """Start, once, a thread that notices stdout's reader gone while no line
    comes (an idle `logs --follow | head -1`, one idle host of several) and
    ends every streamed run then, as the next line would have."""
    threading.Thread(target=reader_watch, name="fabserve-reader-watch", daemon=True).start()


def reader_watch() -> None:
    import select
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real descriptor: nothing to watch
        return
    poller = select.poll()
    poller.register(fd, 0)  # no events asked for: poll reports only POLLERR or POLLHUP, the reader gone
    while not READER_GONE.is_set():
        events = poller.poll(READER_POLL)
        if not events:
            continue
        if events[0][1] & select.POLLNVAL:
            return
        with Passthrough.lock:
            if not READER_GONE.is_set():
                report.drop_output(sys.stdout)
                READER_GONE.set()
        runners.end_streams()
        return


@lru_cache(maxsize=8)  # one 32 KB line for every host of a run, not one each
def command(agent_python: str) -> str:
    """The shell command that runs the agent, as one line; the request goes on
    its stdin (request_line), never in the command: every local user of the
    host can read a process's argv (/proc/PID/cmdline, ps) while it runs, and
    the request's env may hold secrets.

    sshd hands the command to the user's login shell, whichever it is (bash, dash, zsh,
    fish, tcsh, csh), so apart from the quoted interpreter and -c program it is
    only options, hex and base64, which every shell passes on unchanged.
    -E -S: no PYTHON* variables, no site-packages; the agent needs only the
    standard library, and skipping site is a quarter of the interpreter's start.
    (-I would say it at once, but Python 2 rejects it before it can be refused in words.)
    """
    words = (*payload(), LOADER_WORD)
    return " ".join((shlex.quote(agent_python), "-E", "-S", "-c", shlex.quote(BOOTSTRAP), *words))


def request_line(request: Dict[str, Any]) -> str:
    """The request as the agent reads it from its stdin: one line of JSON
    (json.dumps escapes every newline and non-ASCII character in a value)."""
    return json.dumps(request) + "\n"


def parse_result(stdout: str) -> Optional[Dict[str, Any]]:
    """The agent's result line; login-shell chatter before it is ignored."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    return None


def host_label(c: Context) -> str:
    """The host as the user wrote it for -H: `user@` and `:port` only where they were given.

    Fabric keeps just the bare name, so a part is shown when it differs from what
    ssh_config and the config would have supplied on their own.
    """
    if getattr(c, "fabserve_name", None):  # as -H or the inventory named it
        return c.fabserve_name
    name = getattr(c, "original_host", None)
    if not name:
        return "local"
    ssh_config = c.ssh_config
    default_user = ssh_config.get("user", c.config.user)
    default_port = int(ssh_config.get("port", c.config.port))
    return shorthand(name, c.user if c.user != default_user else None,
                     c.port if c.port != default_port else None)


def shorthand(name: str, user: Optional[str], port: Optional[int]) -> str:
    # Fabric reads no port from an IPv6 shorthand, so such a name never gets one here.
    if port is not None and ":" not in name:
        name = f"{name}:{port}"
    return f"{user}@{name}" if user else name


def is_remote(c: Context) -> bool:
    return hasattr(c, "original_host")


def call(c: Context, request: Dict[str, Any], agent_python: str) -> Dict[str, Any]:
    """Run one agent action on `c` and return its result; HostError otherwise."""
    result = run(c, command(agent_python), request, timeout=deadline_of(request), hide=True)
    parsed = parse_result(result.stdout)
    if parsed is None:
        raise HostError(agent_failure(result.exited, result.stderr, agent_python))
    return parsed


def deadline_of(request: Dict[str, Any]) -> Optional[float]:
    """Seconds after which a call that gave no answer is given up: the agent's own
    deadlines plus SLACK; None for what may run as long as it likes (a follower,
    a manage command without --timeout)."""
    limit = run_limit(request)
    return None if limit is None else limit + SLACK


def stream(c: Context, request: Dict[str, Any], agent_python: str, prefix: str = "") -> Optional[Dict[str, Any]]:
    """Run an agent action whose output is streamed (logs, and logs --follow):
    its lines go to stdout as they come, each with `prefix`, so several hosts can
    share the terminal. Returns the result the agent ends with; None when it
    ended without one (a follower whose caller went away) or when our own reader
    went away; HostError otherwise.

    A reader gone ends the stream's I/O thread, which ends the run: over SSH the
    channel closes, locally our end of the pipe closes as we exit, and either way
    the agent sees its reader gone and ends too.
    """
    out = Passthrough(prefix)
    timeout = deadline_of(request)
    watch_reader()
    try:
        result = run(c, command(agent_python), request, timeout=timeout, hide="stderr", out_stream=out)
        parsed = out.close()
    except (ThreadException, ReaderGone):
        if READER_GONE.is_set():
            return None
        raise
    if READER_GONE.is_set():  # ended by reader_watch
        return None
    if parsed is None and result.exited not in (0, None):
        raise HostError(agent_failure(result.exited, result.stderr, agent_python))
    return parsed


def run(c: Context, cmd: str, request: Dict[str, Any], timeout: Optional[float], hide: Any, **kwargs: Any) -> Any:
    # The request is the agent's stdin; our own stdin is never forwarded (CI has none, pytest captures it).
    try:
        strict = setting(c.config, "strict_host_keys")
        if is_remote(c):
            one_connect_timeout(c)
        with hostkeys.verified(c, strict) if is_remote(c) else nullcontext():
            if is_remote(c):
                keep_alive(c)
            return c.run(cmd, hide=hide, warn=True, in_stream=runners.RequestStream(request_line(request)),
                         timeout=timeout, **kwargs)
    except hostkeys.HostKeyError as exc:
        raise HostError(str(exc)) from None
    except CommandTimedOut as exc:
        raise HostError(f"no answer within {exc.timeout}s; the operation may still be running there, "
                        f"rerunning it is safe") from None
    except AuthenticationException as exc:
        raise HostError(f"authentication failed ({exc}); check the user and key (-i)") from None
    except NoValidConnectionsError as exc:
        reasons = sorted({error.strerror or str(error) for error in exc.errors.values()})
        raise HostError(f"cannot connect: {', '.join(reasons)}") from None
    except socket.gaierror as exc:
        raise HostError(f"cannot resolve host name: {exc.strerror}") from None
    except socket.timeout:
        raise HostError("connection timed out; check the host and port, or raise -t") from None
    except (SSHException, EOFError, OSError) as exc:
        raise HostError(f"SSH failed: {exc or type(exc).__name__}") from None


def keep_alive(c: Context) -> None:
    """Honour ssh_config's ServerAliveInterval, which Fabric does not: a keepalive
    after every N quiet seconds keeps a NAT or firewall from dropping a quiet
    connection (a tunnel, logs --follow, a long manage command)."""
    value = c.ssh_config.get("serveraliveinterval")
    if value is None:
        return
    if not (isinstance(value, str) and value.isascii() and value.isdigit()):
        raise HostError(f"ServerAliveInterval in ssh_config must be a whole number of seconds, not {value!r}")
    if int(value):
        c.open()
        c.transport.set_keepalive(int(value))


def one_connect_timeout(c: Context) -> None:
    """Let -t (which Fabric puts in connect_kwargs) win over fabserve's default
    connect timeout: given both, Fabric refuses to connect at all."""
    hop: Any = c
    while hasattr(hop, "connect_kwargs"):  # the host and every ProxyJump hop; a ProxyCommand is a string
        if "timeout" in hop.connect_kwargs:
            hop.connect_timeout = None
        hop = hop.gateway


class Passthrough:
    """invoke's out_stream for a streamed agent action: whole lines go on to
    stdout, each with a prefix; the agent's result, its last line, is kept back.

    A line carrying MARKER is held until the next one arrives: only the last
    line is the result, so a log line that happens to look like one is shown.
    """

    lock = threading.Lock()  # one for all hosts: lines never interleave mid-way
    consumes_output = True  # the runner need not keep a copy (runners.LinearOutput)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: List[str] = []  # text after the last newline
        self.held: Optional[str] = None

    def write(self, data: str) -> None:
        if "\n" not in data:
            self.pending.append(data)
            return
        complete, _, rest = data.rpartition("\n")
        lines = ("".join(self.pending) + complete).split("\n")
        self.pending = [rest] if rest else []
        if self.held is not None:
            lines.insert(0, self.held)
        self.held = lines.pop() if MARKER in lines[-1] else None
        self.show(lines)

    def show(self, lines: List[str]) -> None:
        if not lines:
            return
        with self.lock:
            if not READER_GONE.is_set():
                try:
                    sys.stdout.write("".join(self.prefix + line + "\n" for line in lines))
                    sys.stdout.flush()
                except BrokenPipeError:
                    report.drop_output(sys.stdout)  # Python's last flush at exit goes nowhere
                    READER_GONE.set()
            if READER_GONE.is_set():
                raise ReaderGone()

    def flush(self) -> None:
        pass

    def close(self) -> Optional[Dict[str, Any]]:
        """Show what is left; the result, if the agent ended with one."""
        rest = "".join(self.pending)
        self.pending = []
        if rest:
            self.show([self.held, rest] if self.held is not None else [rest])
            return None
        if self.held is None:
            return None
        try:
            parsed = json.loads(self.held[self.held.index(MARKER) + len(MARKER):])
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):  # a log line after all
            self.show([self.held])
            return None
        return parsed


def agent_failure(exited: Optional[int], stderr: str, agent_python: str) -> str:
    # sh, bash, dash, zsh and fish exit 127; tcsh and csh exit 1 with `python3: Command not found.`
    missing = exited == 127 or (exited == 1 and f"{agent_python}: Command not found." in stderr.splitlines())
    if missing:
        return f"interpreter {agent_python!r} not found on the host; set fabserve.agent_python"
    lines = [line for line in stderr.splitlines() if line.strip()]
    detail = lines[-1] if lines else "no output"
    return f"agent failed (exit {exited}): {detail}"
