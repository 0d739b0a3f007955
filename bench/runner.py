"""What every group of cases shares: how one client is run and measured (execute),
the Runner that records a repetition's samples into cases and builds the clients'
command lines, and the Group a module registers its cases as (bench/cases.py lists
them). It imports none of the groups, so each group imports it and nothing else of
theirs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.hosts import Bed, Host
from bench.layout import DIY_FABFILE, FAB, MEASURE, PORT, PROJECT, REPO, SYSTEM_PYTHON, TRIVIAL_ROOT
from bench.samples import Case, Sample
from bench.shell import log

CASE_TIMEOUT = 300

Check = Callable[[Sample], "str | None"]


def execute(argv: Sequence[Any], env: dict[str, str] | None = None, cwd: Path = REPO,
            timeout: float = CASE_TIMEOUT) -> Sample:
    """Run a client to completion through bench/measure.py: wall time from spawn to reap,
    its exit code, its own peak RSS, its output."""
    argv_s = [str(arg) for arg in argv]
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile(suffix=".json") as result:
        began = time.perf_counter()
        proc = subprocess.Popen([str(SYSTEM_PYTHON), "-I", "-S", str(MEASURE), result.name, *argv_s],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd), start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the client: one group
            proc.wait()
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
        try:
            measured = json.loads(Path(result.name).read_text())
        except ValueError:
            return Sample(time.perf_counter() - began, proc.returncode or -1, 0,
                          output=f"{text}\n(no measurement: timed out after {timeout} s or the launcher failed)")
    return Sample(measured["seconds"], measured["rc"], measured["maxrss_kib"], measured["cpu_seconds"], output=text)


def machine_cpu() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def load_diy() -> Any:
    spec = importlib.util.spec_from_file_location("bench_diy_fabfile", DIY_FABFILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Runner:
    """One run's cases, filled repetition by repetition by the groups."""

    def __init__(self, bed: Bed, args: argparse.Namespace) -> None:
        self.bed = bed
        self.args = args
        self.cases: dict[str, Case] = {}
        self.rep = 0          # 0 = warm-up
        self.diy = load_diy()

    @property
    def host(self) -> Host:
        """The host the single-host groups use."""
        return self.bed.hosts[0]

    # -- bookkeeping
    def case(self, name: str, label: str, group: str, hosts: int = 1, client: bool = True) -> Case:
        if name not in self.cases:
            self.cases[name] = Case(name, label, group, hosts, client)
        return self.cases[name]

    def rep_name(self) -> str:
        return str(self.rep) if self.rep else "warm-up"

    def add(self, case: Case, sample: Sample) -> None:
        """Keep a sample of a measured repetition; the warm-up's are dropped."""
        if self.rep:
            case.add(self.rep, sample)

    def fail(self, case: Case, what: str, problem: str) -> None:
        """Report what went wrong in this repetition and list it with the case."""
        message = f"{what} (rep {self.rep_name()}): {problem}"
        log("bench: FAILED " + message)
        case.failures.append(message)

    def measure(self, name: str, label: str, group: str, argv: Sequence[Any], hosts: Sequence[Host],
                env: dict[str, str] | None = None, cwd: Path = REPO, check: Check | None = None) -> Sample:
        """One timed call; `check` runs afterwards (untimed) and names what is wrong, if anything."""
        case = self.case(name, label, group, len(hosts))
        marks = self.bed.log_marks(hosts)
        cpu_before = machine_cpu()
        sample = execute(argv, env=env, cwd=cwd)
        busy, total = (after - before for after, before in zip(machine_cpu(), cpu_before))
        sample.busy = busy / total if total else 0.0
        sample.sessions, sample.connections = self.bed.log_counts(hosts, marks)
        problem = None if sample.rc == 0 else f"exit {sample.rc}"
        if problem is None and check is not None:
            problem = check(sample)
        if problem is not None:
            sample.rc = sample.rc or 1
            tail = "\n".join(sample.output.strip().splitlines()[-6:])
            self.fail(case, label, f"{problem}\n{tail}")
            self.bed.reset(hosts)
        self.add(case, sample)
        return sample

    # -- commands
    def fab(self, hosts: Sequence[Host], *words: str) -> list[str]:
        return [str(FAB), "-r", str(REPO), "-S", str(self.bed.ssh_config), "-H",
                ",".join(host.alias for host in hosts), *words, "--project", PROJECT, "--port", str(PORT)]

    def trivial(self, hosts: Sequence[Host]) -> list[str]:
        return [str(FAB), "-r", str(TRIVIAL_ROOT), "-S", str(self.bed.ssh_config), "-H",
                ",".join(host.alias for host in hosts), "noop"]

    def diy_fab(self, host: Host, verb: str) -> list[str]:
        return [str(FAB), "-r", str(DIY_FABFILE.parent), "-S", str(self.bed.ssh_config), "-H", host.alias, verb]

    def ansible(self, host: Host, module: str, command: str) -> list[str]:
        return [str(self.bed.ansible_bin), host.alias, "-o", "-m", module, "-a", command]

    def ssh(self, host: Host, command: str) -> list[str]:
        return ["ssh", "-F", str(self.bed.ssh_config), host.alias, command]

    def ssh_with_input(self, host: Host, command: str, line: str) -> list[str]:
        """ssh running `command` with `line` on its stdin (through sh and printf, a few ms)."""
        return ["sh", "-c", 'line=$1; shift; printf "%s" "$line" | exec "$@"', "sh", line, *self.ssh(host, command)]

    # -- checks
    @staticmethod
    def up(hosts: Sequence[Host]) -> Check:
        def check(_sample: Sample) -> str | None:
            down = [host.alias for host in hosts if not host.listening()]
            return f"port {PORT} not listening on {', '.join(down)}" if down else None
        return check

    @staticmethod
    def down(hosts: Sequence[Host]) -> Check:
        def check(_sample: Sample) -> str | None:
            # stop returns once the port is free; allow no grace at all here.
            up = [host.alias for host in hosts if host.listening()]
            return f"port {PORT} still taken on {', '.join(up)}" if up else None
        return check

    # -- the repetitions
    def run(self, groups: Sequence[Group]) -> None:
        """--warmup untimed repetitions, then --reps measured ones, each running `groups` in order."""
        total = self.args.warmup + self.args.reps
        scope = ", ".join(dict.fromkeys(group.name for group in groups))
        for index in range(total):
            self.rep = index - self.args.warmup + 1 if index >= self.args.warmup else 0
            began = time.monotonic()
            for group in groups:
                group.run(self)
            which = f"rep {self.rep}/{self.args.reps}" if self.rep else f"warm-up {index + 1}"
            log(f"bench: {which} ({scope}) done in {time.monotonic() - began:.0f} s")


@dataclass(frozen=True)
class Group:
    """Cases one repetition runs together, named for --skip and --only."""
    name: str
    run: Callable[[Runner], None]
    # Groups whose state this one measures (a server they started, its log): selected with it.
    needs: frozenset[str] = frozenset()
    # --skip words besides its name that leave it out (a client it cannot run without).
    skipped_by: frozenset[str] = frozenset()
    # It runs on more hosts than one: the bed then gets --hosts hosts, else one.
    wide: bool = False
    # Lines the report adds after the run (ratios of its own), from the run's cases.
    notes: Callable[[Runner], list[str]] | None = None
