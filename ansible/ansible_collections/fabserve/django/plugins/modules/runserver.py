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
  - Changed exactly when a server was started or stopped; C(state=status) never changes anything.
options:
  state:
    description:
      - C(started) starts the server unless it already runs, C(stopped) stops it if it runs,
        C(restarted) stops it if it runs and starts it again, C(status) only reports.
    type: str
    choices: [started, stopped, restarted, status]
    default: started
extends_documentation_fragment:
  - fabserve.django.settings
notes:
  - Supports check mode; it reports what C(started), C(stopped) or C(restarted) would change from a
    read-only status of the server.
  - State (pidfile, metadata, log) lives in C(state_dir), by default C(~/.local/state/fabserve) on the
    target, the same as for C(fab).
  - Pipelining (C(ANSIBLE_PIPELINING=true)) saves SSH commands per task; the module needs no temporary
    files of its own.
requirements:
  - Linux on the target (the agent reads C(/proc)), Python 3.8 or newer there.
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
    project: "{{ project }}"
    port: "{{ port }}"
    state: status
  register: server

- name: Stop it
  fabserve.django.runserver:
    project: /srv/previews/{{ branch }}
    port: 8000
    state: stopped
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
  description: Whether it started or stopped a server, or gave a running one a TTL.
  returned: always
  type: bool
state:
  description: Running, stopped or failed.
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
  description: When the server's TTL stops it, ISO 8601 UTC; null without a TTL.
  returned: always
  type: str
expires_in:
  description: Whole seconds until then; null without a TTL.
  returned: always
  type: int
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
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fabserve.django.plugins.module_utils import agent, options
from ansible_collections.fabserve.django.plugins.module_utils.spec import ARGUMENT_SPEC, STATES

# What a check-mode run says would happen, by verb.
WOULD = {"start": "would be started", "stop": "would be stopped", "restart": "would be restarted"}
# Result fields that are the client's (fab's), not the agent's.
CLIENT_FIELDS = ("host", "changed")


def request(module, action):
    """The agent's request for `action`, every value through the setting's own
    parser, as fab checks its flags; fail_json with its one-line message."""
    values = options.Values(options.DEFAULTS)
    for name in ARGUMENT_SPEC:
        if module.params[name] is not None:
            values.give(name, module.params[name], (name, ""))
    try:
        return options.request(action, values, None, local=False)
    except options.UsageError as exc:
        module.fail_json(msg=str(exc))


def would_change(action, probe, req):
    """Whether `action` would start, stop or change something, given a status
    result: a server at its expiry is ended (and started again) by the real run,
    and a running one gets the ttl of a start."""
    if action == "start":
        return not probe["pids"] or probe.get("expires_in") == 0 or bool(req.get("ttl"))
    if action == "stop":
        return bool(probe["pids"])
    return action == "restart"


def startable(module, action, req):
    """fail_json, as the start itself would, when the project or its interpreter is
    missing: check mode's read-only part of a start."""
    inst = agent.Instance(req)
    try:
        inst.require_project()
        agent.resolve_python(inst)
    except agent.AgentError as exc:
        module.fail_json(msg=f"{action} failed: {exc}")


def finish(module, action, result):
    """exit_json, or fail_json with the one-line reason (and the log's tail when a start failed)."""
    fields = dict((name, value) for name, value in result.items() if name not in CLIENT_FIELDS)
    if result.get("error") is not None or (not result["ok"] and action != "status"):
        module.fail_json(msg=f"{action} failed: {result.get('error') or result['message']}", **fields)
    module.exit_json(changed=bool(result["changed"]), msg=result["message"], **fields)


def main():
    spec = dict(ARGUMENT_SPEC, state=dict(type="str", default="started", choices=list(STATES)))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    action = STATES[module.params["state"]]
    req = request(module, action)
    if module.check_mode and action != "status":
        if action in ("start", "restart"):
            startable(module, action, req)
        probe = agent.handle(dict(request(module, "status"), look_only=True))
        if probe.get("error") is not None:
            finish(module, "status", probe)
        probe["changed"] = would_change(action, probe, req)
        if probe["changed"]:
            probe["message"] = WOULD[action]
        finish(module, "status", probe)
    finish(module, action, agent.handle(req))


if __name__ == "__main__":
    main()
