"""Finding an instance's server: through its identity-checked pidfile, else by
a precise search of this user's processes; ending one found past its TTL or
idle TTL (every call that locates does, so they hold without its watchdog); and
naming the instance a request means: the port given, the project's one live
instance, or a free port claimed for --port auto.
"""

import json
import os
import time

from .protocol import (
    AUTO, AgentError, Ambiguous, DEFAULT_ADDR, DEFAULT_PORT, DEFAULT_PORT_RANGE, EXPIRED, KILL_WAIT, STARTS, WEB,
    join, port_range)
from .procfs import (
    alive, all_pids, ancestors, boot_id, environ_token, group_members, namespaces, own_namespaces, owner,
    proc_stat, snapshot)
from .signals import Found, end_all, pauses, token_carriers
from .sockets import free_ports, tcp_tables
from .identity import given_path, identify, is_candidate, is_ours, runservers
from .state import (
    Instance, companion_pidfiles, instance_name, last_written, lock_held, other_host, read_state, recorded_addr,
    try_lock)
from .logfiles import append_log, cap_log
from .caddy import withdraw
from .ttl import (
    WATCH_POLL, activity_log, earliest, expiry_line, expiry_of, idle_expiry, idle_ttl_of, iso_time, ttl_word)


def verify(pid, meta):
    """None when the recorded leader is still the process we started, else why not."""
    if meta.get("boot_id") != boot_id():
        return "pidfile is from before the last reboot"
    info = proc_stat(pid)
    if info is None or info["state"] == "Z":
        return f"process {pid} is gone"
    if info["starttime"] != meta.get("starttime") or owner(pid) != os.getuid():
        return f"PID {pid} now belongs to another process"
    # Signals go to the group named by this PID: it must still lead one, and
    # never the group of the agent or of anything that called it.
    if info["pgrp"] != pid or pid in ancestors() or pid == os.getpgrp():
        return f"PID {pid} is not a server we started"
    found = namespaces(pid)
    if found is None:
        return f"the namespaces of PID {pid} cannot be read"
    if found != own_namespaces():
        return f"PID {pid} runs in another PID or network namespace"
    # fabserve always records a token, and the server inherits it: metadata
    # without one is not fabserve's, a process without it is not the server.
    recorded = meta.get("token")
    if not recorded or not isinstance(recorded, str):
        return f"the metadata records no token for PID {pid}"
    if environ_token(pid) != recorded:
        return f"PID {pid} now belongs to another process"
    return None


def locate(inst, procs=None):
    """The running server of `inst` (Found) or None, plus a note on stale state.

    The pidfile is this host's; without one, the one a version before per-host
    state wrote. Its metadata gives the token, the address and the release
    (on `inst`); one another host recorded is left to that host. `procs`: the
    runservers (see runservers) to search instead of /proc, for list.
    """
    note = ""
    token = None
    legacy = False
    try:
        pid, meta = inst.read_meta()
        if pid is None and inst.legacy_dir:
            pid, meta = inst.read_meta(inst.legacy_dir)
            legacy = pid is not None
    except ValueError as exc:
        pid, meta, note = None, None, f"ignored corrupt state: {exc}"
    if pid is not None:
        other = other_host(meta, inst.machine_id, inst.hostname)
        if other is not None:
            inst.foreign = other
            return search(inst, None, procs), f"the pidfile is of a server started on host {other}: left to that host"
        inst.recorded = meta
        token = meta.get("token")
        if not inst.addr_given and recorded_addr(meta):
            inst.addr = recorded_addr(meta)
        why = verify(pid, meta)
        if why is None:
            inst.legacy = legacy
            inst.serving = meta.get("project") if isinstance(meta.get("project"), str) else None
            inst.expires_at = expiry_of(meta)
            inst.idle_expires_at = idle_expiry(*idle_ttl_of(meta), activity_log(inst.dir))
            found = Found(pgid=pid, helper=meta.get("watchdog"))
            ends_at = earliest(inst.expires_at, inst.idle_expires_at)
            # look_only: a caller that must change nothing (Ansible's check mode) sees it as it is.
            if ends_at is not None and time.time() >= ends_at and not inst.req.look_only:
                return end_expired(inst, found, meta, procs)
            return found, ""
        note = f"stale pidfile{' of the previous state layout' if legacy else ''}: {why}"
    elif not note:
        token = left_token(inst)
    return search(inst, token, procs), note


def metadata_at(path):
    """The metadata a start wrote at `path` (a dict), or None when it is missing,
    unreadable, not an object or not this user's private file."""
    try:
        meta = json.loads(read_state(path, "metadata"))
    except (OSError, ValueError, AgentError):
        return None
    return meta if isinstance(meta, dict) else None


