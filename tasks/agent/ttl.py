"""A server's time to live: when it expires (its --ttl, and its --idle-ttl
counted from the last request its log shows) and how a result says so, and the
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


def idle_ttl_of(meta):
    """The --idle-ttl (seconds) and when its window was last armed (the launch,
    or an extend), as the metadata records them; (None, None) without one."""
    value = meta.get("idle_ttl") if isinstance(meta, dict) else None
    since = meta.get("idle_since") if isinstance(meta, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None, None
    return value, since if isinstance(since, (int, float)) and not isinstance(since, bool) else 0.0


def activity_log(directory):
    """The file whose last write is the instance's last request: web's log,
    where runserver writes one access line per request (every process of the
    instance is idle, or not, together)."""
    return os.path.join(directory, "server.log")


def idle_expiry(idle_ttl, since, log):
    """When an instance with `idle_ttl` is idle for that long: the log's last
    write (its mtime), or `since` when that is later (a window just armed), plus
    `idle_ttl`; None without one. A log that cannot be read counts from `since`."""
    if not idle_ttl:
        return None
    try:
        last = os.stat(log).st_mtime
    except OSError:
        last = since
    return max(last, since) + idle_ttl


def earliest(expires_at, idle_at):
    """The deadline that comes first of the TTL's and the idle one (None: neither)."""
    known = [when for when in (expires_at, idle_at) if when is not None]
    return min(known) if known else None


def expiry_fields(expires_at, idle_at=None):
    """The result's expires_at (ISO 8601 UTC) and expires_in (whole seconds
    left), the earlier of the TTL's and the idle deadline, and idle_expires_at."""
    ends = earliest(expires_at, idle_at)
    return {"expires_at": iso_time(ends), "expires_in": None if ends is None else max(0, int(ends - time.time())),
            "idle_expires_at": iso_time(idle_at)}


def iso_time(when):
    return None if when is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def ttl_word(idle):
    """What ended a server: its ttl, or its idle ttl."""
    return "idle ttl" if idle else "ttl"


def expiry_line(expires_at, *notes, idle=False):
    """The log line that says the TTL (or the idle TTL) ended the server (see expired_at)."""
    return join(f"{EXPIRED}: the {ttl_word(idle)} ended at {iso_time(expires_at)}, so the server was stopped",
                *notes)


EXPIRY_LINE = re.compile(r"^--- fabserve [^\n]*? " + EXPIRED + r": the (idle ttl|ttl) ended at ([0-9T:Z-]+),")


