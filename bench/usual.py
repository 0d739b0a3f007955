"""The jobs fabserve does, done the usual way with the shell lines of
bench/diy/fabfile.py (`nohup … &` plus a wait for the port, `ps | grep`, `kill`
plus a wait for the port to be free): through a plain Fabric task, and through
`ansible -m shell` and `ansible -m raw`."""

from __future__ import annotations

from bench.layout import DIY_FABFILE
from bench.runner import Runner

LABELS = {"start": "nohup & (to ready)", "status": "ps | grep", "stop": "kill (to port free)"}


def plain_fabric(runner: Runner) -> None:
    host = runner.host
    one = [host]
    for verb, check in (("start", runner.up(one)), ("status", None), ("stop", runner.down(one))):
        runner.measure("fabric_" + verb, f"plain Fabric {LABELS[verb]}", "plain Fabric",
                       runner.diy_fab(host, verb), one, cwd=DIY_FABFILE.parent, check=check)


def ansible_adhoc(runner: Runner) -> None:
    host = runner.host
    one = [host]
    commands = {"start": runner.diy.START, "status": runner.diy.STATUS, "stop": runner.diy.STOP}
    for module in ("shell", "raw"):
        for verb, check in (("start", runner.up(one)), ("status", None), ("stop", runner.down(one))):
            runner.measure(f"ansible_{module}_{verb}", f"ansible -m {module} {LABELS[verb]}",
                           "ansible -m " + module, runner.ansible(host, module, commands[verb]), one,
                           env=runner.bed.ansible_env, cwd=runner.bed.work, check=check)
    # A repetition outlasts ControlPersist's 60 s anyway; closing the master now keeps
    # its connection out of the fan-out's host CPU figures.
    runner.bed.end_ansible_masters()
