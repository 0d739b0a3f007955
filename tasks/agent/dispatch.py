"""The agent's entry: read the request, bound the call's time, name the
instance, run the verb's handler (under the instance's lock where it starts or
stops a server), and print the one result line.
"""

import json
import os
import signal
import sys

from .protocol import AgentError, CHECKED, FAILED, HOST_VERBS, MARKER, PROJECT_VERBS, exit_code, join, result_of, run_limit
from .identity import given_path
from .state import Host, Instance, Request
from .projects import Project
from .locate import PORT_TRIES, resolve_instance
from .launch import PortTaken
from .verbs import describe

# The verbs: name -> (the module of its handler, the handler, whether it runs
# holding the instance's lock, so that start, stop and restart never overlap).
# A handler is called with the Instance the request names; for HOST_VERBS, with
# the Host and the request; for PROJECT_VERBS, with the Project, under its lock.
# Its module is imported only for its verb.
HANDLERS = {
    "status": ("verbs", "do_status", False),
    "start": ("verbs", "do_start", True),
    "stop": ("verbs", "do_stop", True),
    "restart": ("verbs", "do_restart", True),
    "extend": ("extend", "do_extend", True),
    "logs": ("logview", "do_logs", False),
    "list": ("hostlist", "do_list", False),
    "prune": ("pruning", "do_prune", False),  # each instance it stops under that instance's lock
    "manage": ("manage", "do_manage", False),
    "sync": ("shipping", "do_sync", False),
    "destroy": ("teardown", "do_destroy", False),
    "setup": ("environment", "do_setup", False),
}


def handler(action):
    """(the handler of `action`, whether it locks), its module imported now."""
    module, function, locks = HANDLERS[action]
    return getattr(__import__(f"{__package__}.{module}", fromlist=[function]), function), locks


def handle(data):
    """The result of the request `data`, a dict as the client sent it (None when
    a follower's reader went away)."""
    req = Request(data)
    action = req.action
    run, locks = handler(action)
    inst = None
    try:
        host = Host(req)
        if action in HOST_VERBS:
            result = run(host, req)
        elif action in PROJECT_VERBS:
            project = Project(host, req)
            fd = project.lock()
            try:
                result = run(project)
            finally:
                os.close(fd)
        else:
            tried = []
            while True:
                # The port named, found or chosen; `held`: the host's lock, while a chosen one is claimed.
                named, held = resolve_instance(host, req, tried)
                inst = Instance(host, named)
                try:
                    fd = inst.lock() if locks else None
                    inst.locked = fd is not None
                finally:
                    if held is not None:
                        os.close(held)
                try:
                    result = run(inst)
                    break
                except PortTaken as exc:
                    if held is None:
                        raise
                    tried.append(inst.port)
                    if len(tried) == PORT_TRIES:
                        raise PortTaken(join(str(exc), "ports tried: " + ", ".join(map(str, tried))), **exc.extra)
                finally:
                    if fd is not None:
                        os.close(fd)
        if result is None:
            return None
    except AgentError as exc:
        result = failure(inst, req, str(exc), exc.state, exc.extra)
    except OSError as exc:  # e.g. a state directory that turned read-only or full mid-way
        error = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        result = failure(inst, req, error, FAILED, {})
    if action in CHECKED:
        result.setdefault("http_status", None)
    result["action"] = action
    return result


def failure(inst, req, error, state, extra):
    """The result of a verb that failed: for its instance, or, before one was
    named (several instances of the project, a state directory refused), for the project.
    `extra` may say it changed something before it failed (a restart that stopped the old server)."""
    fields = dict(ok=False, changed=False, state=state, error=error, message=error)
    fields.update(extra)
    if inst is not None and isinstance(inst.req.port, int):
        return describe(inst, None, **fields)
    project = os.path.realpath(given_path(req.project)) if req.project else None
    return result_of(project=project, port=None, state_dir=None, managed=None, **fields)


# Seconds an agent call may run past its request's own deadlines (run_limit)
# before it gives itself up: nothing it does takes that long unless something
# blocks it, and it must not outlive the client, which gives up later still
# (remote.SLACK seconds past them) and would otherwise leave it running.
GIVE_UP = 20


class GaveUp(BaseException):
    """Raised by SIGALRM once a call ran past its bound (see main). Not an
    AgentError: no handler of expected failures may take it for one and go on."""


def give_up(signum, frame):
    """SIGALRM's handler: the call ran past its bound."""
    raise GaveUp()


def read_request(stream):
    """The request: one line of JSON on stdin, where the client writes it. Never
    in argv, which every local user can read (/proc/PID/cmdline, ps) for as long
    as the process runs: its env may hold secrets."""
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise SystemExit("fabserve agent: no request on stdin")
    return json.loads(line.decode("utf-8"))


def main():
    """Run the request on stdin; the exit status is the result's exit code."""
    data = read_request(sys.stdin.buffer)
    limit = run_limit(data)  # on the request as the client sent it, as the client bounds its wait
    req = Request(data)
    if limit is not None:
        bound = int(limit + GIVE_UP) + 1
        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(bound)
    try:
        result = handle(data)
    except GaveUp:
        result = failure(None, req, f"gave up after {bound}s: something on the host blocked this call", FAILED, {})
        if req.action in CHECKED:
            result["http_status"] = None
        result["action"] = req.action
    finally:
        signal.alarm(0)
    if result is None:
        return 0
    if req.follow or req.stream:
        # The lines before it each ended with a newline: the result is the last line.
        sys.stdout.write(f"{MARKER}{json.dumps(result)}\n")
        sys.stdout.flush()
        return exit_code(req.action, result)
    sys.stdout.write(f"\n{MARKER}{json.dumps(result)}\n")
    sys.stdout.flush()
    return exit_code(req.action, result)
