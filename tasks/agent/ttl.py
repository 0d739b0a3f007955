"""A server's time to live: when it expires and how a result says so, and the
watchdog that ends it then. The watchdog runs in an interpreter of its own,
forked twice into the server's group (or a session of its own for a server
already running), fed the agent's code and its settings on its stdin, so its
command line reveals nothing and init reaps it.
"""

import fcntl
import json
import os
import re
import signal
import stat
import sys
import time

from .boot import package_codes
from .protocol import AgentError, EXPIRED, join
from .procfs import alive, environ_token, parse_pid, pid_max, proc_stat
from .signals import end_token_carriers, group_others, pauses
from .state import instance_record, read_state, remove, write_atomic
from .logfiles import log_line, read_tail
from .caddy import withdraw


WATCH_POLL = 1.0  # how often the watchdog looks whether its server still runs


def expiry_of(meta):
    value = meta.get("expires_at") if isinstance(meta, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def expiry_fields(expires_at):
    """The result's expires_at (ISO 8601 UTC) and expires_in (whole seconds left)."""
    if expires_at is None:
        return {"expires_at": None, "expires_in": None}
    return {"expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
            "expires_in": max(0, int(expires_at - time.time()))}


def expiry_line(expires_at, *notes):
    """The log line that says the TTL ended the server (see expired_at)."""
    return join(f"{EXPIRED}: the ttl ended at {expiry_fields(expires_at)['expires_at']}, so the server was stopped",
                *notes)


EXPIRY_LINE = re.compile(r"^--- fabserve [^\n]*? " + EXPIRED + r": the ttl ended at ([0-9T:Z-]+),")


def expired_at(inst):
    """When the TTL ended the instance's last server (ISO 8601 UTC), as its
    log's last line says; None when something else ended it, or nothing did."""
    try:
        fd = os.open(inst.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO planted there never blocks
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        last = read_tail(handle, 1) if stat.S_ISREG(os.fstat(fd).st_mode) else []
    found = EXPIRY_LINE.match(last[-1]) if last else None
    return found.group(1) if found else None


def release_state(directory, leader, token, pidfile, meta_path):
    """Remove the pidfile and metadata if they still name this server (its
    leader and token), holding the instance's lock as start and stop do."""
    try:
        lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pid = parse_pid(read_state(pidfile, "pidfile"), pid_max())
            meta = json.loads(read_state(meta_path, "metadata"))
        except (OSError, ValueError, AgentError):
            return
        if pid == leader and isinstance(meta, dict) and meta.get("token") == token and meta.get("pid") == leader:
            remove(pidfile)
            remove(meta_path)
    finally:
        os.close(lock)


def close_inherited():
    """Close every descriptor but stdin, stdout and stderr (/dev/null and the
    log): the instance lock, Popen's pipes and the SSH session's are not the
    watchdog's to hold."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:  # the listing's own descriptor, closed already
                pass


def watchdog(expires_at, grace, token, directory, group=None, pidfile=None, meta_path=None, exposed=None):
    """The TTL watchdog, in an interpreter of its own (see WATCHDOG). Launched
    with its server, it is forked into the server's own session and group
    (`group` None) before the server's exec; attached to a server already
    running (start --ttl), it runs in a session of its own and `group` is the
    server's. It sleeps until `expires_at`, then stops the group:
    TERM, KILL after `grace`; and, as a stop does, the processes that left the
    group carrying the server's token. A process group ID cannot be reused
    while one of its members lives: inside the group this process is one, so its
    group signals reach that group and nothing else; outside it, the group is
    signalled only while a member carries the token. It ends with the group on
    a stop (TERM's default action, or the group seen gone), and early, quietly,
    once the server ended on its own."""
    close_inherited()
    os.chdir("/")  # the project directory is the server's to keep busy, not ours
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    inside = group is None
    group = os.getpgrp() if inside else group
    leader = group  # the server's process, its group's leader since its setsid
    leader_start = (proc_stat(leader) or {}).get("starttime")
    while True:
        left = expires_at - time.time()
        if left <= 0:
            break
        time.sleep(min(left, WATCH_POLL))
        if not alive(leader, leader_start) and not group_others(group):
            return
    if not inside and not any(environ_token(pid) == token for pid in group_others(group)):
        return  # nothing of the server is left in it: the group is not ours to signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # our own group's TERM is for the server
    os.killpg(group, signal.SIGTERM)
    deadline = time.time() + grace
    for pause in pauses():
        if not group_others(group) or time.time() >= deadline:
            break
        time.sleep(pause)
    # As a stop does: what left the group (setsid) still carries the token. What
    # is still in it is ended below, by the group, with this process.
    try:
        escaped, escaped_killed = end_token_carriers(token, grace, except_group=group)
        problem = ""
    except AgentError as exc:
        escaped, escaped_killed, problem = [], False, str(exc)
    killed = bool(group_others(group))
    if not problem:
        release_state(directory, leader, token, pidfile or os.path.join(directory, "server.pid"),
                      meta_path or os.path.join(directory, "server.json"))
    problem = join(problem, withdraw(exposed))
    log_line(expiry_line(expires_at,
                         f"with SIGKILL after {grace:g}s grace" if killed or escaped_killed else "",
                         f"pids {' '.join(map(str, escaped))} had left the server's process group" if escaped else "",
                         problem))
    if killed:
        os.killpg(group, signal.SIGKILL)  # inside the group, this process too: nothing is left to do


# The TTL watchdog's program. It runs in an interpreter of its own, not as a fork
# of the agent, so its command line (which every local user can read in
# /proc/PID/cmdline, and ps shows for as long as the TTL runs) is this short
# line: the agent's modules as code objects and the watchdog's settings come on
# its stdin (see feed_watchdog), which then becomes /dev/null. It serves the
# package from them as the loader does (boot), and watches.
WATCHDOG = ("import marshal,sys;i=sys.stdin.buffer;c=marshal.load(i);g={};exec(c['boot'],g);g['install'](c);"
            "from fabserve_agent.ttl import watch;watch(i)  # fabserve-watchdog")


def exec_watchdog(python, feed_fd):
    """In a forked child: exec `python` running WATCHDOG with `feed_fd` as its
    stdin; never returns."""
    try:
        os.dup2(feed_fd, 0)
        os.execv(python, [python, "-I", "-S", "-c", WATCHDOG])
    finally:
        os._exit(127)


def forked_twice(child, report_fd):
    """Fork a process that runs `child()` (which must not return) and write its
    PID to `report_fd`. It is forked twice, its first parent gone at once: its
    parent is then init (or the nearest subreaper), which reaps it however it
    ends, not the server, which would keep it a zombie (runserver waits only
    for its own child)."""
    middle = os.fork()
    if middle == 0:
        try:
            pid = os.fork()
            if pid == 0:
                child()
            os.write(report_fd, f"{pid}\n".encode())
        finally:
            os._exit(0)
    os.waitpid(middle, 0)


def watchdog_forker(python, feed_fd, report_fd):
    """A preexec_fn for the server's Popen: after its setsid, fork the watchdog
    (so it joins the server's session and group, see forked_twice), which execs
    `python` running WATCHDOG with `feed_fd` as its stdin; the server's exec follows."""
    return lambda: forked_twice(lambda: exec_watchdog(python, feed_fd), report_fd)


def feed_watchdog(fd, settings):
    """Write the agent's modules as code objects and then the watchdog's
    `settings` (one JSON line) to the watchdog's stdin, `fd`; False when it is
    gone (its exec failed). Its interpreter is ours, so it runs our code objects."""
    import marshal
    codes = package_codes()
    try:
        with os.fdopen(fd, "wb") as pipe:
            marshal.dump(codes, pipe)
            pipe.write(json.dumps(settings).encode() + b"\n")
    except OSError:
        return False
    return True


def watch(stream):
    """The watchdog's interpreter's entry (see WATCHDOG): read its settings from
    `stream`, its stdin, put /dev/null there instead, and watch."""
    settings = json.loads(stream.readline().decode("utf-8"))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    watchdog(settings["expires_at"], settings["grace"], settings["token"], settings["directory"],
             settings.get("group"), settings.get("pidfile"), settings.get("meta"), settings.get("exposed"))


def attach_watchdog(inst, expires_at, group, token):
    """Start a watchdog for the running server whose group is `group`, in a
    session of its own (a group of another session cannot be joined), output to
    the log, forked twice so init reaps it and in an interpreter of its own, as
    start's. Returns {"pid", "starttime"}."""
    if not sys.executable:
        raise AgentError("cannot start the ttl watchdog: this interpreter cannot name its own path "
                         "(sys.executable); the ttl was not applied")
    try:
        log = os.open(inst.log, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise AgentError(f"cannot write the log {inst.log}: {exc.strerror}; the ttl was not applied")
    reader, writer = os.pipe()
    feed_in, feed_out = os.pipe()

    def child():
        os.setsid()
        os.dup2(log, 1)
        os.dup2(log, 2)
        exec_watchdog(sys.executable, feed_in)
    try:
        forked_twice(child, writer)
    finally:
        for fd in (writer, log, feed_in):
            os.close(fd)
    watch = launched_watchdog(reader)
    settings = {"expires_at": expires_at, "grace": inst.req.stop_timeout, "token": token,
                "directory": inst.dir, "group": group, "pidfile": inst.pidfile, "meta": inst.meta_path}
    if not feed_watchdog(feed_out, settings):
        raise AgentError(f"cannot start the ttl watchdog: its interpreter {sys.executable} did not run; "
                         f"the ttl was not applied")
    return watch


def apply_ttl(inst, found):
    """Give the running server of `inst` the request's --ttl from now on: a new
    watchdog (attach_watchdog), recorded in its metadata, then the old one ended.
    Its duration is recorded too, for restart (see rerun). Returns what to say."""
    meta = inst.recorded
    if not found.managed or not isinstance(meta, dict) or inst.foreign:
        raise AgentError(f"the server on port {inst.port} was not started by fabserve, so --ttl cannot be applied "
                         f"to it: stop it, then start it with --ttl")
    ttl = inst.req.ttl
    expires_at = time.time() + ttl
    old = meta.get("watchdog") if isinstance(meta.get("watchdog"), dict) else {}
    watch = attach_watchdog(inst, expires_at, found.pgid, meta.get("token"))
    meta = dict(meta, expires_at=expires_at, watchdog=watch)
    try:
        write_atomic(inst.meta_path, json.dumps(meta))
    except OSError as exc:
        os.kill(watch["pid"], signal.SIGKILL)  # ours, just started: the server keeps what it had
        raise AgentError(f"cannot write state in {inst.dir}: {exc.strerror}; the ttl was not applied")
    inst.recorded, inst.expires_at = meta, expires_at
    if old.get("pid") and alive(old["pid"], old.get("starttime")):
        os.kill(old["pid"], signal.SIGKILL)
    record = instance_record(inst.dir)
    if record is not None and isinstance(record.get("started_with"), dict):
        record["started_with"]["ttl"] = ttl
        write_atomic(os.path.join(inst.dir, "instance.json"), json.dumps(record))
    return "the ttl now applies to it"


def launched_watchdog(reader):
    """{"pid", "starttime"} of the watchdog the server's Popen child forked and
    reported on `reader` (None without one)."""
    if reader is None:
        return None
    with os.fdopen(reader, "rb") as handle:
        text = handle.readline().strip()
    pid = int(text) if text.isdigit() else None
    return {"pid": pid, "starttime": (proc_stat(pid) or {}).get("starttime") if pid else None}


def launch_expiry(inst):
    """When the server to launch expires: now plus --ttl (a restart's given, else
    the recorded one: see rerun), else never (None)."""
    ttl = inst.req.ttl
    return time.time() + ttl if ttl else None
