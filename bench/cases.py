"""The measured calls: how one client is run and measured (execute), and the
cases of one repetition (Runner): baselines, Django's ready time, fabserve's
verbs, the same jobs through plain Fabric and Ansible, and the fan-out."""

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
from pathlib import Path
from typing import Any

from bench.hosts import Bed, Host
from bench.layout import (DIY_FABFILE, DJANGO_READY, FAB, MEASURE, PORT, PROJECT, PYTHON, REPO, SYSTEM_PYTHON,
                          TRIVIAL_ROOT, fanout_sizes)
from bench.samples import Case, Sample
from bench.shell import log

CASE_TIMEOUT = 300
DIY_LABELS = {"start": "nohup & (to ready)", "status": "ps | grep", "stop": "kill (to port free)"}

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


def agent_command() -> tuple[str, str] | None:
    """The exact shell command fabserve sends for `status` and the request line it
    writes to its stdin, to run it through OpenSSH (separates the agent's time on
    the host from the client's). None if fabserve's internals changed shape."""
    try:
        from tasks import remote, settings
        from tasks.config import merged
        values = merged({}, {"project": PROJECT, "port": PORT})
        request = settings.request("status", values, None)
        return remote.command(values["agent_python"]), remote.request_line(request)
    except Exception as exc:  # internals, not an API: losing one case beats losing the run
        log(f"bench: cannot build the agent command ({exc!r}); skipping that case")
        return None


