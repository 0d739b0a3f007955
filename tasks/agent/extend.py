"""The handler of extend: a running instance's expiries pushed from now (each
of its processes has its own watchdog, so each gets the new deadlines)."""

from .protocol import AgentError, STOPPED, WEB, join
from .state import instance_record
from .ttl import apply_lifetimes, expiry_of
from .companions import instance_table
from .locate import located
from .verbs import not_running, status_of, with_processes


def durations(inst):
    """(ttl, idle_ttl, renew_idle) extend gives: the request's; without either,
    the durations the instance was started with, renewed from now."""
    if inst.req.ttl or inst.req.idle_ttl:
        return inst.req.ttl, inst.req.idle_ttl, False
    started = (instance_record(inst.dir) or {}).get("started_with")
    started = started if isinstance(started, dict) else {}
    ttl = started.get("ttl") if expiry_of(inst.recorded) is not None else None
    ttl = ttl if isinstance(ttl, int) and ttl > 0 else None
    renew_idle = bool((inst.recorded or {}).get("idle_ttl"))
    if ttl is None and not renew_idle:
        raise AgentError(f"the server on port {inst.port} has no ttl and no idle ttl to extend: "
                         f"give --ttl or --idle-ttl")
    return ttl, None, renew_idle


def do_extend(inst):
    found, note = located(inst)
    if found is None:
        raise AgentError(not_running(inst, note), STOPPED)
    ttl, idle_ttl, renew_idle = durations(inst)
    said = apply_lifetimes(inst, found, ttl, idle_ttl, renew_idle)
    table = instance_table(inst)
    for process in table or ():
        if process.name != WEB:
            comp = inst.companion(process.name)
            running, _ = located(comp)
            if running is not None and running.managed:
                apply_lifetimes(comp, running, ttl, idle_ttl, renew_idle)
    result = status_of(inst, found, note)
    result.update(changed=True, message=join(result["message"], said))
    return with_processes(inst, table, result) if table else result
