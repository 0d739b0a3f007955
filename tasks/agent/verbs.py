"""The handlers of status, stop, start, restart, logs and list: what each
verb does to an instance (or, list, to the host), and how a result describes
an instance; with what a start records so that a restart reruns it.
"""

import json
import os
import sys
import time

from .protocol import AgentError, EXPIRED, RUNNING, STOPPED, join, result_of
from .procfs import proc_stat, uptime_seconds
from .signals import Found, end_token_carriers, pauses, terminate, terminate_all
from .sockets import holders, listen_inodes, listeners, pids_holding, port_answers, port_held, tcp_tables
from .identity import runserver_addr, runservers
from .state import Instance, instance_name, instance_record, read_state, recorded_project, write_atomic
from .projects import Project
from .logfiles import (
    PUNCHED_MARK, cap_log, copy_out, follow, hole_end, kept_bytes, log_tail, open_log, tail_span, tail_text)
from .ttl import apply_ttl, expired_at, expiry_fields
from .locate import locate
from .launch import (
    PortTaken, check_note, checked_health, fallback_note, health, launch, resolve_python, taken_by,
    unapplied_migrations, wait_http)


def describe(inst, found, **fields):
    """The result for instance `inst`, whose server is `found` (or None)."""
    # Callers that already scanned /proc for the group pass `pids`: one scan per call.
    pids = fields["pids"] if "pids" in fields else (found.members() if found else [])
    answered = {
        "pid": (found.pgid if found and found.pgid is not None else (pids[0] if pids else None)),
        "pids": pids,
        "url": inst.url,
        "pidfile": inst.pidfile,
        "log": inst.log,
        "state_dir": inst.dir,
        "project": inst.serving or inst.project,
        "port": inst.port,
        "managed": found.managed if found else None,
    }
    answered.update(expiry_fields(inst.expires_at if found is not None else None))
    answered.update(fields)
    return result_of(**answered)


def located(inst, procs=None):
    """locate(), and the log of a server found through its trusted pidfile kept
    under its cap: every call that finds one running keeps it so."""
    found, note = locate(inst, procs)
    if found is not None and found.managed:
        cap_log(inst)
    return found, note


def do_status(inst):
    found, note = located(inst)
    result = status_of(inst, found, note)
    # What tunnel's first request asks for: the path given, else the one the instance was started with.
    result["check"] = inst.req.check or started_check(inst)
    return result


def status_of(inst, found, note, pids=None, listening=None):
    """What status answers for `inst`, whose server locate found (or None),
    and each row of list; `pids`: its processes when already known; `listening`:
    see listen_inodes."""
    if found is None:
        return describe(inst, None, ok=True, changed=False, state=STOPPED, message=not_running(inst, note))
    pids = found.members() if pids is None else pids
    state, message = health(inst, pids, listening)
    extra = {}
    state, message, extra["http_status"] = checked_health(inst, state, message)
    leader = proc_stat(found.pgid if found.pgid is not None else pids[0]) if pids else None
    if leader:
        extra["uptime"] = uptime_seconds(leader["starttime"])
    if not found.managed:
        message = join(message, "not started by fabserve")
    return describe(inst, found, ok=state == RUNNING, changed=False, state=state, pids=pids,
                    message=join(message, release_note(inst), note), **extra)


def not_running(inst, note):
    """What a verb says of an instance with no server: "expired at TIME (ttl)"
    when its TTL ended it (end_expired's note, else its log's last line)."""
    if note.startswith(EXPIRED):
        return note
    when = expired_at(inst)
    return join(f"{EXPIRED} at {when} (ttl)" if when else "not running", note)


def release_note(inst):
    """What to say when the project path now resolves to another release than
    the running server was launched from (a moved `current` symlink)."""
    if inst.serving and inst.serving != inst.project:
        return f"serving {inst.serving}; {inst.given} now resolves to {inst.project}: restart to switch"
    return ""