class Runner:
    def __init__(self, bed: Bed, args: argparse.Namespace) -> None:
        self.bed = bed
        self.args = args
        self.cases: dict[str, Case] = {}
        self.rep = 0          # 0 = warm-up
        self.diy = load_diy()
        self.agent_command = agent_command()

    # -- bookkeeping
    def case(self, name: str, label: str, group: str, hosts: int = 1) -> Case:
        if name not in self.cases:
            self.cases[name] = Case(name, label, group, hosts)
        return self.cases[name]

    def rep_name(self) -> str:
        return str(self.rep) if self.rep else "warm-up"

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
            message = f"{label} (rep {self.rep_name()}): {problem}\n{tail}"
            log("bench: FAILED " + message)
            case.failures.append(message)
            self.bed.reset(hosts)
        if self.rep:
            case.add(self.rep, sample)
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

    @staticmethod
    def answered(sample: Sample) -> str | None:
        return None if '"state": "running"' in sample.output else "the agent did not report the server running"

    # -- one repetition
    def single_host(self) -> None:
        host = self.bed.hosts[0]
        one = [host]
        self.measure("ssh_true", "ssh host true (OpenSSH)", "baseline", self.ssh(host, "true"), one)
        self.measure("fab_trivial", "fab -H host noop (Fabric floor)", "baseline", self.trivial(one), one)
        self.django_ready(host)
        self.measure("fabserve_start", "fabserve start (to ready)", "fabserve", self.fab(one, "start"), one,
                     check=self.up(one))
        self.measure("fabserve_status", "fabserve status (running)", "fabserve", self.fab(one, "status"), one)
        if self.agent_command:
            self.measure("ssh_agent_status", "ssh host <fabserve agent status>", "fabserve",
                         self.ssh_with_input(host, *self.agent_command), one, check=self.answered)
        from bench.package import installed_cases  # imported here: bench.package builds on this module's execute
        installed_cases(self, host)
        self.measure("fabserve_restart", "fabserve restart", "fabserve", self.fab(one, "restart"), one,
                     check=self.up(one))
        self.measure("fabserve_stop", "fabserve stop (to port free)", "fabserve", self.fab(one, "stop"), one,
                     check=self.down(one))
        from bench.logs import big_log  # imported here: bench.logs builds on this module's execute
        big_log(self, host)
        if "many" not in self.args.skip:
            from bench.many import many_instances  # imported here: bench.many builds on this module's execute
            many_instances(self, host)
        from bench.ciflow import ci_flow  # likewise: it builds on execute
        ci_flow(self, host)
        if "diy" not in self.args.skip:
            for verb, check in (("start", self.up(one)), ("status", None), ("stop", self.down(one))):
                self.measure("fabric_" + verb, f"plain Fabric {DIY_LABELS[verb]}", "plain Fabric",
                             self.diy_fab(host, verb), one, cwd=DIY_FABFILE.parent, check=check)
        if "ansible" not in self.args.skip:
            for module in ("shell", "raw"):
                for verb, check in (("start", self.up(one)), ("status", None), ("stop", self.down(one))):
                    command = {"start": self.diy.START, "status": self.diy.STATUS, "stop": self.diy.STOP}[verb]
                    self.measure(f"ansible_{module}_{verb}", f"ansible -m {module} {DIY_LABELS[verb]}",
                                 "ansible -m " + module, self.ansible(host, module, command), one,
                                 env=self.bed.ansible_env, cwd=self.bed.work, check=check)
            # A repetition outlasts ControlPersist's 60 s anyway; closing the master now keeps
            # its connection out of the fan-out's host CPU figures.
            self.bed.end_ansible_masters()

    def django_ready(self, host: Host) -> None:
        case = self.case("django_ready", "Django runserver ready (no SSH)", "Django")
        result = execute(["ip", "netns", "exec", host.netns, str(PYTHON), str(DJANGO_READY), host.user,
                          PROJECT, str(PORT)])
        try:
            seconds = json.loads(result.output.strip().splitlines()[-1])["seconds"]
            sample = Sample(seconds, 0, 0)
        except (ValueError, KeyError, IndexError):
            message = f"Django ready (rep {self.rep_name()}): {result.output.strip()[-500:]}"
            log("bench: FAILED " + message)
            case.failures.append(message)
            sample = Sample(result.seconds, result.rc or 1, 0)
        if self.rep:
            case.add(self.rep, sample)

    def fanout(self, sizes: Sequence[int]) -> None:
        for size in sizes:
            hosts = self.bed.hosts[:size]
            self.measure(f"fanout_trivial_{size}", f"trivial fab task, {size} hosts (serial)", "fan-out",
                         self.trivial(hosts), hosts)
            # Untimed: every host runs a fabserve-started server before status and stop.
            started = execute(self.fab(hosts, "start"))
            problem = self.up(hosts)(started)
            if started.rc != 0 or problem:
                tail = "\n".join(started.output.splitlines()[-6:])
                message = f"fan-out start on {size} hosts: exit {started.rc}, {problem}\n{tail}"
                log("bench: FAILED " + message)
                self.case(f"fanout_status_{size}", f"fabserve status, {size} hosts", "fan-out",
                          size).failures.append(message)
            self.measure(f"fanout_status_{size}", f"fabserve status, {size} hosts", "fan-out",
                         self.fab(hosts, "status"), hosts)
            self.measure(f"fanout_stop_{size}", f"fabserve stop, {size} hosts", "fan-out",
                         self.fab(hosts, "stop"), hosts, check=self.down(hosts))

    def run(self) -> None:
        sizes = fanout_sizes(self.args.hosts)
        total = self.args.warmup + self.args.reps
        for index in range(total):
            self.rep = index - self.args.warmup + 1 if index >= self.args.warmup else 0
            began = time.monotonic()
            self.single_host()
            if "fanout" not in self.args.skip:
                self.fanout(sizes)
            if not {"module", "ansible"} & self.args.skip:
                from bench.ansible_module import module_cases  # it builds on this module's Runner
                module_cases(self)
            which = f"rep {self.rep}/{self.args.reps}" if self.rep else f"warm-up {index + 1}"
            scope = "" if "fanout" in self.args.skip else ", fan-out " + ",".join(map(str, sizes))
            log(f"bench: {which} (single host{scope}) done in {time.monotonic() - began:.0f} s")
