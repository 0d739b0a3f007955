"""The benchmark's test bed: one network namespace, sshd and unprivileged account
per host, and the ssh_config, known_hosts and Ansible configuration that reach them.

Everything the bed starts is undone by Bed.close(), or by the next run, under a lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.layout import BENCH, BENCH_VENV, PORT, PROJECT, REPO, STATE, SYSTEM_PYTHON
from bench.shell import BenchError, log, sh

SSHD = Path("/usr/sbin/sshd")
USER_PREFIX = "fabserve-bench"  # + two digits: one account per host
ALIAS_PREFIX = "bench"          # ssh_config aliases bench01, bench02, ...
NETNS_PREFIX = "fsbench-"       # network namespaces fsbench-01, ...
VETH_PREFIX = "fsb"             # our end of each veth pair: fsb01, ...
SUBNET = "10.222"               # host i: 10.222.i.2 in its namespace, 10.222.i.1 on our side
                                # (tests/fleet_bed.py uses 10.213: both can run at once)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the forked child: a benchmark killed outright must not leave sshd behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def uids_processes(uids: Sequence[int]) -> list[int]:
    """PIDs of live processes whose real uid is one of `uids`."""
    wanted = {str(uid) for uid in uids}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
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
    venv = STATE / f"venv-{hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]}"
    if (venv / ".complete").exists():
        return venv
    log(f"bench: building the hosts' Django venv {venv}")
    if venv.exists():
        shutil.rmtree(venv)
    sh(SYSTEM_PYTHON, "-m", "venv", venv)
    sh(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", requirements)
    sh("chmod", "-R", "a+rX", venv)
    (venv / ".complete").write_text("ok\n")
    return venv


def accepts(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


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
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def project(self) -> Path:
        return self.home / PROJECT[2:]

    def listening(self, port: int = PORT) -> bool:
        """Whether anything listens on `port` in this host's namespace, read from
        /proc/<sshd>/net/tcp*, i.e. without a connection of our own."""
        assert self.sshd is not None
        wanted = f":{port:04X}"
        for name in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{self.sshd.pid}/net/{name}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":
                    return True
        return False


def sshd_config(host: Host) -> str:
    return "\n".join([
        f"ListenAddress {host.addr}",
        "Port 22",
        f"HostKey {host.host_key}",
        "PidFile none",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        f"AllowUsers {host.user}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "StrictModes yes",
        "UseDNS no",
        "LogLevel VERBOSE",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp internal-sftp",
    ]) + "\n"


def bench_venv() -> Path:
    """bench/.venv with Ansible; reinstalled only when bench/requirements.txt changes."""
    requirements = BENCH / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = BENCH_VENV / ".bench-requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and (BENCH_VENV / "bin" / "ansible").exists():
        return BENCH_VENV
    log(f"bench: installing Ansible into {BENCH_VENV}")
    if not (BENCH_VENV / "bin" / "python").exists():
        shutil.rmtree(BENCH_VENV, ignore_errors=True)
        sh(sys.executable, "-m", "venv", BENCH_VENV)
    sh(BENCH_VENV / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
       "-r", requirements)
    stamp.write_text(digest + "\n")
    return BENCH_VENV


def stale_namespaces() -> list[str]:
    listed = sh("ip", "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(NETNS_PREFIX)]


def remove_namespace(name: str) -> None:
    """Kill what still runs inside one of our namespaces (by PID), then delete it."""
    pids = [int(word) for word in sh("ip", "netns", "pids", name, check=False).stdout.split()]
    kill_pids(pids)
    sh("ip", "netns", "del", name, check=False)


def ssh_config(hosts: Sequence[Host], key: Path, known_hosts: Path) -> str:
    """An alias per host, and the options every client shares: our key only, no prompts,
    host keys checked against the bed's own known_hosts."""
    aliases = [f"Host {host.alias}\n    HostName {host.addr}\n    User {host.user}" for host in hosts]
    return "\n".join(aliases) + "\n" + "\n".join([
        f"Host {ALIAS_PREFIX}*",
        "    Port 22",
        f"    IdentityFile {key}",
        "    IdentitiesOnly yes",
        "    BatchMode yes",
        "    StrictHostKeyChecking yes",
        f"    UserKnownHostsFile {known_hosts}",
        "    GlobalKnownHostsFile /dev/null",
        "    LogLevel ERROR",
    ]) + "\n"


