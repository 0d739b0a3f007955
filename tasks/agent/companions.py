"""The processes of an instance beside its server (a Procfile's worker,
watcher, ...): which it has, launching them, watching them through a start's
readiness window, stopping them, and how a result describes each one.

A companion runs any command line, so it is known only by what fabserve gave
it: its pidfile (leader PID, start time, boot id) and its token; the search by
command line is runserver's alone (see locate.search).
"""

import os
import time

from .protocol import AgentError, EXITED, FAILED, RUNNING, STOPPED, WEB
from .procfs import proc_stat, uptime_seconds
from .signals import end_all, end_token_carriers, pauses, terminate
from .state import companion_pidfiles, instance_record, open_regular
from .procfile import Process, exit_status, recorded_table
from .logfiles import log_tail, read_tail
from .ttl import apply_ttl
from .locate import locate, located
from .launch import launch

# How long each process a start launched must keep running before the start
# succeeds (besides web's port and check): a worker with a wrong app or a
# missing module dies within it.
READY_WINDOW = 1.0


def instance_table(inst):
    """The instance's processes as its last start recorded them, plus any
    companion whose pidfile is there though the record no longer names it;
    None for an instance without a Procfile."""
    table = recorded_table(instance_record(inst.dir)) or []
    names = [process.name for process in table]
    extra = [Process(name, None, None) for name in companion_pidfiles(inst.dir) if name not in names]
    if not table and not extra:
        return None
    if not table:
        table = [Process(WEB, None, inst.port)]
    return table + extra


def last_exit(comp, name):
    """The exit status the process's log's last line records (see procfile.WRAPPER), or None."""
    try:
        with open_regular(comp.log, "log") as handle:
            last = read_tail(handle, 1)
    except (OSError, AgentError):
        return None
    return exit_status(last[-1], name) if last else None


def process_row(comp, process, found=None, state=None, pids=None):
    """How a result describes one process (see protocol.EXTRAS' `processes`):
    `comp` the instance as this process (Instance.companion, or the instance
    itself for web), `found` as locate found it, `state` when the caller knows it."""
    pids = (found.members() if found is not None else []) if pids is None else pids
    if state is None:
        state = RUNNING if found is not None and found.managed and pids else None
    if state is None:
        state = EXITED if os.path.lexists(comp.pidfile) or pids else STOPPED
    row = {"name": process.name, "command": process.command, "port": process.port, "state": state,
           "pid": pids[0] if pids else None, "pids": pids, "uptime": None, "exit_status": None,
           "log": comp.log, "log_tail": None}
    if found is not None and found.pgid is not None and pids:
        row["pid"] = found.pgid
        leader = proc_stat(found.pgid)
        if leader and state in (RUNNING, FAILED):
            row["uptime"] = uptime_seconds(leader["starttime"])
    if state == EXITED:
        row["exit_status"] = last_exit(comp, process.name)
        row["log_tail"] = log_tail(comp, lines=10)
    return row


def companion_rows(inst, table):
    """The rows of `table`'s processes other than web, each located now."""
    rows = []
    for process in table:
        if process.name != WEB:
            comp = inst.companion(process.name)
            found, _ = located(comp)
            rows.append(process_row(comp, process, found))
    return rows


def exited_note(row):
    status = row["exit_status"]
    return f"{row['name']} exited" + (f" with status {status}" if status is not None else "")


def launch_companions(inst, processes, expires_at, launched):
    """Launch each of `processes` not running yet, adding (companion, process,
    Popen, Found) to `launched` as each starts (a running one gets the
    request's --ttl, as start gives its server). Returns (the names already
    running, what --ttl said)."""
    running, applied = [], ""
    for process in processes:
        comp = inst.companion(process.name)
        found, _ = located(comp)
        if found is not None:
            running.append(process.name)
            if (inst.req.ttl or inst.req.idle_ttl) and found.managed:
                applied = apply_ttl(comp, found)
            continue
        comp.forget()
        proc, found, _ = launch(comp, None, process, expires_at)
        launched.append((comp, process, proc, found))
    return running, applied


def died(launched):
    """The first launched companion that ended, as {why, tail (its log's last
    lines), name, log, status (-N: signal N; None: unknown)}, else None."""
    for comp, process, proc, found in launched:
        code = proc.poll()
        if code is None and found.members():
            continue
        if code is None:  # its group emptied this instant: its exit status is a wait away
            code = exit_code_of(proc)
        status = None if code is None else code if code <= 128 else 128 - code
        said = "" if status is None else f" with status {status}"
        return {"why": f"{process.name} exited{said} during the start", "tail": log_tail(comp),
                "name": process.name, "log": comp.log, "status": status}
    return None


def exit_code_of(proc, wait=1.0):
    """The exit status of a launched process whose group just emptied, once the
    kernel has it (None after `wait` seconds: then it still runs, outside its group)."""
    import subprocess
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        return None


def await_window(launched, since):
    """Watch the `launched` companions until READY_WINDOW after `since`: the
    first that ends (see died), else None."""
    for pause in pauses():
        dead = died(launched)
        if dead or time.time() >= since + READY_WINDOW:
            return dead
        time.sleep(min(pause, max(0.0, since + READY_WINDOW - time.time())))


def end_launched(launched, grace):
    """End what a failed start launched: each companion's group and what
    carries its token, its pidfile forgotten. Errors are not raised: the
    start's own failure is what the caller reports."""
    for comp, _, proc, found in launched:
        try:
            terminate(found, grace)
            end_token_carriers((comp.recorded or {}).get("token"), grace)
        except AgentError:
            pass
        proc.poll()
        comp.forget()


def stop_companion(comp):
    """Stop one companion as stop stops a server: its group, TERM then KILL,
    then what still carries its token. Returns (pids, killed); AgentError
    names survivors."""
    found, _ = locate(comp)
    token = (comp.recorded or {}).get("token")
    if found is None:
        comp.forget()
        return list(comp.ended or []), False
    pids, escaped, killed = end_all(found, token, comp.req.stop_timeout)
    comp.forget()
    return pids + escaped, killed


def stop_companions(inst, names):
    """Stop the companions `names` of `inst`. Returns (pids, killed, problems,
    the names of those that ran)."""
    stopped, killed, problems, ended = [], False, [], []
    for name in names:
        try:
            pids, was_killed = stop_companion(inst.companion(name))
        except AgentError as exc:
            problems.append(f"{name}: {exc}")
            stopped += [pid for pid in exc.extra.get("pids", []) if pid not in stopped]
            continue
        stopped += pids
        killed = killed or was_killed
        if pids:
            ended.append(name)
    return stopped, killed, problems, ended


def stopped_note(names, pids):
    """What a stop says of the companions it ended (`names`), none when it ended none."""
    return f"stopped {', '.join(names)} (pids {' '.join(map(str, pids))})" if names else ""


def running_note(names):
    return f"{', '.join(names)} already running" if names else ""

