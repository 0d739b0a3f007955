"""The CI flow end to end on one host: migrate, start with an HTTP check, one HTTP
request through a tunnel, stop. Through fabserve (`manage`, `start --check`,
`tunnel --run`, `stop`), by hand with plain Fabric (`bench/diy/fabfile.py`'s
`ci_flow`: `nohup … &`, `forward_local` with the customary fixed sleep, `kill`),
and with Ansible (`-m shell` with the same lines, OpenSSH's `ssh -L` for the tunnel).
Each flow is one timed sample; each must print the fetched page's status.

bench/run includes these cases; `.venv/bin/python -m bench.ciflow [--reps N]`
(as root) runs only them, on one host, and prints their medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bench.hosts import Bed, Host
from bench.layout import DIY_FABFILE, FAB, PORT, PROJECT, REPO, SYSTEM_PYTHON
from bench.samples import Sample, fmt_count

if TYPE_CHECKING:
    from bench.cases import Runner

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


def ci_flow(runner: Runner, host: Host) -> None:
    """Time the three flows, each from a stopped server to a stopped server."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """Only the CI flow cases, on one host: medians, SSH commands, ratios pair by pair."""
    from bench.cases import Runner  # bench.cases imports this module's ci_flow lazily
    from bench.main import wait_idle
    from bench.ratios import ratios
    from bench.results import loadavg
    parser = argparse.ArgumentParser(prog="python -m bench.ciflow", description=main.__doc__)
    parser.add_argument("--reps", type=int, default=3, help="measured repetitions (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="first wait up to S seconds for the load average to fall (as bench/run does)")
    args = parser.parse_args(argv)
    args.skip = set()
    if os.geteuid() != 0:
        print("bench.ciflow: run as root", file=sys.stderr)
        return 2
    wait_idle(args.wait_idle)
    print(f"load average at the start: {loadavg()}")
    bed = Bed(1, with_ansible=True)
    try:
        bed.open()
        runner = Runner(bed, args)
        for index in range(args.warmup + args.reps):
            runner.rep = index - args.warmup + 1 if index >= args.warmup else 0
            ci_flow(runner, bed.hosts[0])
    finally:
        bed.close()
    for name, case in runner.cases.items():
        good = [sample for sample in case.samples if sample.rc == 0]
        times = [sample.seconds for sample in good]
        median = f"{statistics.median(times):.2f} s" if times else "-"
        print(f"{case.label:70} {median:>8}  SSH commands {fmt_count([sample.sessions for sample in good])}"
              + (f"  FAILED {len(case.failures)}" if case.failures else ""))
    for ratio in ratios(runner.cases, [], os.cpu_count() or 1):
        if ratio.name.startswith("ciflow") and ratio.values:
            print(f"{ratio.label:70} {ratio.median:.2f}x ({min(ratio.values):.2f}-{max(ratio.values):.2f})"
                  f"  {ratio.verdict()}")
    return 1 if any(case.failures for case in runner.cases.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
