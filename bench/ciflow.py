"""The CI flow end to end on one host: migrate, start with an HTTP check, one HTTP
request through a tunnel, stop. Through fabserve (`manage`, `start --check`,
`tunnel --run`, `stop`), by hand with plain Fabric (`bench/diy/fabfile.py`'s
`ci_flow`: `nohup … &`, `forward_local` with the customary fixed sleep, `kill`),
and with Ansible (`-m shell` with the same lines, OpenSSH's `ssh -L` for the tunnel).
Each flow is one timed sample; each must print the fetched page's status.
--skip diy or ansible leaves out that client's flow.
"""

from __future__ import annotations

import shlex

from bench.hosts import Host
from bench.layout import DIY_FABFILE, FAB, PORT, PROJECT, REPO, SYSTEM_PYTHON
from bench.runner import Runner
from bench.samples import Sample

# Local ports of the hand-written tunnels (fabserve's is chosen by the OS).
ANSIBLE_TUNNEL_PORT = 16981
# GET the URL in argv[1], no proxy from the environment; prints "fetched <status>".
FETCH = ("import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=30); "
         "r.read(); print('fetched', r.status)")


def fetched(sample: Sample) -> str | None:
    return None if "fetched 200" in sample.output else "no page fetched through the tunnel"


def script(*steps: str, always: str) -> list[str]:
    """`sh -c`: the steps while they succeed, then `always` whatever happened; the
    exit status is the failed step's, else 1 if `always` failed, else 0."""
    body = " && ".join(steps)
    return ["sh", "-c", f"{body}; rc=$?; {always} || {{ [ $rc -ne 0 ] || rc=1; }}; exit $rc"]


def fabserve_flow(runner: Runner, host: Host, steps: bool) -> list[str]:
    """One fab for manage, start and tunnel (tasks chained in one call: a failure
    ends the chain), then stop; or, with `steps`, one fab per task, as CI steps."""
    fab = [str(FAB), "-r", str(REPO), "-S", str(runner.bed.ssh_config), "-H", host.alias]
    instance = ["--project", PROJECT, "--port", str(PORT)]
    fetch = f"{shlex.quote(str(SYSTEM_PYTHON))} -c {shlex.quote(FETCH)} \"$FABSERVE_URL\""
    tasks = [["manage", "migrate --noinput", "--project", PROJECT], ["start", *instance, "--check", "/"],
             ["tunnel", *instance, "--run", fetch]]
    calls = [[*fab, *task] for task in tasks] if steps else [[*fab, *(word for task in tasks for word in task)]]
    return script(*(shlex.join(call) for call in calls), always=shlex.join([*fab, "stop", *instance]))


def ansible_flow(runner: Runner, host: Host) -> list[str]:
    ansible = [str(runner.bed.ansible_bin), host.alias, "-o", "-m", "shell", "-a"]
    ssh = ["ssh", "-F", str(runner.bed.ssh_config), "-S", str(runner.bed.work / "ci-tunnel.sock")]
    url = f"http://127.0.0.1:{ANSIBLE_TUNNEL_PORT}/"
    return script(shlex.join([*ansible, runner.diy.MIGRATE]),
                  shlex.join([*ansible, runner.diy.START]),
                  # -f returns once the forward is up (ExitOnForwardFailure): OpenSSH's own answer.
                  shlex.join([*ssh, "-f", "-N", "-M", "-o", "ExitOnForwardFailure=yes",
                              "-L", f"{ANSIBLE_TUNNEL_PORT}:127.0.0.1:{PORT}", host.alias]),
                  shlex.join([str(SYSTEM_PYTHON), "-c", FETCH, url]),
                  always=(f"{{ {shlex.join([*ssh, '-O', 'exit', host.alias])} 2>/dev/null; true; }} && "
                          + shlex.join([*ansible, runner.diy.STOP])))


def ci_flow(runner: Runner) -> None:
    """Time the three flows, each from a stopped server to a stopped server."""
    host = runner.host
    one = [host]
    runner.measure("ciflow_fabserve", "CI flow, fabserve: fab manage start --check tunnel --run; fab stop",
                   "CI flow", fabserve_flow(runner, host, steps=False), one, check=fetched)
    runner.measure("ciflow_fabserve_steps", "CI flow, fabserve: one fab per step (manage, start, tunnel, stop)",
                   "CI flow", fabserve_flow(runner, host, steps=True), one, check=fetched)
    if "diy" not in runner.args.skip:
        runner.measure("ciflow_fabric", "CI flow, plain Fabric (nohup &, forward_local + sleep, kill)",
                       "CI flow", runner.diy_fab(host, "ci-flow"), one, cwd=DIY_FABFILE.parent, check=fetched)
    if "ansible" not in runner.args.skip:
        runner.measure("ciflow_ansible", "CI flow, ansible -m shell + ssh -L", "CI flow",
                       ansible_flow(runner, host), one, env=runner.bed.ansible_env, cwd=runner.bed.work,
                       check=fetched)
        runner.bed.end_ansible_masters()

