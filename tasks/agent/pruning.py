"""The handler of prune: stop and remove, by destroy's rules, this user's
instances on the host that expired, are older than --older-than, or whose
branch is not among --keep-branches; with dry_run, only say which.

It reads fabserve's own state directories alone: a server fabserve did not
start has none, so it is never a candidate, and another user's state is in
their home, out of reach.
"""

import os
import shutil
import time

from .protocol import AgentError, RUNNING, STOPPED, join, result_of
from .state import Instance, check_levels, companion_pidfiles, instance_name, instance_record, recorded_project
from .projects import Project
from .locate import metadata_at, trusted
from .ttl import expired_at, expiry_of, iso_time
from .teardown import clear_project
from .verbs import do_stop

EXPIRED_REASON, OLDER_REASON, BRANCH_REASON = "expired", "older than", "branch gone"


def do_prune(host, req):
    """Every candidate of this host as a row with its reasons; each one
    stopped and removed unless dry_run. Instances of one project are pruned
    under the project's lock, as destroy takes it, then each under its own."""
    now = time.time()
    rows, failures = [], []
    for name, port in host.instances():
        directory = os.path.join(host.dir, name)
        project = recorded_project(directory, server_meta(directory))
        if project is None or instance_name(project, port) != name:
            continue  # a lock alone, or files that do not name this directory
        inst = Instance(host, req.but(project=project, port=port, addr=None, only=None))
        if not (os.path.lexists(inst.pidfile) or os.path.lexists(inst.log)):
            continue
        row = candidate(inst, now)  # without a lock: most instances are none, and no lock file is made for them
        if row is not None and not req.dry_run:
            row = pruned(inst, now)
        if row is None:
            continue
        if row.get("error"):
            failures.append(f"{row['project']} port {row['port']}: {row['error']}")
        rows.append(row)
    count = len(rows) - len(failures)
    verb = "would prune" if req.dry_run else "pruned"
    message = f"{verb} {count} instance{'s' if count != 1 else ''}" if count else "nothing to prune"
    if failures:
        return result_of(ok=False, changed=bool(count), state=None, rows=rows, dry_run=req.dry_run,
                         message=join(message, *failures), error=join(*failures))
    return result_of(ok=True, changed=bool(count) and not req.dry_run, state=None, rows=rows,
                     dry_run=req.dry_run, message=message)


def server_meta(directory):
    """server.json of the instance `directory` (a dict), or None."""
    return metadata_at(os.path.join(directory, "server.json"))


def started_at(inst, meta):
    """When the instance last started (epoch seconds): its record's `started`,
    else its metadata's (`meta`, see server_meta), else its log's mtime; None
    when none says."""
    for record in (instance_record(inst.dir), meta):
        value = (record or {}).get("started")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    try:
        return os.lstat(inst.log).st_mtime
    except OSError:
        return None


def reasons_of(inst, now, branch, meta, started):
    """Why the instance (its metadata `meta`, last `started`) is a candidate:
    the reasons that hold, in the order expired, older than, branch gone; empty
    when none does."""
    req, reasons = inst.req, []
    expiry = expiry_of(meta)
    if (expiry is not None and now >= expiry) or expired_at(inst):
        reasons.append(EXPIRED_REASON)
    if req.older_than is not None and started is not None and now - started > req.older_than:
        reasons.append(f"{OLDER_REASON} {duration(req.older_than)}")
    # An instance whose branch is unknown (never synced with one) is never pruned by the list.
    if req.keep_branches is not None and branch is not None and branch not in req.keep_branches:
        reasons.append(BRANCH_REASON)
    return reasons


def duration(seconds):
    """`7d`, `2h`, `30m` or `45s`: the largest whole unit of `seconds`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def live_processes(inst):
    """(web runs, names of the other processes that run), each by its trusted
    pidfile only: what prune may stop. A runserver found by its command line
    alone is no instance's, and prune never signals it."""
    return trusted(inst), [name for name in companion_pidfiles(inst.dir) if trusted(inst.companion(name))]


def candidate(inst, now):
    """The row of `inst` when it is a candidate, else None; nothing is changed."""
    project = Project(inst.host, inst.req.but(project=inst.given))
    branch, _ = project.source()
    meta = server_meta(inst.dir)
    started = started_at(inst, meta)
    reasons = reasons_of(inst, now, branch, meta, started)
    if not reasons:
        return None
    web, others = live_processes(inst)
    return result_of(project=inst.project, port=inst.port, state_dir=inst.dir, log=inst.log, branch=branch,
                     state=RUNNING if web or others else STOPPED, reasons=reasons, removed=False,
                     started_at=iso_time(started or None),
                     message=", ".join(reasons))


def pruned(inst, now):
    """Prune `inst` when it is a candidate (its row, with what was stopped and
    removed), else None. Decided again under the locks: a start may have
    renewed it since the directory was listed."""
    project = Project(inst.host, inst.req.but(project=inst.given))
    project_fd = project.lock()
    try:
        fd = inst.lock()
        try:
            row = candidate(inst, now)
            if row is None or not (os.path.lexists(inst.pidfile) or os.path.lexists(inst.log)):
                return None  # renewed, or removed (destroy) meanwhile
            try:
                row["pids"] = stop_live(inst)
            except AgentError as exc:
                row.update(ok=False, error=str(exc), pids=exc.extra.get("pids", []))
                return row
            check_levels(inst.base, inst.dir)
            shutil.rmtree(inst.dir)  # this call's lock goes with it: nobody else waits on a removed file's lock
        finally:
            os.close(fd)
        row["removed"] = remove_project(project, inst)
    finally:
        os.close(project_fd)
    row["pid"] = row["pids"][0] if row["pids"] else None
    row["message"] = join(row["message"], f"stopped pids {' '.join(map(str, row['pids']))}" if row["pids"] else "",
                          f"removed {project.dir}" if row["removed"] else "")
    return row


def stop_live(inst):
    """Stop what runs of `inst` by its trusted pidfiles (do_stop, under the
    caller's lock); the PIDs it stopped."""
    web, others = live_processes(inst)
    if not (web or others):
        return []
    only = None if web else others  # web's pidfile is gone: its command line is no proof it is ours
    stopped = Instance(inst.host, inst.req.but(only=only))
    stopped.locked = True
    return do_stop(stopped)["pids"]


def remove_project(project, inst):
    """By destroy's rules, once no other instance of the project is left: its
    directory where sync created it, and its record. Whether the directory went."""
    if any(name == instance_name(inst.given, port) for name, port in inst.host.instances()):
        return False
    return clear_project(project)[2]
