"""Knowing a process is this instance's server: runserver's command line
parsed as Django parses it, the project directory and port it serves, the
interpreter it runs under (its executable, not argv[0]), and its namespaces
and token; and the host's runserver processes as list sees them.
"""

import os
import re

from .protocol import ADDRESS, DEFAULT_ADDR
from .procfs import all_pids, ancestors, environ_token, executable, namespaces, own_namespaces, snapshot


INTERPRETER = re.compile(r"^(python|pypy)[0-9.]*$")
# runserver options whose value is the next argv element
RUNSERVER_VALUE_OPTIONS = {"--settings", "--pythonpath", "-v", "--verbosity"}


def addrport_port(value):
    """The port of a runserver addrport argument: "8000", "0:8000",
    "127.0.0.1:8000", "[::1]:8000". None if it names no port."""
    tail = value.rsplit(":", 1)[-1] if not value.endswith("]") else ""
    return int(tail) if tail.isdigit() else None


def runserver_args(argv):
    """(script, port) when argv is `<python> [opts] <script> runserver ...`, else None.

    Only a Python interpreter running a script counts: `vim manage.py runserver`,
    `tail -f`, `grep runserver` or `sh -c '...'` name the words but are not servers.
    """
    if not argv or not INTERPRETER.match(os.path.basename(argv[0])):
        return None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "-m"):
            return None
        if arg in ("-W", "-X"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        break
    if i + 1 >= len(argv) or argv[i + 1] != "runserver":
        return None
    script = argv[i]
    port = 8000  # Django's default when no addrport is given
    rest = argv[i + 2:]
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg in RUNSERVER_VALUE_OPTIONS:
            j += 2
            continue
        if not arg.startswith("-"):
            found = addrport_port(arg)
            if found is None:
                return None
            port = found
            break
        j += 1
    return script, port


def is_candidate(proc, manage_py, port, uid, token, excluded, given=None):
    """Whether a process snapshot looks like a server of this instance, judged
    on what is cheap to read for every process; `is_ours` then confirms it.

    It looks like one when it carries the instance's token, or when its argv is
    `<python> manage.py runserver` on this port with a script that resolves,
    symlinks and all, against its cwd to `manage_py` (itself resolved), or
    whose path joined with its cwd is exactly `given` (the project's manage.py
    as the user names it: `/srv/app/current/manage.py` started before the
    release link moved). Always the same user, never `excluded` (this agent
    and its ancestors).
    """
    if proc["pid"] in excluded or proc["uid"] != uid or proc["state"] == "Z":
        return False
    if token and proc.get("token") == token:
        return True
    found = runserver_args(proc["argv"])
    if found is None or found[1] != port or proc.get("cwd") is None:
        return False
    if given and lexical_script(proc["cwd"], found[0]) == given:
        return True
    # realpath, not normpath: in `link/../site/manage.py` the kernel follows
    # `link` before `..`, so the lexical answer can name another project.
    return os.path.realpath(os.path.join(proc["cwd"], found[0])) == manage_py


# The interpreter binary as /proc/PID/exe names it: python3.11, python3.6m
# (ABI flags d, m, t), pypy3.9. argv[0] alone proves nothing: `exec -a python3`.
EXECUTABLE = re.compile(r"^(python|pypy)[0-9.]*[dmt]*$")
DELETED = " (deleted)"  # what the kernel appends once the binary was replaced (an upgrade)


def is_interpreter(exe):
    """Whether a /proc/PID/exe target is a Python interpreter."""
    if not exe:
        return False
    if exe.endswith(DELETED):
        exe = exe[:-len(DELETED)]
    return bool(EXECUTABLE.match(os.path.basename(exe)))


def is_ours(proc, token, own_namespaces):
    """Whether a candidate (see is_candidate) is confirmed as this instance's.

    It must live in the agent's own PID and network namespaces: a container
    or `unshare` twin of the same project and port is not ours, and
    neither is a process whose namespaces cannot be read. Then it carries the
    instance's token, or its executable is a Python interpreter.
    """
    if not own_namespaces or proc.get("ns") != own_namespaces:
        return False
    if token and proc.get("token") == token:
        return True
    return is_interpreter(proc.get("exe"))


def given_path(path, cwd=None):
    """A project path as the user named it: absolute, `~` expanded, `.` and
    doubled slashes dropped, symlinks kept. Up to its last `..` it is resolved
    as the kernel resolves it (in `current/../x`, `current` is followed before
    `..`), since collapsing `..` lexically can name another directory."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd or os.getcwd(), path)
    parts = path.split("/")
    if ".." in parts:
        last = len(parts) - parts[::-1].index("..")
        parts = [os.path.realpath("/".join(parts[:last]) or "/")] + parts[last:]
    return os.path.normpath("/".join(parts))


def lexical_script(cwd, script):
    """A runserver's script path joined with its cwd, normalised, or None when
    it holds `..` (see given_path: only the kernel can say where that leads)."""
    path = os.path.join(cwd, script)
    return None if ".." in path.split("/") else os.path.normpath(path)


def identify(proc):
    """Add what is_ours needs to a candidate's snapshot: read only for
    candidates, since the search takes a snapshot of every process."""
    proc["ns"] = namespaces(proc["pid"])
    proc["exe"] = executable(proc["pid"])
    return proc


def runservers(groups=None):
    """Every runserver of this user in the agent's namespaces, each a snapshot
    (see snapshot) with its token, `script` and `port`: one pass over /proc,
    which also fills `groups` (process group -> this user's live processes in it).
    Decoys (an editor, `tail -f`, `sh -c` naming runserver) are left out by
    runserver_args, containerised twins and `exec -a python` fakes by is_ours."""
    excluded, own = ancestors(), own_namespaces()
    found = []
    for pid in all_pids():
        proc = snapshot(pid, None)
        if proc is not None and groups is not None and proc["state"] != "Z":
            groups.setdefault(proc["pgrp"], []).append(pid)
        if proc is None or pid in excluded or proc["state"] == "Z" or proc["cwd"] is None:
            continue
        args = runserver_args(proc["argv"])
        if args is not None and is_ours(identify(proc), None, own):
            proc["script"], proc["port"] = args
            proc["token"] = environ_token(pid)
            found.append(proc)
    return found


def runserver_addr(argv):
    """The address a runserver's addrport argument names, else Django's 127.0.0.1."""
    for arg in argv[argv.index("runserver") + 1:]:
        if not arg.startswith("-") and ":" in arg:
            host = arg.rsplit(":", 1)[0].strip("[]")
            if host == "0":  # Django's shorthand for 0.0.0.0
                return "0.0.0.0"
            if ADDRESS.match(host):
                return host
    return DEFAULT_ADDR
