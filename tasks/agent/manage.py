"""The handler of manage: a manage.py command beside the project's server,
run in the server's environment, its output relayed to the client as it
comes, and ended with everything it started when its timeout passes or the
client goes away.
"""

import os
import sys
import time

from .protocol import AgentError, RUNNING, STOPPED, join, result_of
from .signals import Found, end_token_carriers, terminate
from .identity import runservers
from .state import Instance
from .caller import Caller
from .logfiles import BLOCK, TAIL_LINES, tail_text
from .locate import located, project_instances
from .launch import manage_env, resolve_python
from .verbs import describe


def relay(proc, out, deadline, caller):
    """Copy the output to `out` (if any) until it ends: (its last bytes, why not:
    timeout, gone). `caller` (see Caller) says when the client went away, also
    while the command is silent."""
    import select
    fd, kept, last = proc.stdout.fileno(), b"", b"\n"
    while True:
        if deadline is not None and time.time() >= deadline:
            return kept, "timeout"
        if caller.gone():
            return kept, "gone"
        if not select.select([fd], [], [], 0.25)[0]:
            if proc.poll() is not None:  # what it left may hold the pipe
                break
            continue
        chunk = os.read(fd, BLOCK)
        if not chunk:
            break
        kept, last = (kept + chunk)[-BLOCK:], chunk[-1:]
        if out:
            try:
                out.write(chunk)
                out.flush()
            except OSError:
                return kept, "gone"
    if out and last != b"\n":
        out.write(b"\n")  # the result starts a line of its own
        out.flush()
    return kept, None


def run_ended(argv, cwd, env, deadline, out, grace):
    """Run `argv` in a process group of its own, stdin /dev/null, its output
    relayed to `out` (if any) until it ends, `deadline` passes or the caller goes
    away; then end its group (TERM, KILL after `grace` seconds) and every process
    it started that left the group. (its last bytes of output, why it did not end
    by itself: timeout, gone or None, its exit status, the PIDs that had left the group)."""
    import subprocess
    # A token of its own, as a server's processes carry theirs: what leaves the
    # group (setsid, start_new_session) still carries it and is found by it.
    env = dict(env, FABSERVE_TOKEN=os.urandom(16).hex())
    # Watched until the command's processes are ended: a signal meanwhile only says the caller left.
    with Caller(sys.stdout) as caller:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        with proc.stdout:
            kept, why = relay(proc, out, deadline, caller)
        terminate(Found(pgid=proc.pid), grace)
        code = proc.wait()
        escaped, _ = end_token_carriers(env["FABSERVE_TOKEN"], grace, except_group=proc.pid)
    return kept, why, code, escaped


def do_manage(inst):
    """manage.py ARGS as start runs the server, stdin /dev/null, in a group ended
    with it, and then every process it started that left the group."""
    inst.require_project()
    python, args, limit = resolve_python(inst), inst.req.args, inst.req.manage_timeout
    argv = [python, inst.manage_py, args[0]]
    if inst.req.settings:  # here both Django's and the command's parser take it
        argv.append(f"--settings={inst.req.settings}")
    kept, why, code, escaped = run_ended(argv + args[1:], inst.project, manage_env(inst),
                                         limit and time.time() + limit, inst.req.stream and sys.stdout.buffer,
                                         min(inst.req.stop_timeout, 5))
    if why == "gone":
        return None
    left = f"pids {' '.join(map(str, escaped))} had left its process group and were ended" if escaped else ""
    extra = {"exit_status": None if why else code, "output_tail": tail_text(kept, TAIL_LINES)}
    if why or code:
        ended = f"did not end within {limit:g}s; it was ended" if why else f"exited with status {code}"
        raise AgentError(join(f"manage.py {args[0]} {ended}", left), **extra)
    fields = dict(ok=True, changed=False, message=join(f"manage.py {args[0]} exited 0", left), **extra)
    against = ran_against(inst)
    if against is None:
        return result_of(state=None, project=inst.project, port=None, state_dir=None, managed=None, **fields)
    found, _ = located(against)
    return describe(against, found, state=RUNNING if found and found.members() else STOPPED, **fields)


def ran_against(inst):
    """The instance a manage command ran beside: the one its port names, else
    the project's one running instance; None when none or several run."""
    if isinstance(inst.req.port, int):
        return inst
    live, _ = project_instances(inst.host, inst.req, runservers())
    return Instance(inst.host, inst.req.but(port=live[0])) if len(live) == 1 else None
