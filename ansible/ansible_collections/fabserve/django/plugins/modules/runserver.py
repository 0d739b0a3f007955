#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the fabserve authors
"""fabserve.django.runserver: fabserve's agent as an Ansible module."""

DOCUMENTATION = r'''
module: runserver
short_description: Start, stop, restart or check a Django development server (manage.py runserver)
version_added: "0.1.0"
description:
  - Runs fabserve's agent (the same code C(fab start), C(fab stop), C(fab restart) and C(fab status)
    run on a host) inside the module, so a server started by one is found, checked and stopped by the other.
  - C(state=started) starts C(manage.py runserver) detached (its own session and process group, output to
    its log), and returns once the port answers; the task does not wait for the server to end.
  - C(state=stopped) ends the server's whole process group, TERM then KILL after C(stop_timeout),
    found through its identity-checked pidfile or, without one, a precise search of this user's processes.
  - With a C(Procfile) in the project, or the C(processes) option, the instance is every process of that
    table (C(web) is the server, fabserve's runserver unless the table names a command for it); each one
    runs in its own process group, and C(only) limits C(started), C(stopped) and C(restarted) to some of them.
    C(state=started) starts each one that does not run (a companion that exited, or was stopped).
  - Changed exactly when a server or a process was started or stopped; C(state=status) never changes anything.
  - Every result holds every field of RETURN, null where it does not apply to the state.
extends_documentation_fragment:
  - fabserve.django.settings
notes:
  - Supports check mode; it reports what C(started), C(stopped) or C(restarted) would change from a
    read-only status of the server. With C(port=auto) and no server of the project running, the port
    is chosen at start, so check mode reports C(port) null and names the range in C(msg).
  - Supports diff mode (C(--diff)); C(diff) holds the server's C(state), C(port) and C(pids) before and
    after, in check mode what they would be (C(pids) null for a server not started yet). With a Procfile,
    C(pids) are web's and C(processes) maps each process to its state.
  - State (pidfile, metadata, log) lives in C(state_dir), by default C(~/.local/state/fabserve) on the
    target, the same as for C(fab).
  - Pipelining (C(ANSIBLE_PIPELINING=true)) saves SSH commands per task; the module needs no temporary
    files of its own.
requirements:
  - Linux on the target (the agent reads C(/proc)), Python 3.8 or newer there, the oldest ansible-core 2.19's own
    module code runs on; the agent and settings the module ships need only 3.6, as for C(fab).
author:
  - fabserve authors
'''

EXAMPLES = r'''
- name: Preview server for a branch
  fabserve.django.runserver:
    project: /srv/previews/{{ branch }}
    port: 8000
    state: started
    env: {DJANGO_DEBUG: "1"}
    timeout: 60
  register: preview

- name: Where it answers
  ansible.builtin.debug:
    var: preview.url

- name: The inventory's fabserve variables as options
  fabserve.django.runserver:
    project: "{{ fabserve_project }}"
    port: "{{ fabserve_port }}"
    state: status
  register: server

- name: Stop it
  fabserve.django.runserver:
    project: /srv/previews/{{ branch }}
    port: 8000
    state: stopped

- name: The server and a Celery worker, whatever the project's Procfile says
  fabserve.django.runserver:
    project: /srv/mysite
    port: 8000
    processes:
      worker: .venv/bin/celery -A mysite worker --loglevel INFO
    env_file: .env
    state: started

- name: Restart only the worker
  fabserve.django.runserver:
    project: /srv/mysite
    port: 8000
    only: worker
    state: restarted
'''

