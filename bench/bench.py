"""fabserve's benchmark (run it through bench/run, as root).

Every "host" is a network namespace of its own with an OpenSSH sshd in it,
reached over a veth pair (10.222.<i>.2), and an unprivileged user of its own
(fabserve-bench<i>) owning a copy of the example project at ~/site. So every
host has its own port 8000, its own state directory and its own processes to
search, and one `fab -H bench01,bench02,... status --project ~/site --port 8000`
addresses them all exactly as it would address real machines. Only the CPU,
the kernel and the process table are shared.

Each case runs --warmup times untimed, then --reps times; the cases of one
repetition run back to back, so the ratios are computed pair by pair within a
repetition. Wall time is measured from spawning the client to reaping it (with
wait4, which also gives its peak RSS). SSH commands and connections are counted
on the server side, from each sshd's LogLevel VERBOSE log ("Starting session:"
and "Accepted publickey" lines) written during the call.

Nothing here fails because a target is missed; the exit status is 1 only when
the setup or a measured command itself failed (the numbers would be wrong).
"""

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import platform
import pstats
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STATE = Path("/var/tmp/fabserve-bench")  # shared across runs; readable by the bench users
RESULTS = BENCH / "results"
FAB = REPO / ".venv" / "bin" / "fab"
PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_VENV = BENCH / ".venv"
SYSTEM_PYTHON = Path("/usr/bin/python3")
SSHD = Path("/usr/sbin/sshd")

USER_PREFIX = "fabserve-bench"  # + two digits: one account per host
ALIAS_PREFIX = "bench"          # ssh_config aliases bench01, bench02, ...
NETNS_PREFIX = "fsbench-"       # network namespaces fsbench-01, ...
VETH_PREFIX = "fsb"             # our end of each veth pair: fsb01, ...
SUBNET = "10.222"               # host i: 10.222.i.2 in its namespace, 10.222.i.1 on our side
                                # (tests/fleet_bed.py uses 10.213: both can run at once)
PROJECT = "~/site"
PORT = 8000
FANOUT = (1, 5, 10, 20)
CASE_TIMEOUT = 300
PR_SET_PDEATHSIG = 1

DIY_FABFILE = BENCH / "diy" / "fabfile.py"
TRIVIAL_ROOT = BENCH / "trivial"
DJANGO_READY = BENCH / "django_ready.py"
MEASURE = BENCH / "measure.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark could not set up or run; the message says why."""


# --------------------------------------------------------------- processes


def die_with_parent() -> None:
    """In the forked child: a benchmark killed outright must not leave sshd behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def sh(*argv: Any, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """A setup command; BenchError with its output if it fails."""
    argv_s = [str(arg) for arg in argv]
    result = subprocess.run(argv_s, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise BenchError("{} exited {}:\n{}{}".format(" ".join(argv_s), result.returncode,
                                                      result.stdout, result.stderr))
    return result


@dataclass
class Sample:
    seconds: float
    rc: int
    maxrss_kib: int
    cpu_seconds: float = 0.0  # user + system time of the client and the children it reaped
    busy: float = 0.0         # share of the machine's CPU time in use during the call (all cores, 0-1)
    sessions: int = 0      # "Starting session:" lines, all hosts of the call
    connections: int = 0   # "Accepted publickey" lines, all hosts of the call
    output: str = ""


def execute(argv: Sequence[Any], env: Optional[Dict[str, str]] = None, cwd: Path = REPO,
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
                          output=text + "\n(no measurement: timed out after {} s or the launcher failed)".format(timeout))
    return Sample(measured["seconds"], measured["rc"], measured["maxrss_kib"], measured["cpu_seconds"], output=text)


# -------------------------------------------------------------------- hosts


@dataclass
class Host:
    index: int
    alias: str
    user: str
    uid: int
    gid: int
    home: Path
    netns: str
    veth: str
    addr: str
    host_key: Path
    sshd_config: Path
    log: Path
    sshd: Optional[subprocess.Popen] = None

    @property
    def project(self) -> Path:
        return self.home / PROJECT[2:]

    def listening(self, port: int = PORT) -> bool:
        """Whether anything listens on `port` in this host's namespace, read from
        /proc/<sshd>/net/tcp*, i.e. without a connection of our own."""
        assert self.sshd is not None
        wanted = ":{:04X}".format(port)
        for name in ("tcp", "tcp6"):
            try:
                lines = Path("/proc/{}/net/{}".format(self.sshd.pid, name)).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":
                    return True
        return False


def machine_cpu() -> tuple:
    """(busy, total) CPU jiffies of the whole machine, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def uids_processes(uids: Sequence[int]) -> List[int]:
    """PIDs of live processes whose real uid is one of `uids`."""
    wanted = {str(uid) for uid in uids}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path("/proc/{}/status".format(entry)).read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if line.split()[1] in wanted:
                    pids.append(int(entry))
                break
    return pids


