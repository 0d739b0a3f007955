"""The handlers of status, stop, start and restart: what each verb does to
an instance, its server and, with a Procfile, its other processes; and how a
result describes an instance.
"""

import time

from .protocol import AgentError, DEGRADED, EXITED, EXPIRED, FAILED, RUNNING, STOPPED, WEB, join, result_of
from .procfs import proc_stat, uptime_seconds
from .signals import end_all, pauses, terminate
from .sockets import holders, listen_inodes, listeners, pids_holding, port_answers, port_held, tcp_tables
from .logfiles import log_tail
from .ttl import apply_ttl, expired_at, expiry_fields, launch_expiry
from .procfile import process_table, selected
from .records import remember, rerun, started_check
from .locate import located
from .launch import (
    PortTaken, check_note, checked_health, fallback_note, health, launch, resolve_python, taken_by,
    unapplied_migrations, wait_http)
from .caddy import withdraw
from .exposure import exposed_note, planned, publish, republish
from .companions import (
    await_window, companion_rows, died, end_launched, exited_note, instance_table, launch_companions, process_row,
    running_note, stop_companions, stopped_note)


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
    answered.update(expiry_fields(*((inst.expires_at, inst.idle_expires_at) if found is not None else (None,))))
    exposed = (inst.exposed or (inst.recorded or {}).get("exposed")) if found is not None else None
    answered["public_url"] = exposed.get("url") if isinstance(exposed, dict) else None
    answered.update(fields)
    return result_of(**answered)


def do_status(inst):
    found, note = located(inst)
    result = status_of(inst, found, note)
    # What tunnel's first request asks for: the path given, else the one the instance was started with.
    result["check"] = inst.req.check or started_check(inst)
    table = instance_table(inst)
    return with_processes(inst, table, result) if table else result


def web_row(inst, table, result):
    """web's row of `table`, from the instance's own result (status_of's)."""
    process = next(process for process in table if process.name == WEB)
    alive = result["state"] in (RUNNING, FAILED) and result["pids"]
    row = process_row(inst, process, None, result["state"] if alive else None, result["pids"] if alive else [])
    if alive:
        leader = proc_stat(result["pid"]) if result["pid"] else None
        row.update(pid=result["pid"], uptime=result.get("uptime"))
        if row["uptime"] is None and leader:  # start's and stop's results carry none of their own
            row["uptime"] = uptime_seconds(leader["starttime"])
    return row