def do_stop(inst):
    """Stop the server's group, then every process that still carries its
    token, then confirm nothing holds the port. The state goes once nothing
    of ours is left; a holder without the token is named, never signalled."""
    found, note = located(inst)
    # Kept before the state is forgotten: a process that left the group (setsid,
    # start_new_session) is found by the token it inherited.
    token = (inst.recorded or {}).get("token")
    if found is None:
        inst.forget()
        return describe(inst, None, ok=True, changed=bool(inst.ended), state=STOPPED, pids=inst.ended or [],
                        message=not_running(inst, note))
    managed = found.managed
    grace = inst.req.stop_timeout
    pids = found.members()
    try:
        killed = terminate_all(found, grace)
    except AgentError as exc:
        # What did end is gone although a survivor stays: that changed the host.
        exc.extra["changed"] = any(pid not in exc.extra["pids"] for pid in pids)
        raise
    escaped, escaped_killed = end_token_carriers(token, grace, pids)
    killed = killed or escaped_killed
    inst.forget()
    stopped = pids + escaped
    grace_text = f" with SIGKILL after {grace:g}s grace" if killed else ""
    message = f"stopped pids {' '.join(map(str, stopped))}{grace_text}"
    if escaped:
        message = join(message, f"pids {' '.join(map(str, escaped))} had left the server's process group")
    held = port_held(inst.port, inst.addr)
    if held:
        raise AgentError(join(message, f"port {inst.port} is still held by {', '.join(holders(held))}"),
                         state=STOPPED, pids=stopped, killed=killed, port_free=False)
    return describe(inst, None, ok=True, changed=True, state=STOPPED, pids=stopped,
                    pid=stopped[0] if stopped else None, killed=killed, port_free=True, managed=managed,
                    message=join(message, note))


def do_start(inst):
    inst.require_project()
    python = resolve_python(inst)
    found, note = located(inst)
    if found is not None:
        pids = found.members()
        state, message = health(inst, pids)
        state, message, http = checked_health(inst, state, message)
        # up just shipped files: the autoreloader may be starting a new child; wait for it to answer.
        deadline = time.time() + inst.req.start_timeout
        while state != RUNNING and pids and inst.req.reloading and time.time() < deadline:
            time.sleep(0.1)
            pids = found.members()
            state, message = health(inst, pids)
            state, message, http = checked_health(inst, state, message)
        if state == RUNNING:
            message = join(f"already running on {inst.url}", check_note(inst, http))
            if not found.managed:
                message = join(message, "not started by fabserve")
        else:
            message = join("already started but " + message, "use restart")
        # A --ttl is never dropped: a leftover server a CI job's start finds gets it too.
        applied = apply_ttl(inst, found) if inst.req.ttl else ""
        return describe(inst, found, ok=state == RUNNING, changed=bool(applied), state=state, pids=pids,
                        http_status=http, message=join(message, applied, release_note(inst)))
    if inst.foreign:
        raise AgentError(f"{inst.pidfile} records a server started on host {inst.foreign}: "
                         f"it is that host's, so it is not replaced; nothing was started")
    inst.forget()
    # Launched, a server on a held port may wait out the timeout (daphne keeps running).
    taken = taken_by(inst, tcp_tables())
    if taken:
        raise PortTaken(f"port {inst.port} on {inst.addr} is already in use by {taken}; nothing was started")
    remember(inst)
    proc, found, offset = launch(inst, python)
    deadline = time.time() + inst.req.start_timeout
    http = None
    for pause in pauses():
        code = proc.poll()
        pids = found.members()
        texts = tcp_tables()  # one read a poll: with many sockets, a read takes milliseconds
        # Another user's server may bind the port first: their listeners are seen only then.
        taken = taken_by(inst, texts, pids)
        if taken:
            why = f"port {inst.port} on {inst.addr} was taken by {taken} before the server could bind it"
            break
        if code is not None:
            why = f"server exited with status {code}"
            break
        if pids_holding(listen_inodes(inst.port, listeners(texts)), pids) and port_answers(inst.addr, inst.port):
            http, why = wait_http(inst, proc, deadline)
            if why is None:
                return describe(inst, found, ok=True, changed=True, state=RUNNING, python=python, pids=pids,
                                http_status=http, message=join(f"started on {inst.url}", check_note(inst, http), note))
            break
        if time.time() >= deadline:
            why = f"nothing answered on port {inst.port} within {inst.req.start_timeout}s"
            break
        time.sleep(pause)
    terminate(found, min(inst.req.stop_timeout, 5))
    proc.poll()
    inst.forget()
    tail = log_tail(inst, offset)
    if taken:
        raise PortTaken(why, log_tail=tail, http_status=http)
    unapplied = unapplied_migrations(inst.log, offset) if http and http >= 500 else None
    if unapplied:
        why = join(why, f"the log says: {unapplied}", "run `manage migrate` to apply them")
        if unapplied not in tail:  # said at start-up, long before the tracebacks of the tail
            tail = [unapplied, "..."] + tail
    # The client says which action failed: the reason alone.
    raise AgentError(join(why, fallback_note(inst, python)), log_tail=tail, http_status=http)