def expired_at(inst):
    """When the TTL (or idle TTL) ended the instance's last server, as "TIME
    (ttl)" or "TIME (idle ttl)" (ISO 8601 UTC), as its log's last line says;
    None when something else ended it, or nothing did."""
    try:
        fd = os.open(inst.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO planted there never blocks
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        last = read_tail(handle, 1) if stat.S_ISREG(os.fstat(fd).st_mode) else []
    found = EXPIRY_LINE.match(last[-1]) if last else None
    return f"{found.group(2)} ({found.group(1)})" if found else None


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


def watchdog(expires_at, grace, token, directory, group=None, pidfile=None, meta_path=None, exposed=None,
             idle_ttl=None, idle_since=None):
    """The TTL watchdog, in an interpreter of its own (see WATCHDOG). Launched
    with its server, it is forked into the server's own session and group
    (`group` None) before the server's exec; attached to a server already
    running (start --ttl), it runs in a session of its own and `group` is the
    server's. It sleeps until `expires_at` or, with `idle_ttl`, until the
    instance was idle that long (see idle_expiry: the log's mtime, read each
    poll, so requests push it on), whichever comes first, then stops the group:
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
    activity = activity_log(directory)
    while True:
        idle_at = idle_expiry(idle_ttl, idle_since, activity)
        ends_at = earliest(expires_at, idle_at)
        left = ends_at - time.time()
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
    log_line(expiry_line(ends_at,
                         f"with SIGKILL after {grace:g}s grace" if killed or escaped_killed else "",
                         f"pids {' '.join(map(str, escaped))} had left the server's process group" if escaped else "",
                         problem, idle=ends_at != expires_at))
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
             settings.get("group"), settings.get("pidfile"), settings.get("meta"), settings.get("exposed"),
             settings.get("idle_ttl"), settings.get("idle_since"))


def attach_watchdog(inst, lifetimes, group, token):
    """Start a watchdog for the running server whose group is `group`, in a
    session of its own (a group of another session cannot be joined), output to
    the log, forked twice so init reaps it and in an interpreter of its own, as
    start's; `lifetimes`: its expires_at, idle_ttl and idle_since. Returns
    {"pid", "starttime"}."""
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
    settings = dict(lifetimes, grace=inst.req.stop_timeout, token=token, directory=inst.dir, group=group,
                    pidfile=inst.pidfile, meta=inst.meta_path)
    if not feed_watchdog(feed_out, settings):
        raise AgentError(f"cannot start the ttl watchdog: its interpreter {sys.executable} did not run; "
                         f"the ttl was not applied")
    return watch


def apply_lifetimes(inst, found, ttl=None, idle_ttl=None, renew_idle=False):
    """Give the running server of `inst` a TTL of `ttl` from now and, with
    `idle_ttl` (or `renew_idle`: its recorded one), an idle window armed now,
    keeping what is not given as recorded: a new watchdog (attach_watchdog),
    recorded in its metadata, then the old one ended. The durations given are
    recorded too, for restart (see rerun). Returns what to say."""
    meta = inst.recorded
    given = {name: value for name, value in (("ttl", ttl), ("idle_ttl", idle_ttl)) if value}
    if not found.managed or not isinstance(meta, dict) or inst.foreign:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in given) or "--ttl"
        raise AgentError(f"the server on port {inst.port} was not started by fabserve, so {flags} cannot be "
                         f"applied to it: stop it, then start it with {flags}")
    now = time.time()
    named = [ttl_word(False)] * bool(ttl) + [ttl_word(True)] * bool(idle_ttl or renew_idle)
    expires_at = now + ttl if ttl else expiry_of(meta)
    recorded_idle, since = idle_ttl_of(meta)
    idle_ttl = idle_ttl or recorded_idle
    if idle_ttl and (renew_idle or "idle_ttl" in given or since is None):
        since = now
    lifetimes = {"expires_at": expires_at, "idle_ttl": idle_ttl, "idle_since": since}
    old = meta.get("watchdog") if isinstance(meta.get("watchdog"), dict) else {}
    # The route of an exposed server goes with it, whichever watchdog ends it.
    watch = attach_watchdog(inst, dict(lifetimes, exposed=meta.get("exposed")), found.pgid, meta.get("token"))
    meta = dict(meta, watchdog=watch, **lifetimes)
    try:
        write_atomic(inst.meta_path, json.dumps(meta))
    except OSError as exc:
        os.kill(watch["pid"], signal.SIGKILL)  # ours, just started: the server keeps what it had
        raise AgentError(f"cannot write state in {inst.dir}: {exc.strerror}; the ttl was not applied")
    inst.recorded, inst.expires_at = meta, expires_at
    inst.idle_expires_at = idle_expiry(idle_ttl, since, activity_log(inst.dir))
    if old.get("pid") and alive(old["pid"], old.get("starttime")):
        os.kill(old["pid"], signal.SIGKILL)
    record = instance_record(inst.dir)
    if given and record is not None and isinstance(record.get("started_with"), dict):
        record["started_with"].update(given)
        write_atomic(os.path.join(inst.dir, "instance.json"), json.dumps(record))
    return f"the {' and the '.join(named)} now appl{'y' if len(named) > 1 else 'ies'} to it"


def apply_ttl(inst, found):
    """Give the running server of `inst` the request's --ttl and --idle-ttl from
    now on, as start does to a server it finds running (see apply_lifetimes)."""
    return apply_lifetimes(inst, found, inst.req.ttl, inst.req.idle_ttl)


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
