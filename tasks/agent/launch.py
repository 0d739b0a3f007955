"""Launching a server: the interpreter that runs manage.py, its argv and
environment, the detached start (own session and group, its TTL watchdog in
that group), what holds a port that was to be free, and the checks that it
came up: it holds the port, the port answers, and the HTTP check's answer.
"""

import json
import os
import re
import signal
import sys
import time

from .protocol import AgentError, FAILED, RUNNING, STOPPED, WEB, connect_host
from .procfs import boot_id, proc_stat
from .signals import Found, terminate
from .sockets import held_in, holders, listen_inodes, pids_holding, port_answers
from .state import open_regular, write_atomic
from .procfile import command_argv, env_file_pairs
from .exposure import host_env
from .logfiles import BLOCK, LOG_KEEP, rotate_logs
from .ttl import activity_log, feed_watchdog, idle_expiry, launch_expiry, launched_watchdog, watchdog_forker


def health(inst, pids, listening=None):
    """(state, message) of a located server's processes: running only when they
    hold the listening socket and a connection to it succeeds. `listening`: see listen_inodes."""
    if not pids:
        return STOPPED, "not running"
    if pids_holding(listen_inodes(inst.port, listening), pids) and port_answers(inst.addr, inst.port):
        return RUNNING, f"running on {inst.url}"
    listed = " ".join(map(str, pids))
    return FAILED, f"process alive (pids {listed}) but nothing of it answers on port {inst.port}"


def resolve_python(inst):
    """The interpreter that runs manage.py: --python (relative to the project),
    else the project's .venv or venv, else python3 on PATH."""
    import shutil
    if inst.req.python:
        return named_python(inst.project, inst.req.python)
    for candidate in (".venv/bin/python", "venv/bin/python"):
        path = os.path.join(inst.project, candidate)
        if os.access(path, os.X_OK):
            return path
    path = shutil.which("python3")
    if not path:
        raise AgentError(f"no interpreter: {inst.project} has no .venv or venv and python3 is not on PATH")
    return path


def named_python(project, given):
    """The interpreter --python names: a path (relative: from `project`), or a
    name looked up on PATH; AgentError when it is not an executable file."""
    import shutil
    path = os.path.join(project, os.path.expanduser(given)) if "/" in given else shutil.which(given)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise AgentError(f"interpreter {given} not found or not executable")
    return path