def do_restart(inst):
    inst.require_project()
    rerun(inst)
    resolve_python(inst)  # fail before stopping anything if start cannot work
    stopped = do_stop(inst)
    try:
        started = do_start(inst)
    except AgentError as exc:
        # The old server is gone although no new one runs: that changed the host.
        exc.extra.update(changed=stopped["changed"], stopped_pids=stopped["pids"])
        raise
    started["changed"] = True
    if (started.get("message") or "").startswith("started "):  # the same server again: say so
        started["message"] = "re" + started["message"]
    started["stopped_pids"] = stopped["pids"]
    return started


def do_logs(inst):
    """The log's last lines: in the result, or with `stream` (human output)
    written to stdout as they are read, before the result; with `follow`, then
    everything appended until the caller goes away, and no result."""
    lines = inst.req.lines
    out = sys.stdout.buffer
    found, _ = located(inst)  # first: a running server's log is cut to the cap before it is read
    log = f"{inst.log}.1" if inst.req.previous else inst.log
    with open_log(inst, log) as handle:
        hole = hole_end(handle.fileno())
        offset, end, count = tail_span(handle, lines, hole)
        front = b""
        if hole and offset == hole and count < lines:  # back to a punched cut: its marker first, as after any cut
            front, count = os.pread(handle.fileno(), PUNCHED_MARK, 0).rstrip(b" \n") + b"\n", count + 1
        try:
            if inst.req.follow:
                copy_out(handle, offset, end, out, front)
                follow(handle, out)
                return None
            if inst.req.stream:
                copy_out(handle, offset, end, out, front)
                extra = {}
            else:
                extra = {"lines": tail_text(front + b"".join(kept_bytes(handle, offset, end)), lines)}
        except (BrokenPipeError, KeyboardInterrupt):  # the caller went away
            return None
    return describe(inst, found, ok=True, changed=False,
                    state=RUNNING if found and found.members() else STOPPED,
                    message=f"{count} lines of {log}", **extra)


# The request settings that make a server what it is, and their types: each
# start records them (instance.json, kept after stop), and a restart not given
# one reruns the recorded value. python is kept as given (None: the project's
# venv, found again in the release the project now resolves to); ttl as a
# duration, so a restarted server gets a whole lifetime again.
RERUN = (("python", str), ("settings", str), ("env", dict), ("noreload", bool), ("addr", str), ("check", str),
         ("ttl", int))


def remember(inst):
    """Record which project and port the instance directory is for, and what
    it is started with (RERUN), kept after stop with its log, so list can name
    the project of a stopped instance and restart can rerun it."""
    started = {name: getattr(inst.req, name) for name, _ in RERUN}
    started["addr"] = inst.addr  # as launched: given, recorded by the last start, or the default
    write_atomic(os.path.join(inst.dir, "instance.json"),
                 json.dumps({"project": inst.given, "port": inst.port, "started_with": started}))