class Bed:
    """The test bed: hosts, keys, configs; everything it starts is undone by close()."""

    def __init__(self, count: int, with_ansible: bool) -> None:
        self.count = count
        self.with_ansible = with_ansible
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.stack = contextlib.ExitStack()
        self.work = Path()
        self.ssh_config = Path()
        self.ansible_env: dict[str, str] = {}
        self.ansible_bin = Path()

    # -- setup
    def open(self) -> Bed:
        STATE.mkdir(parents=True, exist_ok=True)
        STATE.chmod(0o755)
        lock = self.stack.enter_context(open(STATE / ".lock", "a"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"bench: another benchmark run holds {STATE / '.lock'}; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        # Only one run holds the lock, so whatever a crashed run left is ours to undo.
        for name in stale_namespaces():
            remove_namespace(name)
        for stale in STATE.glob("run-*"):
            shutil.rmtree(stale, ignore_errors=True)
        taken = sh("ip", "-o", "addr").stdout + sh("ip", "-o", "route").stdout
        if f" {SUBNET}." in taken:
            raise BenchError(f"{SUBNET}.0.0/16 is in use on this machine (ip addr / ip route); "
                             "the benchmark needs it for its hosts")
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

        users = [ensure_user(f"{USER_PREFIX}{i:02d}") for i in range(1, self.count + 1)]
        kill_users_processes([user.pw_uid for user in users])
        known_hosts = []
        for i, user in enumerate(users, 1):
            host = Host(index=i, alias=f"{ALIAS_PREFIX}{i:02d}", user=user.pw_name, uid=user.pw_uid,
                        gid=user.pw_gid, home=Path(user.pw_dir), netns=f"{NETNS_PREFIX}{i:02d}",
                        veth=f"{VETH_PREFIX}{i:02d}", addr=f"{SUBNET}.{i}.2",
                        host_key=self.work / f"host{i:02d}_ed25519",
                        sshd_config=self.work / f"sshd{i:02d}.conf",
                        log=self.work / f"sshd{i:02d}.log")
            self.prepare_account(host, pubkey, venv)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.alias, "-f", host.host_key)
            public = " ".join(host.host_key.with_suffix(".pub").read_text().split()[:2])
            known_hosts.append(f"{host.addr} {public}")
            self.hosts.append(host)
        (self.work / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        self.ssh_config = self.work / "ssh_config"
        self.ssh_config.write_text(ssh_config(self.hosts, key, self.work / "known_hosts"))
        for host in self.hosts:
            self.start_host(host)
        for host in self.hosts:
            deadline = time.monotonic() + 10
            while not accepts(host.addr, 22):
                if host.sshd.poll() is not None or time.monotonic() > deadline:
                    tail = host.log.read_text(errors="replace")[-2000:]
                    raise BenchError(f"sshd of {host.alias} did not come up:\n{tail}")
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
        sh("chown", "-R", f"{host.uid}:{host.gid}", ssh_dir, host.project)
        (ssh_dir / "authorized_keys").chmod(0o600)
        ssh_dir.chmod(0o700)

    def start_host(self, host: Host) -> None:
        sh("ip", "netns", "add", host.netns)
        self.namespaces.append(host.netns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        sh("ip", "addr", "add", f"{SUBNET}.{host.index}.1/30", "dev", host.veth)
        sh("ip", "link", "set", host.veth, "up")
        sh("ip", "-n", host.netns, "addr", "add", f"{host.addr}/30", "dev", "eth0")
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
                             f"ansible_ssh_common_args=-F {self.ssh_config}\n")
        config = self.work / "ansible.cfg"
        # Ansible's defaults otherwise (no pipelining, ControlPersist=60s), as users get it;
        # the interpreter is named so no discovery step is counted against Ansible.
        config.write_text("\n".join([
            "[defaults]",
            f"inventory = {inventory}",
            "interpreter_python = /usr/bin/python3",
            "host_key_checking = True",
            "forks = 20",
            "nocows = True",
            "retry_files_enabled = False",
            "deprecation_warnings = False",
            f"local_tmp = {self.work / 'ansible-local'}",
            "[ssh_connection]",
            f"control_path_dir = {self.work / 'cp'}",
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
            sh("ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench", check=False, timeout=10)

    def close(self) -> None:
        self.stack.close()

    # -- helpers for cases
    def reset(self, hosts: Sequence[Host]) -> None:
        """After a failed case: end whatever the accounts run and wait until port 8000 is free."""
        kill_users_processes([host.uid for host in hosts])
        deadline = time.monotonic() + 10
        while any(host.listening() for host in hosts) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_marks(self, hosts: Sequence[Host]) -> list[int]:
        return [host.log.stat().st_size for host in hosts]

    def log_counts(self, hosts: Sequence[Host], marks: Sequence[int]) -> tuple[int, int]:
        """("Starting session:", "Accepted publickey") lines the hosts' sshds logged since `marks`."""
        sessions = connections = 0
        for host, mark in zip(hosts, marks):
            with host.log.open("rb") as handle:
                handle.seek(mark)
                text = handle.read().decode("utf-8", errors="replace")
            sessions += text.count("Starting session:")
            connections += text.count("Accepted publickey")
        return sessions, connections