def kill_pids(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_users_processes(uids: Sequence[int]) -> None:
    """End every process of the benchmark's own accounts, by PID (TERM, then KILL)."""
    pids = uids_processes(uids)
    if not pids:
        return
    kill_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and uids_processes(uids):
        time.sleep(0.05)
    kill_pids(uids_processes(uids), signal.SIGKILL)


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        pwd.getpwnam(name)
    except KeyError:
        sh("useradd", "-m", "-s", "/bin/bash", name)
    # '*' rules out passwords; a locked '!' account is refused by sshd with UsePAM no.
    sh("usermod", "-p", "*", name)
    return pwd.getpwnam(name)


def target_venv() -> Path:
    """Django for the hosts, built from Debian's python where every bench user can read it."""
    requirements = REPO / "example" / "requirements.txt"
    venv = STATE / "venv-{}".format(hashlib.sha256(requirements.read_bytes()).hexdigest()[:12])
    if (venv / ".complete").exists():
        return venv
    log("bench: building the hosts' Django venv {}".format(venv))
    if venv.exists():
        shutil.rmtree(venv)
    sh(SYSTEM_PYTHON, "-m", "venv", venv)
    sh(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", requirements)
    sh("chmod", "-R", "a+rX", venv)
    (venv / ".complete").write_text("ok\n")
    return venv


def bench_venv() -> Path:
    """bench/.venv with Ansible; reinstalled only when bench/requirements.txt changes."""
    requirements = BENCH / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = BENCH_VENV / ".bench-requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and (BENCH_VENV / "bin" / "ansible").exists():
        return BENCH_VENV
    log("bench: installing Ansible into {}".format(BENCH_VENV))
    if not (BENCH_VENV / "bin" / "python").exists():
        shutil.rmtree(BENCH_VENV, ignore_errors=True)
        sh(sys.executable, "-m", "venv", BENCH_VENV)
    sh(BENCH_VENV / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
       "-r", requirements)
    stamp.write_text(digest + "\n")
    return BENCH_VENV


def stale_namespaces() -> List[str]:
    listed = sh("ip", "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(NETNS_PREFIX)]


def remove_namespace(name: str) -> None:
    """Kill what still runs inside one of our namespaces (by PID), then delete it."""
    pids = [int(word) for word in sh("ip", "netns", "pids", name, check=False).stdout.split()]
    kill_pids(pids)
    sh("ip", "netns", "del", name, check=False)


def sshd_config(host: Host) -> str:
    return "\n".join([
        "ListenAddress {}".format(host.addr),
        "Port 22",
        "HostKey {}".format(host.host_key),
        "PidFile none",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        "AllowUsers {}".format(host.user),
        "AuthorizedKeysFile .ssh/authorized_keys",
        "StrictModes yes",
        "UseDNS no",
        "LogLevel VERBOSE",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp internal-sftp",
    ]) + "\n"


def accepts(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


class Bed:
    """The test bed: hosts, keys, configs; everything it starts is undone by close()."""

    def __init__(self, count: int, with_ansible: bool) -> None:
        self.count = count
        self.with_ansible = with_ansible
        self.hosts: List[Host] = []
        self.namespaces: List[str] = []
        self.stack = contextlib.ExitStack()
        self.work = Path()
        self.ssh_config = Path()
        self.ansible_env: Dict[str, str] = {}
        self.ansible_bin = Path()

    # -- setup
    def open(self) -> "Bed":
        STATE.mkdir(parents=True, exist_ok=True)
        STATE.chmod(0o755)
        lock = self.stack.enter_context(open(STATE / ".lock", "a"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("bench: another benchmark run holds {}; waiting".format(STATE / ".lock"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        # Only one run holds the lock, so whatever a crashed run left is ours to undo.
        for name in stale_namespaces():
            remove_namespace(name)
        for stale in STATE.glob("run-*"):
            shutil.rmtree(stale, ignore_errors=True)
        taken = sh("ip", "-o", "addr").stdout + sh("ip", "-o", "route").stdout
        if " {}.".format(SUBNET) in taken:
            raise BenchError("{}.0.0/16 is in use on this machine (ip addr / ip route); "
                             "the benchmark needs it for its hosts".format(SUBNET))
        self.stack.callback(self.close_hosts)

        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=STATE))  # 0700: private keys
        self.stack.callback(shutil.rmtree, self.work, True)
        if self.with_ansible:
            self.ansible_bin = bench_venv() / "bin" / "ansible"
        venv = target_venv()
        key = self.work / "client_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fabserve-bench", "-f", key)
        pubkey = key.with_suffix(".pub").read_text()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory

        users = [ensure_user("{}{:02d}".format(USER_PREFIX, i)) for i in range(1, self.count + 1)]
        kill_users_processes([user.pw_uid for user in users])
        known_hosts, aliases = [], []
        for i, user in enumerate(users, 1):
            host = Host(index=i, alias="{}{:02d}".format(ALIAS_PREFIX, i), user=user.pw_name, uid=user.pw_uid,
                        gid=user.pw_gid, home=Path(user.pw_dir), netns="{}{:02d}".format(NETNS_PREFIX, i),
                        veth="{}{:02d}".format(VETH_PREFIX, i), addr="{}.{}.2".format(SUBNET, i),
                        host_key=self.work / "host{:02d}_ed25519".format(i),
                        sshd_config=self.work / "sshd{:02d}.conf".format(i),
                        log=self.work / "sshd{:02d}.log".format(i))
            self.prepare_account(host, pubkey, venv)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.alias, "-f", host.host_key)
            known_hosts.append("{} {}".format(host.addr, " ".join(
                host.host_key.with_suffix(".pub").read_text().split()[:2])))
            aliases.append("\n".join([
                "Host {}".format(host.alias),
                "    HostName {}".format(host.addr),
                "    User {}".format(host.user),
            ]))
            self.hosts.append(host)
        (self.work / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        self.ssh_config = self.work / "ssh_config"
        self.ssh_config.write_text("\n".join(aliases) + "\n" + "\n".join([
            "Host {}*".format(ALIAS_PREFIX),
            "    Port 22",
            "    IdentityFile {}".format(key),
            "    IdentitiesOnly yes",
            "    BatchMode yes",
            "    StrictHostKeyChecking yes",
            "    UserKnownHostsFile {}".format(self.work / "known_hosts"),
            "    GlobalKnownHostsFile /dev/null",
            "    LogLevel ERROR",
        ]) + "\n")
        for host in self.hosts:
            self.start_host(host)
        for host in self.hosts:
            deadline = time.monotonic() + 10
            while not accepts(host.addr, 22):
                if host.sshd.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("sshd of {} did not come up:\n{}".format(
                        host.alias, host.log.read_text(errors="replace")[-2000:]))
                time.sleep(0.02)
        if self.with_ansible:
            self.write_ansible_config()
        return self

    def prepare_account(self, host: Host, pubkey: str, venv: Path) -> None:
        """authorized_keys, a fresh ~/site (the example project, .venv -> the Django venv),
        no fabserve state left from a previous run."""
        host.home.chmod(0o755)
        ssh_dir = host.home / ".ssh"
        ssh_dir.mkdir(exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(pubkey)
        for path in (host.home / ".local" / "state" / "fabserve", host.project, host.home / ".ansible"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(REPO / "example", host.project,
                        ignore=shutil.ignore_patterns(".venv", "__pycache__", "db.sqlite3"))
        (host.project / ".venv").symlink_to(venv)
        sh("chown", "-R", "{}:{}".format(host.uid, host.gid), ssh_dir, host.project)
        (ssh_dir / "authorized_keys").chmod(0o600)
        ssh_dir.chmod(0o700)

    def start_host(self, host: Host) -> None:
        sh("ip", "netns", "add", host.netns)
        self.namespaces.append(host.netns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        sh("ip", "addr", "add", "{}.{}.1/30".format(SUBNET, host.index), "dev", host.veth)
        sh("ip", "link", "set", host.veth, "up")
        sh("ip", "-n", host.netns, "addr", "add", "{}/30".format(host.addr), "dev", "eth0")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        host.sshd_config.write_text(sshd_config(host))
        sh(SSHD, "-t", "-f", host.sshd_config)
        with host.log.open("ab") as out:
            # `ip netns exec` execs sshd, so this PID is sshd's own.
            host.sshd = subprocess.Popen(["ip", "netns", "exec", host.netns, str(SSHD), "-D", "-e", "-f",
                                          str(host.sshd_config)], stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def write_ansible_config(self) -> None:
        inventory = self.work / "inventory.ini"
        inventory.write_text("[bench]\n" + "".join(host.alias + "\n" for host in self.hosts) + "\n[bench:vars]\n"
                             "ansible_ssh_common_args=-F {}\n".format(self.ssh_config))
        config = self.work / "ansible.cfg"
        # Ansible's defaults otherwise (no pipelining, ControlPersist=60s), as users get it;
        # the interpreter is named so no discovery step is counted against Ansible.
        config.write_text("\n".join([
            "[defaults]",
            "inventory = {}".format(inventory),
            "interpreter_python = /usr/bin/python3",
            "host_key_checking = True",
            "forks = 20",
            "nocows = True",
            "retry_files_enabled = False",
            "deprecation_warnings = False",
            "local_tmp = {}".format(self.work / "ansible-local"),
            "[ssh_connection]",
            "control_path_dir = {}".format(self.work / "cp"),
        ]) + "\n")
        self.ansible_env = {**os.environ, "ANSIBLE_CONFIG": str(config),
                            "ANSIBLE_HOME": str(self.work / "ansible-home")}

    # -- teardown
    def close_hosts(self) -> None:
        kill_users_processes([host.uid for host in self.hosts])
        self.end_ansible_masters()
        for host in self.hosts:
            if host.sshd is not None and host.sshd.poll() is None:
                host.sshd.terminate()
                try:
                    host.sshd.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    host.sshd.kill()
                    host.sshd.wait()
        for name in self.namespaces:
            remove_namespace(name)

    def end_ansible_masters(self) -> None:
        """Ansible's ControlPersist masters outlive it: ask each to exit."""
        control = self.work / "cp"
        if not control.is_dir():
            return
        for sock in control.iterdir():
            sh("ssh", "-o", "ControlPath={}".format(sock), "-O", "exit", "bench", check=False, timeout=10)

    def close(self) -> None:
        self.stack.close()

    # -- helpers for cases
    def reset(self, hosts: Sequence[Host]) -> None:
        """After a failed case: end whatever the accounts run and wait until port 8000 is free."""
        kill_users_processes([host.uid for host in hosts])
        deadline = time.monotonic() + 10
        while any(host.listening() for host in hosts) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_marks(self, hosts: Sequence[Host]) -> List[int]:
        return [host.log.stat().st_size for host in hosts]

    def log_counts(self, hosts: Sequence[Host], marks: Sequence[int]) -> tuple:
        sessions = connections = 0
        for host, mark in zip(hosts, marks):
            with host.log.open("rb") as handle:
                handle.seek(mark)
                text = handle.read().decode("utf-8", errors="replace")
            sessions += text.count("Starting session:")
            connections += text.count("Accepted publickey")
        return sessions, connections


# -------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    label: str
    group: str
    hosts: int = 1
    samples: List[Sample] = field(default_factory=list)  # one per measured rep, failed ones too
    reps: List[int] = field(default_factory=list)         # the rep each sample belongs to
    failures: List[str] = field(default_factory=list)

    def by_rep(self) -> Dict[int, Sample]:
        return {rep: sample for rep, sample in zip(self.reps, self.samples) if sample.rc == 0}


class Runner:
    def __init__(self, bed: Bed, args: argparse.Namespace) -> None:
        self.bed = bed
        self.args = args
        self.cases: Dict[str, Case] = {}
        self.rep = 0          # 0 = warm-up
        self.diy = load_diy()
        self.agent_command = agent_command()

    # -- bookkeeping
    def case(self, name: str, label: str, group: str, hosts: int = 1) -> Case:
        if name not in self.cases:
            self.cases[name] = Case(name, label, group, hosts)
        return self.cases[name]

    def measure(self, name: str, label: str, group: str, argv: Sequence[Any], hosts: Sequence[Host],
                env: Optional[Dict[str, str]] = None, cwd: Path = REPO,
                check: Optional[Callable[[Sample], Optional[str]]] = None) -> Sample:
        """One timed call; `check` runs afterwards (untimed) and names what is wrong, if anything."""
        case = self.case(name, label, group, len(hosts))
        marks = self.bed.log_marks(hosts)
        cpu_before = machine_cpu()
        sample = execute(argv, env=env, cwd=cwd)
        busy, total = (after - before for after, before in zip(machine_cpu(), cpu_before))
        sample.busy = busy / total if total else 0.0
        sample.sessions, sample.connections = self.bed.log_counts(hosts, marks)
        problem = None if sample.rc == 0 else "exit {}".format(sample.rc)
        if problem is None and check is not None:
            problem = check(sample)
        if problem is not None:
            sample.rc = sample.rc or 1
            tail = "\n".join(sample.output.strip().splitlines()[-6:])
            message = "{} (rep {}): {}\n{}".format(label, self.rep or "warm-up", problem, tail)
            log("bench: FAILED " + message)
            case.failures.append(message)
            self.bed.reset(hosts)
        if self.rep:
            case.samples.append(sample)
            case.reps.append(self.rep)
        return sample

    # -- commands
    def fab(self, hosts: Sequence[Host], *words: str) -> List[str]:
        return [str(FAB), "-r", str(REPO), "-S", str(self.bed.ssh_config), "-H",
                ",".join(host.alias for host in hosts), *words, "--project", PROJECT, "--port", str(PORT)]

    def trivial(self, hosts: Sequence[Host]) -> List[str]:
        return [str(FAB), "-r", str(TRIVIAL_ROOT), "-S", str(self.bed.ssh_config), "-H",
                ",".join(host.alias for host in hosts), "noop"]

    def diy_fab(self, host: Host, verb: str) -> List[str]:
        return [str(FAB), "-r", str(DIY_FABFILE.parent), "-S", str(self.bed.ssh_config), "-H", host.alias, verb]

    def ansible(self, host: Host, module: str, command: str) -> List[str]:
        return [str(self.bed.ansible_bin), host.alias, "-o", "-m", module, "-a", command]

    def ssh(self, host: Host, command: str) -> List[str]:
        return ["ssh", "-F", str(self.bed.ssh_config), host.alias, command]

    # -- checks
    @staticmethod
    def up(hosts: Sequence[Host]) -> Callable[[Sample], Optional[str]]:
        def check(_sample: Sample) -> Optional[str]:
            down = [host.alias for host in hosts if not host.listening()]
            return "port {} not listening on {}".format(PORT, ", ".join(down)) if down else None
        return check

    @staticmethod
    def down(hosts: Sequence[Host]) -> Callable[[Sample], Optional[str]]:
        def check(_sample: Sample) -> Optional[str]:
            # stop returns once the port is free; allow no grace at all here.
            up = [host.alias for host in hosts if host.listening()]
            return "port {} still taken on {}".format(PORT, ", ".join(up)) if up else None
        return check

    @staticmethod
    def answered(sample: Sample) -> Optional[str]:
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
                         self.ssh(host, self.agent_command), one, check=self.answered)
        self.measure("fabserve_restart", "fabserve restart", "fabserve", self.fab(one, "restart"), one,
                     check=self.up(one))
        self.measure("fabserve_stop", "fabserve stop (to port free)", "fabserve", self.fab(one, "stop"), one,
                     check=self.down(one))
        if "diy" not in self.args.skip:
            for verb, check in (("start", self.up(one)), ("status", None), ("stop", self.down(one))):
                self.measure("fabric_" + verb, "plain Fabric {}".format(DIY_LABELS[verb]), "plain Fabric",
                             self.diy_fab(host, verb), one, cwd=DIY_FABFILE.parent, check=check)
        if "ansible" not in self.args.skip:
            for module in ("shell", "raw"):
                for verb, check in (("start", self.up(one)), ("status", None), ("stop", self.down(one))):
                    command = {"start": self.diy.START, "status": self.diy.STATUS, "stop": self.diy.STOP}[verb]
                    self.measure("ansible_{}_{}".format(module, verb),
                                 "ansible -m {} {}".format(module, DIY_LABELS[verb]), "ansible -m " + module,
                                 self.ansible(host, module, command), one, env=self.bed.ansible_env,
                                 cwd=self.bed.work, check=check)
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
            message = "Django ready (rep {}): {}".format(self.rep or "warm-up", result.output.strip()[-500:])
            log("bench: FAILED " + message)
            case.failures.append(message)
            sample = Sample(result.seconds, result.rc or 1, 0)
        if self.rep:
            case.samples.append(sample)
            case.reps.append(self.rep)

    def fanout(self, sizes: Sequence[int]) -> None:
        for size in sizes:
            hosts = self.bed.hosts[:size]
            self.measure("fanout_trivial_{}".format(size), "trivial fab task, {} hosts (serial)".format(size), "fan-out",
                         self.trivial(hosts), hosts)
            # Untimed: every host runs a fabserve-started server before status and stop.
            started = execute(self.fab(hosts, "start"))
            problem = self.up(hosts)(started)
            if started.rc != 0 or problem:
                message = "fan-out start on {} hosts: exit {}, {}\n{}".format(
                    size, started.rc, problem, "\n".join(started.output.splitlines()[-6:]))
                log("bench: FAILED " + message)
                self.case("fanout_status_{}".format(size), "fabserve status, {} hosts".format(size), "fan-out",
                          size).failures.append(message)
            self.measure("fanout_status_{}".format(size), "fabserve status, {} hosts".format(size), "fan-out",
                         self.fab(hosts, "status"), hosts)
            self.measure("fanout_stop_{}".format(size), "fabserve stop, {} hosts".format(size), "fan-out",
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
            log("bench: {} {} done in {:.0f} s".format(
                "rep {}/{}".format(self.rep, self.args.reps) if self.rep else "warm-up {}".format(index + 1),
                "(single host{})".format("" if "fanout" in self.args.skip else ", fan-out " +
                                         ",".join(map(str, sizes))), time.monotonic() - began))


DIY_LABELS = {"start": "nohup & (to ready)", "status": "ps | grep", "stop": "kill (to port free)"}


def fanout_sizes(hosts: int) -> List[int]:
    sizes = [size for size in FANOUT if size <= hosts]
    if hosts not in sizes:
        sizes.append(hosts)
    return sizes


def load_diy() -> Any:
    spec = importlib.util.spec_from_file_location("bench_diy_fabfile", DIY_FABFILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def agent_command() -> Optional[str]:
    """The exact shell command fabserve sends for `status`, to run it through OpenSSH
    (separates the agent's time on the host from the client's). None if fabserve's
    internals changed shape."""
    sys.path.insert(0, str(REPO))
    try:
        from tasks import options, remote
        values = options.merged({}, {"project": PROJECT, "port": PORT})
        request = options.request("status", values, None, local=False)
        return remote.command(request, values["agent_python"])
    except Exception as exc:  # an internal API, edited by others: degrade, do not die
        log("bench: cannot build the agent command ({!r}); skipping that case".format(exc))
        return None
    finally:
        sys.path.remove(str(REPO))


# ------------------------------------------------------------------ profile


def profile(bed: Bed) -> Dict[str, Any]:
    """Where `fab status` spends its time on the client: -X importtime and cProfile."""
    host = bed.hosts[0]
    base = [str(REPO / ".venv" / "bin" / "fab"), "-r", str(REPO), "-S", str(bed.ssh_config), "-H", host.alias]
    words = ["status", "--project", PROJECT, "--port", str(PORT)]
    started = execute(base + ["start", "--project", PROJECT, "--port", str(PORT)])
    if started.rc != 0:
        return {"error": "start failed: " + started.output[-300:]}
    try:
        module = [str(PYTHON), "-X", "importtime", "-m", "fabric"] + base[1:] + words
        imported = subprocess.run(module, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = statistics.median(execute(base + words).seconds for _ in range(3))
        with tempfile.NamedTemporaryFile(suffix=".prof") as out:
            subprocess.run([str(PYTHON), "-m", "cProfile", "-o", out.name, "-m", "fabric"] + base[1:] + words,
                           cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            functions = cprofile_top(out.name)
    finally:
        execute(base + ["stop", "--project", PROJECT, "--port", str(PORT)])
    return {"wall_seconds": wall, "imports": importtime_top(imported.stderr), "functions": functions}


def importtime_top(stderr: str, count: int = 14) -> Dict[str, Any]:
    """The imports with the largest cumulative time, at any depth (depth 0: imported by
    fab or the fabfile itself), and the total of the top-level ones."""
    entries = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            entries.append((len(match.group(3)), int(match.group(2)), int(match.group(1)), match.group(4)))
    if not entries:
        return {"total_seconds": None, "top": []}
    level = min(depth for depth, _, _, _ in entries)
    top = sorted(entries, key=lambda entry: -entry[1])[:count]
    return {"total_seconds": sum(us for depth, us, _, _ in entries if depth == level) / 1e6,
            "top": [{"module": name, "seconds": us / 1e6, "self_seconds": own / 1e6, "depth": (depth - level) // 2}
                    for depth, us, own, name in top]}


# Functions worth naming in the breakdown: what each means for a fab run.
MILESTONES = [
    ("imports (all modules)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("fab: load the fabfile + config", "invoke/program.py", "load_collection"),
    ("fab: parse + load config files", "invoke/program.py", "parse_core"),
    ("SSH connect + kex + auth (Connection.open)", "fabric/connection.py", "open"),
    ("  TCP connect + key exchange (Transport.start_client)", "paramiko/transport.py", "start_client"),
    ("  public-key authentication (auth_publickey)", "paramiko/transport.py", "auth_publickey"),
    ("  authentication incl. key loading (SSHClient._auth)", "paramiko/client.py", "_auth"),
    ("host key check (hostkeys.install)", "tasks/hostkeys.py", "install"),
    ("command round trip (Runner.run)", "invoke/runners.py", "run"),
    ("  waiting for the remote command (Runner.wait)", "invoke/runners.py", "wait"),
    ("fabserve: build the agent command", "tasks/remote.py", "command"),
    ("fabserve task body (verbs.operate)", "tasks/verbs.py", "operate"),
]


def cprofile_top(path: str) -> List[Dict[str, Any]]:
    stats = pstats.Stats(path, stream=io.StringIO())
    rows = []
    for label, filename, function in MILESTONES:
        best = None
        for (file, _, name), (_, _, _, cumulative, _) in stats.stats.items():
            if name == function and file.endswith(filename):
                best = max(best or 0.0, cumulative)
        if best is not None:
            rows.append({"what": label, "seconds": best})
    total = max((value[3] for value in stats.stats.values()), default=0.0)
    return [{"what": "whole process (profiled)", "seconds": total}] + rows


# ------------------------------------------------------------------ results


def spread(values: Sequence[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class Ratio:
    name: str
    label: str
    values: List[float]
    unit: str = "x"            # "x": a ratio; "s": a difference in seconds
    limit: Optional[float] = None

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.values) if self.values else None

    def verdict(self) -> Optional[str]:
        if self.limit is None:
            return None
        if self.median is None:
            return "n/a"
        return "PASS" if self.median <= self.limit else "MISS"


def pairwise(cases: Dict[str, Case], names: Sequence[str], fn: Callable[..., float]) -> List[float]:
    """fn over the wall times of `names`' samples that belong to the same repetition."""
    return pairwise_samples(cases, names, lambda *samples: fn(*(sample.seconds for sample in samples)))


def pairwise_samples(cases: Dict[str, Case], names: Sequence[str], fn: Callable[..., float]) -> List[float]:
    """fn over the samples of `names` that belong to the same repetition."""
    if not all(name in cases for name in names):
        return []
    reps = [cases[name].by_rep() for name in names]
    common = sorted(set.intersection(*(set(rep) for rep in reps)))
    return [fn(*(rep[index] for rep in reps)) for index in common]


def machine_cpu_seconds(sample: Sample) -> float:
    """CPU seconds the whole machine spent during a call, all cores."""
    return sample.busy * sample.seconds * (os.cpu_count() or 1)


def ratios(cases: Dict[str, Case], sizes: Sequence[int]) -> List[Ratio]:
    out: List[Ratio] = []

    def ratio(name: str, label: str, a: str, b: str, limit: Optional[float] = None) -> None:
        out.append(Ratio(name, label, pairwise(cases, [a, b], lambda x, y: x / y), "x", limit))

    ratio("fab_trivial/ssh_true", "Fabric floor / OpenSSH", "fab_trivial", "ssh_true")
    ratio("status/fab_trivial", "status / trivial fab task", "fabserve_status", "fab_trivial", 1.10)
    ratio("stop/fab_trivial", "stop / trivial fab task", "fabserve_stop", "fab_trivial", 1.20)
    ratio("restart/fab_trivial", "restart / trivial fab task", "fabserve_restart", "fab_trivial")
    ratio("start/fab_trivial", "start / trivial fab task", "fabserve_start", "fab_trivial")
    out.append(Ratio("start-fab_trivial-django_ready", "start - trivial - Django ready (overhead)",
                     pairwise(cases, ["fabserve_start", "fab_trivial", "django_ready"],
                              lambda s, t, d: s - t - d), "s", 0.15))
    for verb in ("status", "start", "stop", "restart"):
        ratio("{}/ssh_true".format(verb), "{} / ssh true".format(verb), "fabserve_" + verb, "ssh_true")
    ratio("ssh_agent_status/ssh_true", "agent status over OpenSSH / ssh true", "ssh_agent_status", "ssh_true")
    ratio("status/ssh_agent_status", "fab status / agent status over OpenSSH", "fabserve_status",
          "ssh_agent_status")
    for verb in ("status", "start", "stop"):
        ratio("{}/ansible_shell".format(verb), "{} / ansible -m shell".format(verb), "fabserve_" + verb,
              "ansible_shell_" + verb, 0.35)
    for verb in ("status", "start", "stop"):
        ratio("{}/ansible_raw".format(verb), "{} / ansible -m raw".format(verb), "fabserve_" + verb,
              "ansible_raw_" + verb)
        ratio("{}/fabric_diy".format(verb), "{} / plain Fabric".format(verb), "fabserve_" + verb, "fabric_" + verb)
    for size in sizes[1:]:
        for verb in ("status", "stop"):
            ratio("fanout_{}_{}/1".format(verb, size), "{} {} hosts / 1 host".format(verb, size),
                  "fanout_{}_{}".format(verb, size), "fanout_{}_1".format(verb), 1.5 if size == 10 else None)
        ratio("fanout_trivial_{}/1".format(size), "trivial fab {} hosts / 1 host (serial)".format(size),
              "fanout_trivial_{}".format(size), "fanout_trivial_1")
    if len(sizes) > 1:
        top = sizes[-1]
        for verb, what in (("status", "fabserve status"), ("stop", "fabserve stop"), ("trivial", "trivial fab (serial)")):
            out.append(Ratio("fanout_{}_per_host".format(verb), "{}: s per extra host (1->{})".format(what, top),
                             pairwise(cases, ["fanout_{}_{}".format(verb, top), "fanout_{}_1".format(verb)],
                                      lambda n, one: (n - one) / (top - 1)), "s"))
        # Every host of this bed shares the machine's cores, so a call on N hosts
        # needs at least its machine CPU (client, sshds, agents, servers) over the
        # cores in wall time, however concurrent it is: this is that CPU's growth.
        for verb in ("status", "stop"):
            out.append(Ratio("fanout_{}_cpu_per_host".format(verb),
                             "{}: machine CPU s per extra host (1->{})".format(verb, top),
                             pairwise_samples(cases, ["fanout_{}_{}".format(verb, top), "fanout_{}_1".format(verb)],
                                              lambda n, one: (machine_cpu_seconds(n) - machine_cpu_seconds(one))
                                              / (top - 1)), "s"))
    for size in sizes:
        ratio("fanout_status_{}/trivial".format(size), "status {0} hosts / trivial fab {0} hosts".format(size),
              "fanout_status_{}".format(size), "fanout_trivial_{}".format(size))
    return [item for item in out if item.values or item.limit is not None]


FABSERVE_OPS = ["fabserve_status", "fabserve_start", "fabserve_stop", "fabserve_restart"]


def command_targets(cases: Dict[str, Case], sizes: Sequence[int]) -> List[Dict[str, Any]]:
    """Exactly one SSH command per host per fabserve operation, in every sample."""
    names = FABSERVE_OPS + ["fanout_{}_{}".format(verb, size) for size in sizes for verb in ("status", "stop")]
    rows = []
    for name in names:
        case = cases.get(name)
        if not case or not case.samples:
            continue
        per_host = [sample.sessions / case.hosts for sample in case.samples if sample.rc == 0]
        rows.append({"name": "ssh_commands:" + name, "label": "SSH commands/host, " + case.label,
                     "values": per_host, "limit": "== 1",
                     "verdict": "PASS" if per_host and all(value == 1 for value in per_host) else "MISS"})
    return rows


def fmt_s(value: Optional[float]) -> str:
    return "-" if value is None else "{:.3f}".format(value)


def fmt_count(values: List[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    text = "{:g}".format(statistics.median(values))
    return text if low == high else "{} ({:g}-{:g})".format(text, low, high)


def case_row(case: Case) -> Dict[str, Any]:
    good = [sample for sample in case.samples if sample.rc == 0]
    row = {"label": case.label, "group": case.group, "hosts": case.hosts,
           "times": [sample.seconds for sample in good], **spread([sample.seconds for sample in good]),
           "reps": [rep for rep, sample in zip(case.reps, case.samples) if sample.rc == 0],
           "failures": case.failures}
    if case.name != "django_ready":
        row["ssh_commands_per_host"] = [sample.sessions / case.hosts for sample in good]
        row["ssh_connections_per_host"] = [sample.connections / case.hosts for sample in good]
        row["peak_rss_mib"] = [sample.maxrss_kib / 1024 for sample in good]  # floor: the launcher's ~9 MiB
        row["client_cpu_seconds"] = [sample.cpu_seconds for sample in good]
        row["machine_busy"] = [sample.busy for sample in good]
    return row


def render(meta: Dict[str, Any], rows: Dict[str, Dict[str, Any]], ratio_rows: List[Dict[str, Any]],
           targets: List[Dict[str, Any]], prof: Optional[Dict[str, Any]], memory: List[str]) -> str:
    lines = ["fabserve benchmark  {date}  {cpus} CPUs, {mem_gib} GiB RAM, {reps} reps (+{warmup} warm-up), "
             "{hosts} hosts, fabserve {commit}, load {loadavg_start} -> {loadavg_end}".format(**meta), ""]
    header = "{:<40} {:>8} {:>11} {:>8} {:>8} {:>6} {:>6} {:>7}".format(
        "case", "median s", "min-max s", "SSH cmds", "SSH conn", "CPU s", "busy", "RSS MiB")
    lines += [header, "-" * len(header)]
    group = None
    for name, row in rows.items():
        if row["group"] != group:
            group = row["group"]
            lines.append("[{}]".format(group))
        rss = row.get("peak_rss_mib") or []
        cpu = row.get("client_cpu_seconds") or []
        busy = row.get("machine_busy") or []
        lines.append("{:<40} {:>8} {:>11} {:>8} {:>8} {:>6} {:>6} {:>7}".format(
            "  " + row["label"], fmt_s(row["median"]),
            "-" if row["min"] is None else "{:.2f}-{:.2f}".format(row["min"], row["max"]),
            fmt_count(row.get("ssh_commands_per_host", [])), fmt_count(row.get("ssh_connections_per_host", [])),
            "{:.2f}".format(statistics.median(cpu)) if cpu else "-",
            "{:.0%}".format(statistics.median(busy)) if busy else "-",
            "{:.0f}".format(max(rss)) if rss else "-"))
    lines += ["", "SSH cmds / SSH conns: per host per call, counted in the sshd logs "
              "(\"Starting session:\" / \"Accepted publickey\").",
              "CPU s: the client's user+system time. busy: the machine's CPU use during the call, all cores",
              "(client, hosts' sshd and agents, servers: they share them). RSS: the client's peak resident",
              "memory (max over reps; 9 MiB is the launcher's floor).", ""]
    header = "{:<46} {:>8} {:>17} {:>8} {:>7}".format("ratio (pairwise within a rep)", "median", "min-max",
                                                      "target", "")
    lines += [header, "-" * len(header)]
    for row in ratio_rows:
        unit = "s" if row["unit"] == "s" else "x"
        values = row["values"]
        lines.append("{:<46} {:>8} {:>17} {:>8} {:>7}".format(
            row["label"], "-" if row["median"] is None else "{:.2f}{}".format(row["median"], unit),
            "-" if not values else "{:.2f}-{:.2f}".format(min(values), max(values)),
            "" if row["limit"] is None else "<= {:g}{}".format(row["limit"], unit), row["verdict"] or ""))
    lines += ["", "targets"]
    for target in targets:
        lines.append("  {:<5} {}: {} (target {})".format(target["verdict"], target["label"], target["value"],
                                                      target["limit"]))
    if memory:
        lines += ["", "peak memory"] + ["  " + line for line in memory]
    if prof:
        lines += ["", "client-side profile of `fab status` on one host (wall {:.3f} s unprofiled, median of 3)".format(
            prof.get("wall_seconds") or 0)]
        if prof.get("error"):
            lines.append("  " + prof["error"])
        imports = prof.get("imports") or {}
        if imports.get("total_seconds") is not None:
            lines.append("  -X importtime: {:.3f} s importing; largest imports (cumulative, self):".format(
                imports["total_seconds"]))
            lines += ["    {:>7.3f} s {:>7.3f} s  {}{}".format(item["seconds"], item["self_seconds"],
                                                             "  " * item["depth"], item["module"])
                      for item in imports["top"]]
        if prof.get("functions"):
            lines.append("  cProfile (cumulative; profiling inflates these):")
            lines += ["    {:>7.3f} s  {}".format(item["seconds"], item["what"]) for item in prof["functions"]]
    failures = [failure for row in rows.values() for failure in row["failures"]]
    if failures:
        lines += ["", "FAILED calls (left out of the numbers above):"] + ["  " + f.replace("\n", "\n    ")
                                                                         for f in failures]
    return "\n".join(lines)


def compare(old_path: Path, rows: Dict[str, Dict[str, Any]]) -> str:
    old = json.loads(old_path.read_text())
    lines = ["", "compared with {} ({})".format(old_path, old.get("meta", {}).get("date", "?")),
             "{:<44} {:>9} {:>9} {:>8}".format("case", "before s", "now s", "change")]
    for name, row in rows.items():
        before = old.get("cases", {}).get(name, {}).get("median")
        now = row["median"]
        if before is None or now is None:
            continue
        lines.append("{:<44} {:>9.3f} {:>9.3f} {:>+7.0f}%".format(row["label"], before, now,
                                                                   100 * (now - before) / before))
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[0],
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "commit": (git("rev-parse", "--short", "HEAD") or "?") + ("+dirty" if git("status", "--porcelain",
                                                                                   "tasks") else ""),
    }


IDLE_LOAD = 0.7


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_idle(limit: float) -> None:
    deadline = time.monotonic() + limit
    if limit > 0 and load1() >= IDLE_LOAD:
        log("bench: load average {:.2f}; waiting up to {:.0f} s for it to fall below {}".format(
            load1(), limit, IDLE_LOAD))
        while load1() >= IDLE_LOAD and time.monotonic() < deadline:
            time.sleep(5)
        log("bench: load average now {:.2f}; starting".format(load1()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description="fabserve's benchmark (run as root).")
    parser.add_argument("--reps", type=int, default=5, help="measured repetitions of every case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--hosts", type=int, default=20, help="hosts for the fan-out, 1-99 (default 20)")
    parser.add_argument("--skip", default="", help="comma list of: ansible, diy, fanout, profile")
    parser.add_argument("--out", type=Path, help="JSON file to write (default bench/results/<timestamp>.json)")
    parser.add_argument("--compare", type=Path, help="an earlier JSON result to compare the medians with")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="first wait up to S seconds for the 1-minute load average to fall below "
                             "{} (other jobs on the machine skew the numbers)".format(IDLE_LOAD))
    args = parser.parse_args(argv)
    args.skip = {word.strip() for word in args.skip.split(",") if word.strip()}
    unknown = args.skip - {"ansible", "diy", "fanout", "profile"}
    if unknown or args.reps < 1 or args.warmup < 0 or not 1 <= args.hosts <= 99:
        parser.error("--reps >= 1, --warmup >= 0, --hosts 1-99, --skip from ansible,diy,fanout,profile")
    if os.geteuid() != 0:
        log("bench: run as root (it creates users, network namespaces and sshd instances)")
        return 2

    interrupted = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    wait_idle(args.wait_idle)
    meta = {**machine(), "reps": args.reps, "warmup": args.warmup, "hosts": args.hosts,
            "skip": sorted(args.skip), "project": PROJECT, "port": PORT}
    sizes = fanout_sizes(args.hosts) if "fanout" not in args.skip else []
    bed = Bed(args.hosts if sizes else 1, with_ansible="ansible" not in args.skip)
    prof = None
    try:
        log("bench: setting up {} host(s)".format(bed.count))
        bed.open()
        runner = Runner(bed, args)
        runner.run()
        if "profile" not in args.skip:
            prof = profile(bed)
    except BenchError as exc:
        log("bench: {}".format(exc))
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted; cleaning up")
        return 130
    finally:
        bed.close()

    meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[0]
    cases = runner.cases
    rows = {name: case_row(case) for name, case in cases.items()}
    ratio_objs = ratios(cases, sizes)
    ratio_rows = [{"name": r.name, "label": r.label, "unit": r.unit, "limit": r.limit, "values": r.values,
                   **spread(r.values), "verdict": r.verdict()} for r in ratio_objs]
    targets = [{"name": r["name"], "label": r["label"], "limit": "<= {:g}{}".format(r["limit"], r["unit"]),
                "value": "-" if r["median"] is None else "{:.2f}{}".format(r["median"], r["unit"]),
                "verdict": r["verdict"]} for r in ratio_rows if r["limit"] is not None]
    if 10 not in sizes:
        targets.append({"name": "fanout_10/1", "label": "10 hosts / 1 host", "limit": "<= 1.5x",
                        "value": "-", "verdict": "n/a (fewer than 10 hosts)"})
    for row in command_targets(cases, sizes):
        targets.append({"name": row["name"], "label": row["label"], "limit": row["limit"],
                        "value": fmt_count(row["values"]), "verdict": row["verdict"]})
    memory = []
    for size in sorted({1, max(sizes)} if sizes else set()):
        for verb in ("status", "stop"):
            row = rows.get("fanout_{}_{}".format(verb, size))
            if row and row.get("peak_rss_mib"):
                memory.append("fab {} on {} host(s): {:.1f} MiB peak RSS (max over reps)".format(
                    verb, size, max(row["peak_rss_mib"])))
    result = {"meta": meta, "cases": rows, "ratios": ratio_rows, "targets": targets,
              "memory": memory, "profile": prof}
    text = render(meta, rows, ratio_rows, targets, prof, memory)
    if args.compare:
        text += "\n" + compare(args.compare, rows)
    print(text, flush=True)
    out = args.out or RESULTS / "{}.json".format(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\nwritten: {}".format(out))
    failed = [failure for row in rows.values() for failure in row["failures"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
