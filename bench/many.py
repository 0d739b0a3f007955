"""Many servers on one host: `fab list` with 20 instances running (10 started by
fabserve, 10 started by hand) against `fab status` of one of them, and `start
--port auto` against `start --port N`, both starts among those 20."""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor

from bed import wait_for

from bench.hosts import Host
from bench.layout import FAB, PORT, PROJECT, REPO
from bench.runner import Check, Runner, execute
from bench.samples import Sample
from bench.shell import log

MANY = "~/site-many"  # a copy of the project, so ~/site itself keeps one instance for the starts
MANAGED_PORTS = range(8101, 8111)
BY_HAND_PORTS = range(8201, 8211)
INSTANCES = len(MANAGED_PORTS) + len(BY_HAND_PORTS)
# Run over SSH by the host's user: runservers fabserve did not start, detached from the session.
BY_HAND = ("cd {project} && for port in {ports}; do nohup .venv/bin/python manage.py runserver "
           "127.0.0.1:$port --noreload </dev/null >/dev/null 2>&1 & done")


def fab(runner: Runner, host: Host, *words: str) -> list[str]:
    return [str(FAB), "-r", str(REPO), "-S", str(runner.bed.ssh_config), "-H", host.alias, *words]


def rows_listed(sample: Sample) -> str | None:
    """list's table must show every instance running (its heading and count line aside)."""
    running = sum(1 for line in sample.output.splitlines() if " running " in line)
    return None if running >= INSTANCES else f"{running} running servers listed, not {INSTANCES}"


def concurrently(commands: list[list[str]]) -> list[Sample]:
    """Run untimed set-up or tear-down clients all at once (each instance has its own
    lock), so the ten starts cost about one start, not ten."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(execute, commands))


def set_up(runner: Runner, host: Host) -> bool:
    """Untimed: the copy of the project, 10 instances of it started by fabserve and 10 by hand."""
    copied = execute(runner.ssh(host, f"test -d {MANY} || cp -a {PROJECT} {MANY}"))
    started = concurrently([fab(runner, host, "start", "--project", MANY, "--port", str(port), "--noreload")
                            for port in MANAGED_PORTS])
    by_hand = execute(runner.ssh(host, BY_HAND.format(project=MANY, ports=" ".join(map(str, BY_HAND_PORTS)))))
    ports = list(MANAGED_PORTS) + list(BY_HAND_PORTS)
    up = wait_for(lambda: all(host.listening(port) for port in ports), timeout=60)
    if copied.rc or by_hand.rc or any(result.rc for result in started) or not up:
        label = f"fabserve list, {INSTANCES} instances"
        runner.fail(runner.case("fabserve_list_20", label, "many"), label,
                    "setting up the instances failed: " + " | ".join(
                        result.output.strip()[-300:] for result in [copied, by_hand, *started] if result.rc))
        return False
    return True


def tear_down(runner: Runner, host: Host) -> None:
    """Stop the managed instances with fabserve; end the hand-started ones by the PIDs list names."""
    listed = execute(fab(runner, host, "list", "--json"))
    pids = []
    for line in listed.output.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("managed") is False and row.get("port") in BY_HAND_PORTS:
            pids += row["pids"]
    concurrently([fab(runner, host, "stop", "--project", MANY, "--port", str(port)) for port in MANAGED_PORTS])
    if pids:
        execute(runner.ssh(host, shlex.join(["kill", *map(str, pids)])))
    ports = list(MANAGED_PORTS) + list(BY_HAND_PORTS)
    if not wait_for(lambda: not any(host.listening(port) for port in ports), timeout=30):
        log("bench: the many-instances servers did not all end; resetting the host")
        runner.bed.reset([host])


def many_instances(runner: Runner) -> None:
    """One repetition of the many-instances cases, on the first host."""
    host = runner.host
    one = [host]
    if not set_up(runner, host):
        runner.bed.reset(one)
        return
    try:
        runner.measure("fabserve_status_of_20", f"fabserve status, 1 of {INSTANCES} instances", "many",
                       fab(runner, host, "status", "--project", MANY, "--port", str(MANAGED_PORTS[0])), one)
        runner.measure("fabserve_list_20", f"fabserve list, {INSTANCES} instances", "many",
                       fab(runner, host, "list"), one, check=rows_listed)
        stop = fab(runner, host, "stop", "--project", PROJECT, "--port", str(PORT))
        runner.measure("fabserve_start_port", f"fabserve start --port {PORT}, {INSTANCES} others", "many",
                       fab(runner, host, "start", "--project", PROJECT, "--port", str(PORT)), one,
                       check=runner.up(one))
        execute(stop)
        # Port 8000 is the range's first free one, so both starts run the same server.
        runner.measure("fabserve_start_auto", f"fabserve start --port auto, {INSTANCES} others", "many",
                       fab(runner, host, "start", "--project", PROJECT, "--port", "auto"), one,
                       check=chose(PORT, runner.up(one)))
        execute(stop)
    finally:
        tear_down(runner, host)


def chose(port: int, up: Check) -> Check:
    def check(sample: Sample) -> str | None:
        if f"started on http://127.0.0.1:{port}/" not in sample.output:
            return f"did not start on port {port}"
        return up(sample)
    return check