def left_token(inst):
    """The token of the instance's metadata when its pidfile is gone (removed by
    hand, or never written: the metadata is written first), recorded on `inst`
    so a stop ends what carries it; else None. Only this host's private metadata counts."""
    meta = metadata_at(inst.meta_path)
    if meta is None or other_host(meta, inst.machine_id, inst.hostname) is not None:
        return None
    token = meta.get("token")
    if not isinstance(token, str) or not token:
        return None
    inst.recorded = meta
    return token


def located(inst, procs=None):
    """locate(), and the log of a server found through its trusted pidfile kept
    under its cap: every call that finds one running keeps it so."""
    found, note = locate(inst, procs)
    if found is not None and found.managed:
        cap_log(inst)
    return found, note


def search(inst, token, procs=None):
    """Fallback without a trusted pidfile: the equivalent of `pgrep -u $USER -f
    'manage.py runserver'`, but on parsed argv, resolved paths, port, executable
    and namespaces, so decoys and containerised twins never match. A companion
    of a Procfile runs any command line: only its token identifies it."""
    if inst.process != WEB:
        found = token_carriers(token)
        if found is not None:
            found.managed = False
        return found
    excluded = ancestors()
    uid = os.getuid()
    manage_py = os.path.realpath(inst.manage_py)
    own = own_namespaces()
    matched = []
    for proc in procs if procs is not None else (snapshot(pid, token) for pid in all_pids()):
        if (proc and is_candidate(proc, manage_py, inst.port, uid, token, excluded, inst.given_manage_py)
                and is_ours(identify(proc), token, own)):
            matched.append(proc)
    if not matched:
        return None
    pids = sorted(proc["pid"] for proc in matched)
    groups = {proc["pgrp"] for proc in matched}
    own_groups = {info["pgrp"] for info in (proc_stat(pid) for pid in excluded) if info}
    # A group is signalled whole only when every live member matched: a server
    # started by hand may share its group with a shell that must survive.
    if len(groups) == 1:
        pgid = groups.pop()
        if pgid > 1 and pgid not in own_groups and group_members(pgid) == pids:
            return Found(pgid=pgid, managed=False)
    return Found(pids=pids, managed=False)


def end_expired(inst, found, meta, procs):
    """(None, what happened) for a server found past its expiry, once it is
    ended as its watchdog ends it: every call that locates an instance does
    this, so the TTL and the idle TTL hold when the watchdog is gone (killed,
    or never ran).
    A live watchdog gets the time its own stop takes first. A call without the
    instance's lock (status, logs, list) takes it, giving way to a start, stop
    or restart that holds it (which ends the server itself), and goes on only
    while the state still names this server."""
    grace = inst.req.stop_timeout
    watch = meta.get("watchdog") if isinstance(meta.get("watchdog"), dict) else {}
    pids = found.members()
    deadline = time.time() + grace + WATCH_POLL + KILL_WAIT
    for pause in pauses():
        # Locked, the watchdog waits for our lock to remove the state: wait for the server alone.
        working = alive(watch.get("pid"), watch.get("starttime")) if watch.get("pid") else False
        if not (working and (found.members() or not inst.locked)) or time.time() >= deadline:
            break
        time.sleep(pause)
    lock = None
    if not inst.locked:
        lock = try_lock(inst.dir)
        if lock is None:
            return found, ""
    try:
        if lock is not None:
            try:
                now_pid, now = inst.read_meta()
            except ValueError:
                now_pid, now = None, None
            if now_pid != found.pgid or (now or {}).get("token") != meta.get("token"):
                os.close(lock)  # ended or replaced meanwhile: look again
                lock = None
                return locate(inst, procs)
        ends_at = earliest(inst.expires_at, inst.idle_expires_at)
        idle = ends_at != inst.expires_at
        left, escaped, notes = found.members(), [], []
        if left:
            left, escaped, killed = end_all(found, meta.get("token"), grace)
            notes = [f"with SIGKILL after {grace:g}s grace" if killed else "",
                     f"pids {' '.join(map(str, escaped))} had left the server's process group" if escaped else "",
                     f"its watchdog was gone, so {inst.req.action} stopped pids "
                     f"{' '.join(map(str, left + escaped))}"]
            append_log(inst.log, expiry_line(ends_at, *notes, idle=idle))
        inst.forget()
        withdrawn = withdraw(meta.get("exposed"))
        inst.ended = sorted(set(pids + left + escaped))
        return None, join(f"{EXPIRED} at {iso_time(ends_at)} ({ttl_word(idle)})",
                          notes[-1] if notes else "", withdrawn)
    finally:
        if lock is not None:
            os.close(lock)