def with_processes(inst, table, result):
    """`result` with the `processes` of `table` and
    the instance's state from them: failed when web is (its health, its check);
    degraded (exit 1) while a process exited and another runs; stopped when
    none runs; else running."""
    rows = [web_row(inst, table, result)] + companion_rows(inst, table)
    result["processes"] = rows
    if result["state"] == FAILED and result.get("error"):  # the instance's own state refused or unreadable
        return result
    alive = sum(row["state"] in (RUNNING, FAILED) for row in rows)
    exited = "; ".join(exited_note(row) for row in rows if row["state"] == EXITED)
    count = f"{alive} of {len(rows)} processes running"
    if rows[0]["state"] == FAILED:
        result["message"] = join(result["message"], exited, count)
    elif alive and (exited or rows[0]["state"] == STOPPED):  # web stopped alone: nothing answers on its port
        result.update(state=DEGRADED, ok=False, message=join(exited or "web is stopped", count))
    elif not alive:
        result.update(state=STOPPED, message=join(result["message"] if result["state"] == STOPPED else "", exited))
    else:
        result.update(state=RUNNING, ok=True, message=join(result["message"], count))
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
    (or "(idle ttl)") when its TTL ended it (end_expired's note, else its log's
    last line)."""
    if note.startswith(EXPIRED):
        return note
    when = expired_at(inst)
    return join(f"{EXPIRED} at {when}" if when else "not running", note)


def release_note(inst):
    """What to say when the project path now resolves to another release than
    the running server was launched from (a moved `current` symlink)."""
    if inst.serving and inst.serving != inst.project:
        return f"serving {inst.serving}; {inst.given} now resolves to {inst.project}: restart to switch"
    return ""


def do_stop(inst):
    """Stop the instance: its server (see stop_server) and, with a Procfile,
    each of its other processes (or those --only names), each its own group."""
    table = instance_table(inst)
    if table is None:
        alone(inst)
        return stop_server(inst)
    if inst.req.action == "restart" and inst.req.only:  # a process new to the Procfile has nothing to stop yet
        chosen = [process for process in table if process.name in inst.req.only]
    else:
        chosen = selected(table, inst.req.only)
    names = [process.name for process in chosen if process.name != WEB]
    pids, killed, problems, ended = stop_companions(inst, names)
    web = any(process.name == WEB for process in chosen)
    try:
        result = stop_server(inst) if web else status_of(inst, *located(inst))
    except AgentError as exc:
        exc.extra["pids"] = exc.extra.get("pids", []) + pids
        exc.extra["changed"] = exc.extra.get("changed") or bool(pids)
        raise AgentError(join(str(exc), *problems), exc.state, **exc.extra)
    if problems:
        raise AgentError(join(*problems), STOPPED, pids=pids + (result["pids"] if web else []), killed=killed,
                         changed=True)
    note = stopped_note(ended, pids)
    if web:
        result.update(pids=result["pids"] + pids, killed=bool(result.get("killed")) or killed,
                      changed=result["changed"] or bool(pids), pid=result["pid"] or (pids[0] if pids else None))
        said = join(result["message"], note)
        with_processes(inst, table, result)
    else:  # web's row from web's own status first; then the result is what this stop ended
        with_processes(inst, table, result)
        result.update(changed=bool(pids), pids=pids, pid=pids[0] if pids else None, killed=killed, port_free=None)
        said = note
    # A stop did what it was asked, whatever it left running: the rest is the instance's state.
    result.update(ok=True, error=None, message=join(said, result["message"] if result["state"] != STOPPED else ""))
    return result


def stop_server(inst):
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
    pids, escaped, killed = end_all(found, token, grace)
    inst.forget()
    withdrawn = withdraw((inst.recorded or {}).get("exposed"))
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
                    message=join(message, withdrawn, note))


def alone(inst):
    """Refuse --only naming anything but web for an instance without a Procfile."""
    others = [name for name in inst.req.only or () if name != WEB]
    if others:
        raise AgentError(f"no process {', '.join(others)}: {inst.project} has no Procfile and no processes setting, "
                         f"so its instance runs web alone")


def do_start(inst):
    """Start the instance: its server (see start_server) or, with a Procfile,
    its processes (see start_processes)."""
    inst.require_project()
    table = process_table(inst)
    if table is None:
        alone(inst)
        return start_server(inst, resolve_python(inst))
    return start_processes(inst, table)


def start_processes(inst, table):
    """Start each process of `table` (or those --only names) that is not
    running: the others first, then web, whose start waits for its port and
    check; then each process launched must outlive the readiness window
    (companions.READY_WINDOW). A failure ends everything this start launched."""
    chosen = selected(table, inst.req.only)
    web = next((process for process in chosen if process.name == WEB), None)
    python = resolve_python(inst) if web is not None and web.command is None else None
    inst.table = table
    expires_at = launch_expiry(inst)  # one lifetime for the whole instance
    remember(inst)
    since = time.time()
    launched, death = [], {}

    def watch():
        """What start_server watches while web comes up: (why, tail) once a companion died."""
        death.update(died(launched) or {})
        return (death["why"], death["tail"]) if death else None
    try:
        running, applied = launch_companions(inst, [p for p in chosen if p.name != WEB], expires_at, launched)
        result = None
        if web is not None:
            result = start_server(inst, python, web, expires_at, watch)
        death.update(await_window(launched, since) or {})
        if death:
            if result is not None and inst.launched is not None:  # web, started by this start, goes too
                terminate(inst.launched, min(inst.req.stop_timeout, 5))
                inst.forget()
            raise AgentError(join(death["why"], "nothing this start launched was left running"),
                             log_tail=death["tail"])
    except BaseException as exc:  # whatever ended the start, nothing it launched outlives it
        end_launched(launched, min(inst.req.stop_timeout, 5))
        if not isinstance(exc, AgentError):
            raise
        rows = [web_row(inst, table, status_of(inst, *located(inst)))] + companion_rows(inst, table)
        if death:  # the one that died says how, with its own log
            exc.extra["log"] = death["log"]
            for row in rows:
                if row["name"] == death["name"]:
                    row.update(state=EXITED, exit_status=death["status"], log_tail=death["tail"])
        exc.extra.setdefault("processes", rows)
        raise
    if result is None:
        result = status_of(inst, *located(inst))
    started = [comp.process for comp, _, _, _ in launched]
    verb = "restarted" if inst.req.action == "restart" else "started"
    note = join(f"{verb} {', '.join(started)}" if started else "", running_note(running), applied)
    result.update(changed=bool(result.get("changed")) or bool(started) or bool(applied),
                  message=join(result["message"], note))
    with_processes(inst, table, result)
    names = [process.name for process in chosen]
    result["ok"] = all(row["state"] == RUNNING for row in result["processes"] if row["name"] in names)
    return result


def start_server(inst, python, process=None, expires_at=None, watch=None):
    """Start the server (`process`: the Procfile's web, which may be a command
    of its own) unless it runs; `watch`: what else to watch while waiting for
    it, returning (why, log tail) once something the start needs ended."""
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
        # A --ttl (or --idle-ttl) is never dropped: a leftover server a CI job's start finds gets it too.
        applied = apply_ttl(inst, found) if inst.req.ttl or inst.req.idle_ttl else ""
        if inst.req.expose and state == RUNNING:  # its route put back, or added (a caddy reload dropped it)
            applied = join(applied, republish(inst, found))
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
    if inst.req.expose:  # Caddy answers, with a site to add the route to, or nothing starts
        inst.exposed = planned(inst)
    proc, found, offset = launch(inst, python, process, expires_at)
    inst.launched = found
    deadline = time.time() + inst.req.start_timeout
    http = None
    tail = None
    for pause in pauses():
        dead = watch() if watch else None
        if dead is not None:
            why, tail = dead
            break
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
            if why is None and inst.exposed:
                try:
                    publish(inst, inst.exposed)
                except AgentError as exc:
                    why = f"{exc}; the server was stopped again"
            if why is None:
                return describe(inst, found, ok=True, changed=True, state=RUNNING, python=python, pids=pids,
                                http_status=http, message=join(f"started on {inst.url}", check_note(inst, http),
                                                               exposed_note(inst.exposed), note))
            break
        if time.time() >= deadline:
            why = f"nothing answered on port {inst.port} within {inst.req.start_timeout:g}s"
            break
        time.sleep(pause)
    terminate(found, min(inst.req.stop_timeout, 5))
    proc.poll()
    inst.forget()
    inst.launched = None
    tail = tail or log_tail(inst, offset)
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