RETURN = r'''
action:
  description: The verb that ran.
  returned: always
  type: str
ok:
  description: Whether the verb did what it was asked.
  returned: always
  type: bool
changed:
  description: Whether it started or stopped a server, or gave a running one a TTL (or extended it).
  returned: always
  type: bool
state:
  description: 'Running, stopped or failed (degraded: a process of a Procfile exited while another runs);
    null for sync and setup, which start and stop nothing.'
  returned: always
  type: str
pid:
  description: The process group (or, found by the /proc search, the first process).
  returned: always
  type: int
pids:
  description: Every process of the server.
  returned: always
  type: list
  elements: int
url:
  description: Where the server answers.
  returned: always
  type: str
pidfile:
  description: The pidfile on the target.
  returned: always
  type: str
log:
  description: The server's log on the target.
  returned: always
  type: str
message:
  description: What happened, in one line.
  returned: always
  type: str
error:
  description: Why it failed; null unless it failed.
  returned: always
  type: str
project:
  description: The project directory, resolved.
  returned: always
  type: str
port:
  description: The instance's port.
  returned: always
  type: int
state_dir:
  description: The instance's state directory.
  returned: always
  type: str
managed:
  description: True when found through its pidfile, false when found by the /proc search.
  returned: always
  type: bool
expires_at:
  description: When the server's TTL or idle TTL stops it, whichever comes first, ISO 8601 UTC; null without
    either.
  returned: always
  type: str
expires_in:
  description: Whole seconds until then; null without either.
  returned: always
  type: int
idle_expires_at:
  description: When the idle TTL stops it unless a request comes first (its last request plus --idle-ttl),
    ISO 8601 UTC; null without an idle TTL.
  returned: always
  type: str
public_url:
  description: Where a reviewer opens the server through the host's Caddy (--expose); null otherwise.
  returned: always
  type: str
uptime:
  description: Seconds since the server started. Null unless state=status.
  returned: always
  type: int
python:
  description: The interpreter that runs manage.py. Null unless state=started or restarted.
  returned: always
  type: str
log_tail:
  description: 'The log''s last lines, when the start failed (a failed check: Django''s unapplied-migrations
    line and "..." first, if the log has it). Null unless state=started or restarted.'
  returned: always
  type: list
  elements: str
killed:
  description: True when TERM was not enough and KILL was sent. Null unless state=stopped.
  returned: always
  type: bool
port_free:
  description: Whether the port is free afterwards. Null unless state=stopped.
  returned: always
  type: bool
stopped_pids:
  description: The processes the restart stopped. Null unless state=restarted.
  returned: always
  type: list
  elements: int
ambiguous:
  description: The ports of the project's running instances, when no port was given and several run (exit
    2).
  returned: always
  type: list
  elements: int
http_status:
  description: 'What GET of the check path answered; null: no check, or no answer. Null unless state=started
    or restarted or status.'
  returned: always
  type: int
check:
  description: 'The check path given, else the one the instance was last started with; null: none. Null
    unless state=status.'
  returned: always
  type: str
processes:
  description: 'With a Procfile or the processes setting: each process as name, command (null: fabserve''s
    runserver), port (its $PORT), state (running, exited, stopped; web also failed), pid, pids, uptime,
    exit_status (-N: signal N; null: unknown), log, log_tail (an exited one''s last lines).'
  returned: always
  type: list
  elements: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fabserve.django.plugins.module_utils import settings
from ansible_collections.fabserve.django.plugins.module_utils.agent import (
    dispatch, launch, procfile, protocol, records, state, verbs)
from ansible_collections.fabserve.django.plugins.module_utils.spec import ARGUMENT_SPEC, OPTIONS, RESULTS, STATES

# What a check-mode run says would happen, by verb.
WOULD = {"start": "would be started", "stop": "would be stopped", "restart": "would be restarted"}
# Result fields that are the client's (fab's), not the agent's.
CLIENT_FIELDS = ("host", "changed")
# What diff mode shows of a server, before and after (and, with a Procfile, each process's state).
DIFFED = ("state", "port", "pids")
# The states of a process of the instance that runs (failed: web alive but not answering, or its check failing).
ALIVE = (protocol.RUNNING, protocol.FAILED)


def request(module, action):
    """The agent's request for `action`, every value through the setting's own
    parser, as fab checks its flags; fail_json with its one-line message."""
    values = settings.Values(settings.DEFAULTS)
    for name in ARGUMENT_SPEC:
        if module.params[name] is not None:
            values.give(name, module.params[name], (name, ""))
    try:
        return settings.request(action, values, None)
    except settings.UsageError as exc:
        module.fail_json(msg=str(exc))


def states_of(result):
    """Each process's state, by name, as a result's `processes` gives them; None
    for an instance without a Procfile (or never started with one)."""
    if result.get("processes") is None:
        return None
    return dict((row["name"], row["state"]) for row in result["processes"])


def alive_names(probe):
    """The processes of the instance a status describes that run (web: answering
    or not), by name; without a recorded Procfile, web when its server runs."""
    states = states_of(probe)
    if states is None:
        return {protocol.WEB} if probe["pids"] else set()
    return set(name for name, each in states.items() if each in ALIVE)


def moving(action, probe, plan):
    """The processes of `plan` (see would_change) that a start would start (those
    that do not run) or a stop would stop (those that run), in table order."""
    alive = alive_names(probe)
    return [name for name in (plan[1] if plan else [protocol.WEB]) if (name in alive) == (action == "stop")]


def would_change(action, probe, req, plan):
    """Whether `action` would start, stop or change something, given a status
    result and the processes the verb acts on (startable's or stoppable's `plan`,
    None: no Procfile): a server at its expiry is ended (and started again) by
    the real run, a running one gets the ttl (or idle ttl) of a start, a start starts each
    chosen process that does not run and a stop stops each one that does."""
    expiring = probe.get("expires_in") == 0
    if action == "start":
        return expiring or bool(req.get("ttl")) or bool(req.get("idle_ttl")) or bool(moving(action, probe, plan))
    if action == "stop":
        return expiring or bool(moving(action, probe, plan))
    return action == "restart"


def instance(req):
    """The agent's Instance that `req` names, to read (not lock) in check mode."""
    request = state.Request(req)
    return state.Instance(state.Host(request), request)


def startable(module, action, req):
    """fail_json, as the start itself would, when the project, its Procfile, `only`,
    the env file or the server's interpreter is wrong: check mode's read-only part
    of a start. Returns (the names of its table's processes, of those it acts on),
    or None without a Procfile or the processes setting."""
    inst = instance(req)
    try:
        inst.require_project()
        if action == "restart":
            records.rerun(inst)  # what the last start was given and this request lacks (processes too)
        table = procfile.process_table(inst)
        if table is None:
            verbs.alone(inst)
        chosen = procfile.selected(table, inst.req.only) if table else None
        if action == "restart" or chosen is None or any(
                each.name == protocol.WEB and each.command is None for each in chosen):
            launch.resolve_python(inst)
        procfile.env_file_pairs(inst)
    except protocol.AgentError as exc:
        module.fail_json(msg=f"{action} failed: {exc}")
    return None if table is None else ([each.name for each in table], [each.name for each in chosen])


def stoppable(module, req, probe):
    """As startable, for a stop: the processes a status found recorded (None:
    none), failing as the stop itself would when `only` names one the instance lacks."""
    try:
        if probe.get("processes") is None:
            verbs.alone(instance(req))
            return None
        table = [procfile.Process(row["name"], row["command"], row["port"]) for row in probe["processes"]]
        chosen = procfile.selected(table, req["only"])
    except protocol.AgentError as exc:
        module.fail_json(msg=f"stop failed: {exc}")
    return [each.name for each in table], [each.name for each in chosen]


def predicted(action, req, probe, plan):
    """Check mode's result for `action`, from a status of the instance `req` names
    (the same port as the verb's own: start's default too) and the processes it
    acts on (`plan`, see would_change). With port=auto and
    nothing of the project running, the real run chooses a free port only then,
    under the host's lock and past ports others listen on since: that port is
    not known now, so none is claimed, nor any file of the status's instance."""
    result = dict(probe, changed=would_change(action, probe, req, plan))
    if not result["changed"]:
        return result
    result["message"] = WOULD[action]
    named = moving(action, probe, plan) if plan and action != "restart" else []
    if named:  # with a Procfile, which of its processes
        result["message"] += f": {', '.join(named)}"
    if req["port"] == protocol.AUTO and action in protocol.STARTS and probe["state"] == protocol.STOPPED:
        result.update(port=None, url=None, pidfile=None, log=None, state_dir=None)
        result["message"] += f" on a free port from {req['port_range']} (port_range), chosen at start"
    return result


def shown(result):
    """The server as diff mode shows it (a stop's result lists what it stopped: none
    is left). With a Procfile, `pids` are web's (its row's: a stop of other
    processes lists theirs) and `processes` each process's state."""
    server = dict((name, result.get(name)) for name in DIFFED)
    states = states_of(result)
    if states is not None:
        web = next(row for row in result["processes"] if row["name"] == protocol.WEB)
        server["pids"] = web["pids"] if web["state"] in ALIVE else []
        server["processes"] = states
    if server["state"] == protocol.STOPPED:
        server["pids"] = []
    return server


def instance_state(states):
    """The instance's state from its processes' (as the agent's status gives it):
    failed when web is, degraded while one exited, or web is stopped, and another
    runs, stopped when none runs, else running."""
    alive = any(each in ALIVE for each in states.values())
    if states.get(protocol.WEB) == protocol.FAILED:
        return protocol.FAILED
    if alive and (protocol.EXITED in states.values() or states.get(protocol.WEB) == protocol.STOPPED):
        return protocol.DEGRADED
    return protocol.RUNNING if alive else protocol.STOPPED


def would_be(action, result, plan):
    """The server as check mode predicts it, from predicted's `result` and the
    processes the verb acts on (`plan`, see would_change): a stop leaves them
    stopped; a start runs those that do not run, a restart all of them anew.
    The processes of a server not started yet are not known (null)."""
    server = shown(result)
    if not result["changed"]:
        return server
    after = protocol.STOPPED if action == "stop" else protocol.RUNNING
    if plan is None:
        return dict(server, state=after, pids=[] if action == "stop" else None)
    before = server.get("processes") or {}
    states = dict((name, protocol.STOPPED) for name in plan[0])
    states.update(before)
    # A stop forgets every chosen process (an exited one is then stopped too); a
    # start leaves those that run as they are (web failing its check stays failed).
    moved = [name for name in plan[1]
             if action != "start" or (before.get(name) in ALIVE) != (after in ALIVE)]
    states.update((name, after) for name in moved)
    server.update(state=instance_state(states), processes=states)
    if protocol.WEB in moved:
        server["pids"] = [] if action == "stop" else None
    if server["state"] == protocol.STOPPED:
        server["pids"] = []
    return server


def finish(module, action, result, diff=None, fail_stopped=False):
    """exit_json, or fail_json with the one-line reason (and the log's tail when a
    start failed); every result field present, null where the verb gives none."""
    fields = dict((name, result.get(name)) for name in RESULTS if name not in CLIENT_FIELDS)
    if diff is not None:
        fields["diff"] = diff
    changed = bool(result["changed"])
    if result.get("error") is not None or (not result["ok"] and action != "status"):
        module.fail_json(msg=f"{action} failed: {result.get('error') or result['message']}", changed=changed,
                         **fields)
    if fail_stopped and result["state"] != protocol.RUNNING:
        module.fail_json(msg=f"status failed: {result['message']}", changed=changed, **fields)
    module.exit_json(changed=changed, msg=result["message"], **fields)


def main():
    module = AnsibleModule(argument_spec=dict(ARGUMENT_SPEC, **OPTIONS), supports_check_mode=True)
    action = STATES[module.params["state"]]
    fail_stopped = module.params["fail_if_not_running"]
    if fail_stopped and action != "status":
        module.fail_json(msg=f"fail_if_not_running is for state=status only, not state={module.params['state']}")
    req = request(module, action)
    # The verb's own request as a status: the same port (start's default too). It
    # only looks: a status would end a server past its TTL, which check mode must not.
    probe = dict(req, action="status", look_only=True)
    if module.check_mode and action != "status":
        plan = startable(module, action, req) if action in protocol.STARTS else None
        before = dispatch.handle(probe)
        if before.get("error") is not None:  # several instances, a state directory refused...
            finish(module, "status", before)
        if action == "stop":
            plan = stoppable(module, req, before)
        result = predicted(action, req, before, plan)
        diff = {"before": shown(before), "after": would_be(action, result, plan)} if module._diff else None
        finish(module, "status", result, diff)
    before = dispatch.handle(probe) if module._diff and action != "status" else None
    result = dispatch.handle(req)
    diff = None
    if module._diff:
        known = before is not None and before.get("error") is None
        diff = {"before": shown(before if known else result), "after": shown(result)}
    finish(module, action, result, diff, fail_stopped)


if __name__ == "__main__":
    main()