# How many chosen ports a start tries: another user's agent may choose the same one
# (the choice is locked per user), and their server is seen only once it listens.
PORT_TRIES = 5


def project_instances(host, req, procs):
    """(live, recorded): the ports of the project's instances on this host.
    Live (sorted): a server runs (trusted pidfile, or found among `procs`), or
    an agent is starting or stopping it now. Recorded, the last written last:
    only state is left (a stale pidfile, a kept log)."""
    given = given_path(req.project)
    live, recorded = set(), {}
    for name, port in host.instances():
        if name != instance_name(given, port):
            continue
        inst = Instance(host, req.but(port=port))
        if lock_held(os.path.join(inst.dir, "lock")):
            live.add(port)
            continue
        if trusted(inst) or companions_live(inst):
            live.add(port)
        elif os.path.lexists(inst.pidfile) or os.path.lexists(inst.log):
            recorded[port] = last_written(inst)
    probe = Instance(host, req.but(port=DEFAULT_PORT))
    manage_py, uid, excluded = os.path.realpath(probe.manage_py), os.getuid(), ancestors()
    for proc in procs:
        if is_candidate(proc, manage_py, proc["port"], uid, None, excluded, probe.given_manage_py):
            live.add(proc["port"])
    return sorted(live), sorted((port for port in recorded if port not in live), key=lambda port: recorded[port])


def trusted(inst):
    """Whether the pidfile of `inst` (or of its companion) names a process of this host that runs."""
    try:
        pid, meta = inst.read_meta()
    except (ValueError, AgentError):
        return False
    return pid is not None and other_host(meta, inst.machine_id, inst.hostname) is None and verify(pid, meta) is None


def companions_live(inst):
    """Whether a process of the instance's Procfile other than web runs, by its
    trusted pidfile (web may have been stopped alone: stop --only web)."""
    return any(trusted(inst.companion(name)) for name in companion_pidfiles(inst.dir))


def taken_ports(host):
    """The ports no chosen port may be: those recorded by a pidfile in this
    host's state (stale ones too, and a Procfile's other processes'), and
    those an agent is starting or stopping."""
    taken = set()
    for name, port in host.instances():
        directory = os.path.join(host.dir, name)
        if (os.path.lexists(os.path.join(directory, "server.pid")) or lock_held(os.path.join(directory, "lock"))
                or companion_pidfiles(directory)):
            taken.add(port)
    return taken


def claim_port(host, req, tried=()):
    """A free port of the request's range for a new instance (see choose_port),
    none of `tried` (found taken by this start). The caller holds the host's lock
    until it holds the new instance's own, which marks the port as taken for the
    next chooser (see taken_ports)."""
    low, high = port_range(req.port_range or DEFAULT_PORT_RANGE)
    addr = req.addr or DEFAULT_ADDR
    free = free_ports(low, high, taken_ports(host) | set(tried), tcp_tables(), addr)
    if not free:
        raise AgentError(f"no free port from {low} to {high} on {addr} (port_range): every one is listened "
                         f"on{', tried by this start' if tried else ''} or recorded by another instance; "
                         f"nothing was started")
    # Once a chosen port was taken at bind time, another user's agent (which scans the
    # same way) chose it too; the first free port again would likely be both users' next.
    if not tried:
        return free[0]
    import random
    return random.choice(free)


def resolve_instance(host, req, tried=()):
    """`req` with the port of the instance it names, and the host's lock when
    that port was just chosen (else None); a port is never chosen from `tried`.

    A port given (a number) names it. None (given nowhere) or `auto`: the
    project's one live instance on this host; several: Ambiguous (exit 2).
    None live: start and restart with `auto` choose a free port (see claim_port),
    under the host's lock so concurrent starts never choose the same one, and
    the project's check runs under it too; otherwise the project's recorded
    instance written last (its log: the last start, or a start that never came
    up), else DEFAULT_PORT, as before ports were optional. Only servers that run
    make a project ambiguous: with none, a CI job's stop without a port is
    "not running", exit 0, however many stopped instances it left.
    """
    port = req.port
    if isinstance(port, int) or req.action == "manage":  # manage runs the same whichever runs (see ran_against)
        return req, None
    choosing = port == AUTO and req.action in STARTS
    held = host.lock() if choosing else None
    try:
        live, recorded = project_instances(host, req, runservers())
        if len(live) > 1:
            raise Ambiguous(req.project, live)
        if live:
            port = live[0]
        elif choosing:
            return req.but(port=claim_port(host, req, tried)), held
        else:
            port = recorded[-1] if recorded else DEFAULT_PORT
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    if held is not None:
        os.close(held)
    return req.but(port=port), None