def manage_env(inst, process=None):
    """The environment manage.py runs in (the server, or manage's command), or
    `process` of a Procfile: the agent's, unbuffered so output shows as it
    happens, the env file's pairs, the process's PORT, and the request's env over all."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_file_pairs(inst))
    if process is not None:
        env["PORT"] = str(process.port)
    env.update(inst.req.env or {})
    return env


def process_argv(inst, python, process=None):
    """The argv of the instance's server (`process` None, or a Procfile's web
    without a command of its own), or of `process` run as its Procfile says."""
    if process is None or process.command is None:
        return server_argv(inst, python)
    return command_argv(process)


def server_argv(inst, python):
    host = f"[{inst.addr}]" if ":" in inst.addr else inst.addr
    argv = [python, inst.manage_py, "runserver", f"{host}:{inst.port}"]
    if inst.req.noreload:
        argv.append("--noreload")
    if inst.req.settings:
        argv.append(f"--settings={inst.req.settings}")
    return argv


def launch(inst, python, process=None, expires_at=None):
    """Start the server (or `process` of the instance's Procfile, on `inst`'s
    companion for it) detached: own session and group, SIGHUP ignored, stdin
    from /dev/null, output appended to a new log (the previous runs' rotated),
    with a TTL (`expires_at`, else from the request) or an --idle-ttl its
    watchdog in its group.
    Returns (Popen, the server as a Found, log offset)."""
    import subprocess
    argv = process_argv(inst, python, process)
    token = os.urandom(16).hex()
    env = manage_env(inst, process)
    if inst.exposed:  # every process of an exposed instance: Django accepts the public host
        env.update(host_env(inst.exposed))
    env["FABSERVE_TOKEN"] = token
    expires_at = expires_at or launch_expiry(inst)
    idle_ttl = inst.req.idle_ttl
    watched = expires_at is not None or bool(idle_ttl)
    try:
        rotate_logs(inst.dir, inst.log, LOG_KEEP if inst.req.log_keep is None else inst.req.log_keep)
        fd = os.open(inst.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        log = os.fdopen(fd, "ab")
        offset = log.seek(0, os.SEEK_END)
        started = f"{process.name}: {process.command}" if process and process.command else " ".join(argv)
        log.write(f"--- fabserve {time.strftime('%Y-%m-%d %H:%M:%S')} {started}\n".encode())
        log.flush()
    except OSError as exc:
        raise AgentError(f"cannot write the log {inst.log}: {exc.strerror}; nothing was started")
    if watched and not sys.executable:
        raise AgentError("cannot start the ttl watchdog: this interpreter cannot name its own path "
                         "(sys.executable); nothing was started")
    # The watchdog reports its PID on one pipe and reads the agent's code and its settings from the other.
    reader, writer = os.pipe() if watched else (None, None)
    feed_in, feed_out = os.pipe() if watched else (None, None)
    forker = None if writer is None else watchdog_forker(sys.executable, feed_in, writer)
    with log:
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited across exec
        try:
            proc = subprocess.Popen(argv, cwd=inst.project, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=forker)
        except subprocess.SubprocessError as exc:  # the watchdog's fork failed
            raise AgentError(f"cannot start the ttl watchdog: {exc}; nothing was started")
        finally:
            signal.signal(signal.SIGHUP, previous)
            for fd in (writer, feed_in):
                if fd is not None:
                    os.close(fd)
    watch = launched_watchdog(reader)
    # The idle window opens at the launch: a server nobody requested yet is idle from then.
    idle_since = time.time() if idle_ttl else None
    settings = {"expires_at": expires_at, "idle_ttl": idle_ttl, "idle_since": idle_since,
                "grace": inst.req.stop_timeout, "token": token,
                "directory": inst.dir, "pidfile": inst.pidfile, "meta": inst.meta_path,
                "exposed": inst.exposed if inst.process == WEB else None}
    if feed_out is not None and not feed_watchdog(feed_out, settings):
        terminate(Found(pgid=proc.pid), 0)
        proc.poll()
        raise AgentError(f"cannot start the ttl watchdog: its interpreter {sys.executable} did not run; "
                         f"nothing was started")
    info = proc_stat(proc.pid)
    # The project as given names the instance; as resolved, the release it runs.
    meta = {"pid": proc.pid, "starttime": info["starttime"] if info else None, "boot_id": boot_id(),
            "machine_id": inst.machine_id, "hostname": inst.hostname,
            "token": token, "argv": argv, "project": inst.project, "project_given": inst.given,
            "port": inst.port, "addr": inst.addr, "started": time.time(), "process": inst.process}
    if watched:
        meta.update(expires_at=expires_at, idle_ttl=idle_ttl, idle_since=idle_since, watchdog=watch)
    if inst.exposed and inst.process == WEB:  # the route is web's: withdrawn when web stops
        meta["exposed"] = inst.exposed
    inst.expires_at = expires_at
    inst.idle_expires_at = idle_expiry(idle_ttl, idle_since, activity_log(inst.dir))
    inst.serving = inst.project
    inst.recorded = meta
    try:
        # Metadata first: a pidfile never names a process without its identity.
        write_atomic(inst.meta_path, json.dumps(meta))
        write_atomic(inst.pidfile, f"{proc.pid}\n")
    except OSError as exc:
        # A server nobody can find again must not outlive this call.
        terminate(Found(pgid=proc.pid), 0)
        proc.poll()
        inst.forget()
        raise AgentError(f"cannot write state in {inst.dir}: {exc.strerror}; the server was stopped again")
    return proc, Found(pgid=proc.pid, helper=watch), offset


class PortTaken(AgentError):
    """Another program holds the port, found before launching or once the server
    could not bind it: a start on a chosen port tries another (see handle)."""


def taken_by(inst, texts, pids=()):
    """Who keeps the instance's port from being bound for its address (see
    conflicts), by the /proc/net/tcp{,6} `texts`, when none of `pids` holds a
    listener on it; else None."""
    held = held_in(texts, inst.port, inst.addr)
    if not held or pids_holding(held, pids):
        return None
    return ", ".join(holders(held))


def fallback_note(inst, python):
    """The hint for a failed start whose interpreter was python3 from PATH, the
    project having no venv of its own (the usual cause: the venv lives elsewhere)."""
    if inst.req.python or python is None or python.startswith(os.path.join(inst.project, "")):
        return ""
    return f"no .venv/ or venv/ in {inst.project}, used python3; pass --python"


# Django's runserver says this at start-up when the database lacks migrations: the
# usual reason a fresh project answers 500 (ANSI colours, if forced on, are dropped).
UNAPPLIED = re.compile(rb"You have [0-9]+ unapplied migration\(s\)\.[^\n]*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unapplied_migrations(log, offset):
    """Django's unapplied-migrations line in the log's first BLOCKs from `offset` (this
    run's start, where runserver prints it), or None."""
    try:
        with open_regular(log, "log") as handle:
            handle.seek(offset)
            found = UNAPPLIED.search(handle.read(4 * BLOCK))
    except (OSError, AgentError):
        return None
    return ANSI.sub("", found.group(0).decode("utf-8", "replace")).strip() if found else None


def http_get(inst, timeout=5.0):
    """GET the check path: its HTTP status, or None. Host: the address, as DEBUG allows."""
    import http.client
    conn = http.client.HTTPConnection(connect_host(inst.addr), inst.port, timeout=timeout)
    try:
        conn.request("GET", inst.req.check)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def check_note(inst, status):
    path = inst.req.check
    return path and f"GET {path} answered " + (f"HTTP {status}" if status else "nothing")


def checked_health(inst, state, message):
    """health's answer and http_status: failed at 500 or more, or no answer."""
    if state != RUNNING or not inst.req.check:
        return state, message, None
    status = http_get(inst)
    if status and status < 500:
        return state, message, status
    return FAILED, f"{check_note(inst, status)} on {inst.url}", status


# How many answers of 500 or more in a row fail a start's check at once (about 3 s of
# them): a server that answers so is broken until someone changes it (a migration, a
# fix), and each such answer writes a traceback to the log.
CHECK_FAILS = 10


def wait_http(inst, proc, deadline):
    """(http_status, why start failed): GET until below 500 (why None), CHECK_FAILS
    answers of 500 or more in a row, exit or deadline. No answer breaks a run."""
    run = 0
    while inst.req.check:
        status = http_get(inst, max(0.5, min(5.0, deadline - time.time())))
        if status and status < 500:
            return status, None
        run = run + 1 if status else 0
        if run >= CHECK_FAILS:
            return status, f"GET {inst.req.check} still HTTP {status} after {run} requests; the server was stopped"
        if proc.poll() is not None or time.time() >= deadline:
            return status, f"{check_note(inst, status)} within {inst.req.start_timeout:g}s; the server was stopped"
        time.sleep(0.25)  # not faster: each 500 writes a traceback to the log
    return None, None