def started_check(inst):
    """The check path the instance was last started with (see remember), or None."""
    started = (instance_record(inst.dir) or {}).get("started_with")
    check = started.get("check") if isinstance(started, dict) else None
    return check if isinstance(check, str) else None


def rerun(inst):
    """Give the request the settings of RERUN it lacks (None, empty, off) from
    the instance's last start, so a restart reruns what was started."""
    started = (instance_record(inst.dir) or {}).get("started_with")
    if not isinstance(started, dict):
        return
    lacking = {name: started.get(name) for name, kind in RERUN
               if not getattr(inst.req, name) and started.get(name) and isinstance(started.get(name), kind)}
    inst.req = req = inst.req.but(**lacking)
    if not inst.addr_given and req.addr:
        inst.addr_given = inst.addr = req.addr


def do_list(host, req):
    """Every server of this user on the host, each row as status describes it:
    instances with state (running, stale; stopped with their log kept only
    with `all`), then runservers fabserve did not start (managed false).
    Never another user's."""
    groups = {}
    procs = runservers(groups)
    listening = listeners(tcp_tables())  # read once: on a busy host each read costs milliseconds
    rows, claimed, hidden = [], set(), 0
    for name, port in host.instances():
        directory = os.path.join(host.dir, name)
        try:
            meta = json.loads(read_state(os.path.join(directory, "server.json"), "metadata"))
        except (OSError, ValueError, AgentError):
            meta = None
        project = recorded_project(directory, meta if isinstance(meta, dict) else None)
        if project is None or instance_name(project, port) != name:
            continue  # a lock alone (a stop of nothing), or files that do not name this directory
        inst = Instance(host, req.but(project=project, port=port, addr=None))
        if not (os.path.lexists(inst.pidfile) or os.path.lexists(inst.log)):
            continue
        try:
            found, note = located(inst, procs)
        except (AgentError, OSError) as exc:  # its state is refused (not private) or unreadable: say so in its row
            found, note = None, str(exc)
        pids = None
        if found is not None and found.pgid is not None:  # as Found.members, from the pass over /proc
            pids = sorted(pid for pid in groups.get(found.pgid, []) if not found.is_helper(pid))
        row = status_of(inst, found, note, pids, listening)
        # Stopped by stop, by its TTL or by a start that never came up: history,
        # which would otherwise stay for ever. A stale pidfile (a server that
        # died) is still shown: something ended it that nobody asked to; and
        # so is a server this list ended, past its expiry.
        if row["state"] == STOPPED and not os.path.lexists(inst.pidfile) and not req.all and not inst.ended:
            hidden += 1
            continue
        claimed.update(row["pids"] + (inst.ended or []))
        rows.append(row)
    unmanaged = {}
    for proc in procs:
        if proc["pid"] in claimed:
            continue
        script = os.path.realpath(os.path.join(proc["cwd"], proc["script"]))
        unmanaged.setdefault((os.path.dirname(script), proc["port"]), []).append(proc)
    for (project, port), found_procs in sorted(unmanaged.items()):
        inst = Instance(host, req.but(project=project, port=port, addr=runserver_addr(found_procs[0]["argv"])))
        pids = sorted(proc["pid"] for proc in found_procs)
        row = status_of(inst, Found(pids=pids, managed=False), "", pids, listening)
        row.update(pidfile=None, log=None, state_dir=None)  # fabserve keeps no state for it
        rows.append(row)
    for row in rows:
        row["action"] = "list"
        project = Project(host, req.but(project=row["project"])) if row["project"] else None
        row["branch"], row["commit"] = project.source() if project else (None, None)
    count = len(rows)
    message = f"{count} server{'s' if count != 1 else ''}" if count else "no servers"
    if hidden:
        message += f"; {hidden} stopped (list --all shows them)"
    return result_of(ok=True, changed=False, state=None, message=message, rows=rows)
