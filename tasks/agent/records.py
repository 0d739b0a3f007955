"""What a start records of an instance, kept after stop with its log: which
project and port its directory is for, the settings it was started with (so
a restart reruns them) and its Procfile's processes.
"""

import json
import os
import time

from .state import instance_record, write_atomic


# The request settings that make a server what it is, and their types: each
# start records them (instance.json, kept after stop), and a restart not given
# one reruns the recorded value. python is kept as given (None: the project's
# venv, found again in the release the project now resolves to); ttl as a
# duration (and idle_ttl), so a restarted server gets a whole lifetime again.
RERUN = (("python", str), ("settings", str), ("env", dict), ("noreload", bool), ("addr", str), ("check", str),
         ("ttl", int), ("idle_ttl", int), ("env_file", str), ("processes", dict), ("expose", bool),
         ("host_template", str), ("basic_auth", str))


def remember(inst):
    """Record which project and port the instance directory is for, what
    it is started with (RERUN) and its Procfile's processes, kept after stop
    with its log, so list can name the project of a stopped instance and
    restart can rerun it."""
    started = {name: getattr(inst.req, name) for name, _ in RERUN}
    started["addr"] = inst.addr  # as launched: given, recorded by the last start, or the default
    # `started`: kept after stop, when server.json is gone, for prune --older-than.
    record = {"project": inst.given, "port": inst.port, "started_with": started, "started": time.time()}
    if inst.table:  # the processes, for status, stop and list (see companions.instance_table)
        record["processes"] = [process.row() for process in inst.table]
    write_atomic(os.path.join(inst.dir, "instance.json"), json.dumps(record))


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
