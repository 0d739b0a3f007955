"""The benchmark's test bed: one network namespace, sshd and unprivileged account
per host, and the ssh_config, known_hosts and Ansible configuration that reach them.

Everything the bed starts is undone by Bed.close(), or by the next run, under a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bed import net, procs, sshd, state, users, venv, wait_for
from bed.hosts import NETNS_DIR
from bed.run import run_checked

from bench.layout import BENCH, BENCH_VENV, PORT, PROJECT, REPO, STATE, SYSTEM_PYTHON
from bench.shell import BenchError, log

USER_PREFIX = "fabserve-bench"  # + two digits: one account per host
ALIAS_PREFIX = "bench"          # ssh_config aliases bench01, bench02, ...
NETNS_PREFIX = "fsbench-"       # network namespaces fsbench-01, ...
VETH_PREFIX = "fsb"             # our end of each veth pair: fsb01, ...
SUBNET = "10.222"               # host i: 10.222.i.2 in its namespace, 10.222.i.1 on our side
                                # (the tests' namespaced hosts use 10.213: both can run at once)
TARGET_REQUIREMENTS = [REPO / "example" / "requirements.txt"]
KILL_GRACE = 5
SSH_PORT = 22


def unchecked(*argv: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A cleanup command whose failure changes nothing (what it ends may be gone already)."""
    return subprocess.run([str(arg) for arg in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          **kwargs)


def target_venv() -> Path:
    """Django for the hosts, built from Debian's python where every bench user can read it."""
    path = venv.venv_path(STATE, TARGET_REQUIREMENTS)
    if not venv.is_complete(path):
        log(f"bench: building the hosts' Django venv {path}")
    return venv.build_venv(path, TARGET_REQUIREMENTS, SYSTEM_PYTHON)


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

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    def listening(self, port: int = PORT) -> bool:
        """Whether anything listens on `port` in this host's namespace, read from
        /proc/<sshd>/net/tcp*, i.e. without a connection of our own."""
        assert self.sshd is not None
        return net.port_listening(port, proc_root=f"/proc/{self.sshd.pid}")


def bench_venv() -> Path:
    """A venv with Ansible: .venv when `bin/setup --test` put the same pin there
    (requirements-test.txt; tests/test_collection_unit.py keeps the two equal),
    else bench/.venv, reinstalled only when bench/requirements.txt changes."""
    if (REPO / ".venv" / "bin" / "ansible").exists():
        return REPO / ".venv"
    requirements = BENCH / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = BENCH_VENV / ".bench-requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and (BENCH_VENV / "bin" / "ansible").exists():
        return BENCH_VENV
    log(f"bench: installing Ansible into {BENCH_VENV}")
    if not (BENCH_VENV / "bin" / "python").exists():
        shutil.rmtree(BENCH_VENV, ignore_errors=True)
        run_checked([sys.executable, "-m", "venv", BENCH_VENV])
    run_checked([BENCH_VENV / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "-r", requirements])
    stamp.write_text(digest + "\n")
    return BENCH_VENV


def stale_namespaces() -> list[str]:
    listed = run_checked([sshd.IP, "netns", "list"]).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(NETNS_PREFIX)]


def remove_namespace(name: str) -> None:
    """Kill what still runs inside one of our namespaces (by PID), then delete it."""
    procs.kill_pids([int(word) for word in unchecked(sshd.IP, "netns", "pids", name).stdout.split()])
    unchecked(sshd.IP, "netns", "del", name)


