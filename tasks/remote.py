"""Running the agent on a host: one shell command per operation, over SSH or locally.

The agent's source travels compressed inside the command itself, so a host
needs nothing but a Python 3.6+ interpreter.
"""

import base64
import hashlib
import json
import shlex
import socket
import sys
import threading
import zlib
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from invoke import Context
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError, SSHException

from . import hostkeys, options
from .agent import MARKER

AGENT_SOURCE = Path(__file__).with_name("agent.py")
# Runs first on the target, with the agent's hash and source as arguments. It
# refuses old interpreters in words (it must itself compile under Python 2), and
# keeps the compiled agent in ~/.cache/fabserve, keyed by source hash and
# interpreter, so later calls skip compiling it (a fifth of the agent's run time).
# The cache is trusted only while it is the user's own directory that no one else
# can write; a new entry replaces older versions' entries for the same interpreter.
LOADER = """\
import sys
sys.path = [entry for entry in sys.path if entry]  # not the login directory: no stray json.py
if sys.version_info < (3, 6):
    sys.exit('fabserve: the target needs Python 3.6 or newer, not ' + sys.version.split()[0])
import binascii, marshal, os, stat, zlib
tag = sys.implementation.cache_tag
folder = os.path.join(os.path.expanduser('~'), '.cache', 'fabserve')
cache = os.path.join(folder, 'agent-%s-%s' % (sys.argv[1], tag))
def private(path):  # code is loaded only from our own directory that no one else can write
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022
try:
    if not private(folder):
        raise ValueError(folder)
    with open(cache, 'rb') as handle:
        code = marshal.load(handle)
    if code.co_filename != 'fabserve-agent':
        raise ValueError(cache)
except Exception:
    code = compile(zlib.decompress(binascii.a2b_base64(sys.argv[2])), 'fabserve-agent', 'exec')
    if tag:
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if private(folder):
                with open(cache + '.%d' % os.getpid(), 'wb') as handle:
                    marshal.dump(code, handle)
                os.replace(cache + '.%d' % os.getpid(), cache)
                for name in os.listdir(folder):  # older versions' entries
                    if name.startswith('agent-') and name.endswith('-' + tag) and name != os.path.basename(cache):
                        os.remove(os.path.join(folder, name))
        except OSError:
            pass
exec(code)
"""
# The -c program: one line with nothing any login shell treats specially inside
# single quotes (csh and tcsh reject a newline there and expand `!` even there).
# The loader travels compressed as the last argument and takes itself off argv,
# so the loader and the agent read the arguments they always had, the request last.
# It must run under Python 2 as well, for the loader to refuse it in words. Its
# comment names the agent's processes in ps and /proc/PID/cmdline.
BOOTSTRAP = ("import sys,binascii,zlib;exec(zlib.decompress(binascii.a2b_base64(sys.argv.pop())))"
             "  # fabserve-agent")
LOADER_WORD = base64.b64encode(zlib.compress(LOADER.encode("ascii"), 9)).decode("ascii")
# Seconds on top of the agent's own deadlines before a hung call is given up.
SLACK = 30


class HostError(Exception):
    """The host could not be reached or the agent could not run there."""


@lru_cache(maxsize=1)
def payload() -> Tuple[str, str]:
    """The agent's source hash and its compressed source, as command arguments."""
    source = AGENT_SOURCE.read_bytes()
    return (hashlib.sha256(source).hexdigest()[:16],
            base64.b64encode(zlib.compress(source, 9)).decode("ascii"))


def command(request: Dict[str, Any], agent_python: str) -> str:
    """The shell command that runs the agent with `request`, as one line.

    sshd hands it to the user's login shell, whichever it is (bash, dash, zsh,
    fish, tcsh, csh), so apart from the quoted interpreter and -c program it is
    only options, hex and base64, which every shell passes on unchanged.
    -E -S: no PYTHON* variables, no site-packages; the agent needs only the
    standard library, and skipping site is a quarter of the interpreter's start.
    (-I would say it at once, but Python 2 rejects it before it can be refused in words.)
    """
    encoded = base64.b64encode(json.dumps(request).encode("utf-8")).decode("ascii")
    words = (*payload(), encoded, LOADER_WORD)
    return " ".join((shlex.quote(agent_python), "-E", "-S", "-c", shlex.quote(BOOTSTRAP), *words))


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
    deadline = request["start_timeout"] + 2 * request["stop_timeout"] + SLACK
    result = run(c, command(request, agent_python), timeout=deadline, hide=True)
    parsed = parse_result(result.stdout)
    if parsed is None:
        raise HostError(agent_failure(result.exited, result.stderr, agent_python))
    return parsed


def stream(c: Context, request: Dict[str, Any], agent_python: str, prefix: str = "") -> None:
    """Run an agent action whose output is streamed (logs --follow); with a
    prefix, each line carries it, so several hosts can share the terminal."""
    out = PrefixedLines(prefix) if prefix else None
    result = run(c, command(request, agent_python), timeout=None, hide="stderr", out_stream=out)
    if result.exited not in (0, None):
        raise HostError(agent_failure(result.exited, result.stderr, agent_python))


def run(c: Context, cmd: str, timeout: Optional[float], hide: Any, **kwargs: Any) -> Any:
    # in_stream=False: never forward our stdin (CI has none, pytest captures it).
    try:
        strict = options.setting(c.config, "strict_host_keys")
        with hostkeys.verified(c, strict) if is_remote(c) else nullcontext():
            return c.run(cmd, hide=hide, warn=True, in_stream=False, timeout=timeout, **kwargs)
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


class PrefixedLines:
    """A stream for invoke's out_stream: whole lines only, each with a prefix."""

    lock = threading.Lock()  # one for all hosts: lines never interleave mid-way

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending = ""

    def write(self, data: str) -> None:
        lines = (self.pending + data).split("\n")
        self.pending = lines.pop()
        if lines:
            with self.lock:
                sys.stdout.write("".join(self.prefix + line + "\n" for line in lines))
                sys.stdout.flush()

    def flush(self) -> None:
        pass


def agent_failure(exited: Optional[int], stderr: str, agent_python: str) -> str:
    if exited == 127:
        return f"interpreter {agent_python!r} not found on the host; set fabserve.agent_python"
    lines = [line for line in stderr.splitlines() if line.strip()]
    detail = lines[-1] if lines else "no output"
    return f"agent failed (exit {exited}): {detail}"
