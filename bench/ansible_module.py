"""fabserve's Ansible module (fabserve.django.runserver, pipelining off and on)
against `fab` for start, status and stop on 1, 10 and 20 hosts, with the SSH
commands each sends per host per operation (counted from sshd's log), and the
module's time over fab's for each (ratio_lines, printed with bench/run's report).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.hosts import Host
from bench.layout import PORT, PROJECT, REPO
from bench.runner import Runner

SIZES = (1, 10, 20)
# fab's default concurrency, so both clients work on as many hosts at once.
FORKS = 10
# (client, label, pipelining)
MODULE_CLIENTS = (("module", "ansible module", "0"), ("module_pipelined", "ansible module, pipelining", "1"))
VERBS = (("start", "started"), ("status", "status"), ("stop", "stopped"))


def sizes_for(hosts: int) -> list[int]:
    return [size for size in SIZES if size <= hosts]


def module_argv(runner: Runner, hosts: Sequence[Host], state: str) -> list[str]:
    return [str(runner.bed.ansible_bin), ",".join(host.alias for host in hosts), "--forks", str(FORKS),
            "-m", "fabserve.django.runserver", "-a", f"project={PROJECT} port={PORT} state={state}"]


def module_env(runner: Runner, pipelining: str) -> dict[str, str]:
    return {**runner.bed.ansible_env, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible"),
            "ANSIBLE_PIPELINING": pipelining}


def module_cases(runner: Runner) -> None:
    """One repetition: on each size, fab then the module without and with pipelining,
    each doing start (to ready), status and stop (to port free)."""
    for size in sizes_for(len(runner.bed.hosts)):
        hosts = runner.bed.hosts[:size]
        checks = {"start": runner.up(hosts), "status": None, "stop": runner.down(hosts)}
        for verb, _ in VERBS:
            runner.measure(f"vs_module_fab_{verb}_{size}", f"fab {verb}, {size} hosts", "fab vs the module",
                           runner.fab(hosts, verb), hosts, check=checks[verb])
        for client, label, pipelining in MODULE_CLIENTS:
            for verb, state in VERBS:
                runner.measure(f"vs_module_{client}_{verb}_{size}", f"{label} state={state}, {size} hosts",
                               "fab vs the module", module_argv(runner, hosts, state), hosts,
                               env=module_env(runner, pipelining), cwd=runner.bed.work, check=checks[verb])
        runner.bed.end_ansible_masters()


def ratio_lines(runner: Runner) -> list[str]:
    """Per size and verb: the module's time over fab's, pair by pair within a rep."""
    lines = ["", "module / fab (median of the pairwise ratios within a rep)"]
    for size in sizes_for(len(runner.bed.hosts)):
        for verb, _ in VERBS:
            fab = runner.cases[f"vs_module_fab_{verb}_{size}"].by_rep()
            for client, label, _ in MODULE_CLIENTS:
                ours = runner.cases[f"vs_module_{client}_{verb}_{size}"].by_rep()
                values = [ours[rep].seconds / fab[rep].seconds for rep in ours if rep in fab]
                shown = f"{statistics.median(values):.2f}x" if values else "-"
                lines.append(f"  {verb:<6} {size:>2} hosts  {label:<28} {shown}")
    return lines