def ssh_config(hosts: Sequence[Host], key: Path, known_hosts: Path) -> str:
    """An alias per host, and the options every client shares: our key only, no prompts,
    host keys checked against the bed's own known_hosts."""
    aliases = [f"Host {host.alias}\n    HostName {host.addr}\n    User {host.user}" for host in hosts]
    return "\n".join(aliases) + "\n" + "\n".join([
        f"Host {ALIAS_PREFIX}*",
        f"    Port {SSH_PORT}",
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
        lock = STATE / ".lock"
        self.stack.enter_context(state.locked(lock, on_wait=lambda: log(
            f"bench: another benchmark run holds {lock}; waiting")))
        # Only one run holds the lock, so whatever a crashed run left is ours to undo.
        for name in stale_namespaces():
            remove_namespace(name)
        for stale in STATE.glob("run-*"):
            shutil.rmtree(stale, ignore_errors=True)
        taken = run_checked([sshd.IP, "-o", "addr"]).stdout + run_checked([sshd.IP, "-o", "route"]).stdout
        if f" {SUBNET}." in taken:
            raise BenchError(f"{SUBNET}.0.0/16 is in use on this machine (ip addr / ip route); "
                             "the benchmark needs it for its hosts")
        self.stack.callback(self.close_hosts)

        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=STATE))  # 0700: private keys
        self.stack.callback(shutil.rmtree, self.work, True)
        if self.with_ansible:
            self.ansible_bin = bench_venv() / "bin" / "ansible"
        django = target_venv()
        key = sshd.keygen(self.work / "client_ed25519", "fabserve-bench")
        pubkey = key.with_suffix(".pub").read_text().strip()

        accounts = [users.ensure_user(f"{USER_PREFIX}{i:02d}") for i in range(1, self.count + 1)]
        procs.kill_uid_processes([user.pw_uid for user in accounts], KILL_GRACE)
        known_hosts = []
        for i, user in enumerate(accounts, 1):
            host = Host(index=i, alias=f"{ALIAS_PREFIX}{i:02d}", user=user.pw_name, uid=user.pw_uid,
                        gid=user.pw_gid, home=Path(user.pw_dir), netns=f"{NETNS_PREFIX}{i:02d}",
                        veth=f"{VETH_PREFIX}{i:02d}", addr=f"{SUBNET}.{i}.2",
                        host_key=self.work / f"host{i:02d}_ed25519",
                        sshd_config=self.work / f"sshd{i:02d}.conf",
                        log=self.work / f"sshd{i:02d}.log")
            self.prepare_account(host, user, pubkey, django)
            sshd.keygen(host.host_key, host.alias)
            public = " ".join(host.host_key.with_suffix(".pub").read_text().split()[:2])
            known_hosts.append(f"{host.addr} {public}")
            self.hosts.append(host)
        (self.work / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        self.ssh_config = self.work / "ssh_config"
        self.ssh_config.write_text(ssh_config(self.hosts, key, self.work / "known_hosts"))
        for host in self.hosts:
            self.start_host(host)
        for host in self.hosts:
            sshd.wait_for_sshd(host.sshd, host.addr, SSH_PORT, host.log)
        if self.with_ansible:
            self.write_ansible_config()
        return self

    def prepare_account(self, host: Host, user: pwd.struct_passwd, pubkey: str, django: Path) -> None:
        """authorized_keys, a fresh ~/site (the example project, .venv -> the Django venv),
        no fabserve state left from a previous run."""
        users.write_authorized_keys(user, [pubkey])
        for path in (host.home / ".local" / "state" / "fabserve", host.project, host.home / ".ansible"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(REPO / "example", host.project,
                        ignore=shutil.ignore_patterns(".venv", "__pycache__", "db.sqlite3"))
        (host.project / ".venv").symlink_to(django)
        run_checked(["chown", "-R", f"{host.uid}:{host.gid}", host.project])

    def start_host(self, host: Host) -> None:
        self.namespaces.append(host.netns)
        for command in (["netns", "add", host.netns],
                        ["link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns],
                        ["addr", "add", f"{SUBNET}.{host.index}.1/30", "dev", host.veth],
                        ["link", "set", host.veth, "up"],
                        ["-n", host.netns, "addr", "add", f"{host.addr}/30", "dev", "eth0"],
                        ["-n", host.netns, "link", "set", "eth0", "up"],
                        ["-n", host.netns, "link", "set", "lo", "up"]):
            run_checked([sshd.IP, *command])
        sshd.write_sshd_config(host.sshd_config, sshd.sshd_config(
            listen=host.addr, port=SSH_PORT, host_key=host.host_key, users=[host.user]))
        host.sshd = sshd.start_sshd(host.sshd_config, host.log, host.netns)

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
        procs.kill_uid_processes([host.uid for host in self.hosts], KILL_GRACE)
        self.end_ansible_masters()
        for host in self.hosts:
            if host.sshd is not None:
                procs.terminate(host.sshd)
        for name in self.namespaces:
            remove_namespace(name)

    def end_ansible_masters(self) -> None:
        """Ansible's ControlPersist masters outlive it: ask each to exit."""
        control = self.work / "cp"
        if not control.is_dir():
            return
        for sock in control.iterdir():
            unchecked("ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench", timeout=10)

    def close(self) -> None:
        self.stack.close()

    # -- helpers for cases
    def reset(self, hosts: Sequence[Host]) -> None:
        """After a failed case: end whatever the accounts run and wait until port 8000 is free."""
        procs.kill_uid_processes([host.uid for host in hosts], KILL_GRACE)
        wait_for(lambda: not any(host.listening() for host in hosts), timeout=10)

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
