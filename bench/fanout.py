"""The fan-out: fabserve status and stop on 1, 5, 10, 20 hosts (up to --hosts)
through fabserve's concurrent executor, against Fabric's serial `-H` running the
trivial task on as many."""

from __future__ import annotations

from bench.layout import fanout_sizes
from bench.runner import Runner, execute


def fanout(runner: Runner) -> None:
    for size in fanout_sizes(runner.args.hosts):
        hosts = runner.bed.hosts[:size]
        runner.measure(f"fanout_trivial_{size}", f"trivial fab task, {size} hosts (serial)", "fan-out",
                       runner.trivial(hosts), hosts)
        # Untimed: every host runs a fabserve-started server before status and stop.
        started = execute(runner.fab(hosts, "start"))
        problem = runner.up(hosts)(started)
        if started.rc != 0 or problem:
            tail = "\n".join(started.output.splitlines()[-6:])
            runner.fail(runner.case(f"fanout_status_{size}", f"fabserve status, {size} hosts", "fan-out", size),
                        f"fan-out start on {size} hosts", f"exit {started.rc}, {problem}\n{tail}")
        runner.measure(f"fanout_status_{size}", f"fabserve status, {size} hosts", "fan-out",
                       runner.fab(hosts, "status"), hosts)
        runner.measure(f"fanout_stop_{size}", f"fabserve stop, {size} hosts", "fan-out",
                       runner.fab(hosts, "stop"), hosts, check=runner.down(hosts))
