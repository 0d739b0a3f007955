"""The handler of list: every server of this user on the host, each as
status describes it, with its Procfile's processes, branch and commit.
"""

import json
import os

from .protocol import AgentError, STOPPED, result_of
from .signals import Found
from .sockets import listeners, tcp_tables
from .identity import runserver_addr, runservers
from .state import Instance, companion_pidfiles, instance_name, read_state, recorded_project
from .projects import Project
from .companions import instance_table
from .locate import located
from .verbs import status_of, with_processes


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
        table = instance_table(inst)
        if table:
            with_processes(inst, table, row)
        # Stopped by stop, by its TTL or by a start that never came up: history,
        # which would otherwise stay for ever. A stale pidfile (a server that
        # died, a process of its Procfile that exited) is still shown: something
        # ended it that nobody asked to; and so is a server this list ended, past its expiry.
        stale = os.path.lexists(inst.pidfile) or companion_pidfiles(directory)
        if row["state"] == STOPPED and not stale and not req.all and not inst.ended:
            hidden += 1
            continue
        claimed.update(row["pids"] + (inst.ended or []))
        for process in row.get("processes") or ():
            claimed.update(process["pids"])
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
