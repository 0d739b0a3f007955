"""Real, isolated test hosts on this machine, for tests that address many hosts at once.

Each host is a Linux network namespace joined to the root namespace by a veth
pair (root side 10.213.N.1/30, host side 10.213.N.2/30), in which
`unshare --pid --mount --uts --fork --mount-proc` runs Debian's tini as PID 1.
tini runs a small sh script that sets the hostname, mounts a private tmpfs on
/tmp and one owned by the test user (mode 0700) on the test user's
~/.local/state (where fabserve keeps its state: /etc and /home are the
machine's, so without it every host would share one state directory), binds
the host's own machine id (a file in the bed's workdir) read-only over
/etc/machine-id, starts the host's own sshd on 10.213.N.2:22 and then sleeps. sshd is started as an
orphan so that it is tini's child, not the script's: stopping it (to make the
host unreachable) leaves the host and its other processes running, and tini
reaps it.

Logins are the same as for the local target (bed.target): its user with its
key (authorized_keys lives in the shared home).

Use `host_bed(target, count)` (a context manager yielding the HostBed, whose
.hosts are the hosts) or the session fixture `bed_hosts` in conftest.py, which
builds BED_SIZE hosts. Teardown SIGKILLs each host's tini by the PID this module
started (through a pidfd, so a reused PID can never be hit; the kernel then
kills the whole PID namespace), waits for it, deletes the network namespace
and any veth left over. Nothing else is ever signalled.

Names include the creating process's PID and a per-process bed number, so two
test sessions (and two beds in one session) never collide; subnets are
allocated under a machine-wide lock after checking `ip -o addr` and `ip -o route`.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket as socketlib
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import BedError, BedUnavailable, procs, wait_for
from .net import NetnsHTTPConnection, accepts, socket_in_netns
from .run import run_checked, run_in_group
from .sshd import IP, SSH, SSHD, keygen, log_tail, sshd_config, write_sshd_config
from .state import STATE_DIR, locked
from .target import Target
from .users import RUNUSER, USER_PATH, runuser_argv, user_env

BED_SIZE = 5

UNSHARE = Path("/usr/bin/unshare")
NSENTER = Path("/usr/bin/nsenter")
TINI = Path("/usr/bin/tini")
SSH_PORT = 22

# 10.213.N.0/30 for N in 1..254: host N's root side is .1, the host itself .2.
SUBNET_PREFIX = "10.213"
SUBNET_SLOTS = range(1, 255)
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "fabserve-host-"
# veth names are limited to 15 characters: fv<pid hex>b<bed hex>{r,n}<index hex>.
_VETH_RE = re.compile(r"^fv([0-9a-f]+)b[0-9a-f]+[rn][0-9a-f]+$")
_NETNS_RE = re.compile(rf"^{NETNS_PREFIX}(\d+)-\d+-\d+$")
LOCK_FILE = STATE_DIR / ".hosts.lock"
# Per-bed files (sshd configs, host keys, logs), private to root, removed on teardown.
WORKDIR_PREFIX = "hosts-"
_WORKDIR_RE = re.compile(rf"^{WORKDIR_PREFIX}(\d+)-\d+$")

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "ConnectTimeout=10",
    "-o", "LogLevel=ERROR",
)

_bed_numbers = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(IP), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise BedError(f"ip {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _hosts_lock() -> contextlib.AbstractContextManager[None]:
    """Machine-wide: subnet allocation and stale cleanup, across test sessions."""
    return locked(LOCK_FILE)


# --- what one host is ---------------------------------------------------------------


@dataclass
class NamespacedHost:
    """One isolated host: its own network, PID, mount and UTS namespaces, its own sshd."""

    name: str  # "host1" ...; also the host's hostname
    index: int  # 1-based position in the bed
    address: str  # the host's own address (10.213.N.2); sshd listens on it, port 22
    gateway: str  # the root namespace's end of the veth pair (10.213.N.1)
    netns: str  # `ip netns` name
    veth: str  # root-side veth interface
    tini_pid: int  # tini (PID 1 inside the host), as seen from the root namespace
    sshd_pid: int | None  # the host's listening sshd, root-namespace PID; None while stopped
    host_key: str  # public host key line, "ssh-ed25519 AAAA... comment"
    host_key_path: Path  # the private host key file
    sshd_config: Path
    sshd_log: Path  # sshd's output (-e) and the startup script's
    user: str  # the account to log in as (the target's)
    key: Path  # client private key that logs in as user
    home: Path  # user's home (shared with the machine)
    machine_id: str  # 32 hex digits, what /etc/machine-id holds inside this host
    port: int = SSH_PORT
    _launcher: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _tini_pidfd: int | None = field(default=None, repr=False, compare=False)

    # -- identity --------------------------------------------------------------

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def state_dir(self) -> Path:
        """The test user's ~/.local/state inside this host (a private tmpfs)."""
        return self.home / ".local" / "state"

    def known_hosts_line(self) -> str:
        """This host's key as a known_hosts line for its address."""
        keytype, blob = self.host_key.split()[:2]
        return f"{self.address} {keytype} {blob}"

    # -- ssh -------------------------------------------------------------------

    def ssh_argv(self, *command: str, options: Sequence[str] = ()) -> list[str]:
        """OpenSSH client argv that runs command (joined with shlex) on this host as user."""
        return [
            str(SSH), *SSH_OPTIONS, "-i", str(self.key), "-p", str(self.port), *options,
            f"{self.user}@{self.address}", "--", shlex.join(command),
        ]

    def ssh(self, *command: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(*command),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def accepts_ssh(self, timeout: float = 1) -> bool:
        """True if something accepts TCP connections on address:22 (from the root namespace)."""
        return accepts(self.address, self.port, timeout)

    # -- commands inside the host ----------------------------------------------

    def argv(self, args: Sequence[str | os.PathLike[str]], *, user: str | None = None,
             cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """argv that runs args inside this host (all its namespaces), as root or user."""
        workdir = cwd if cwd is not None else (self.home if user else "/")
        enter = [str(NSENTER), f"--target={self.tini_pid}", "--net", "--pid", "--mount", "--uts",
                 f"--wd={workdir}", "--"]
        return [*enter, *(runuser_argv(user, args) if user else [str(arg) for arg in args])]

    def _env(self, user: str | None, env: dict[str, str] | None) -> dict[str, str]:
        if user:
            return user_env(user, pwd.getpwnam(user).pw_dir, env)
        return {"HOME": "/root", "PATH": f"{USER_PATH}:/usr/sbin:/sbin", "LANG": "C.UTF-8"} | (env or {})

    def run(self, args: Sequence[str | os.PathLike[str]], *, user: str | None = None,
            cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
            timeout: float = 60, input: str | None = None, check: bool = False,
            ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the host, as root (default) or user.

        The environment is fixed (HOME, USER, LOGNAME, PATH, LANG) plus env. A
        timeout kills nsenter's whole process group.
        """
        return run_in_group(self.argv(args, user=user, cwd=cwd), timeout=timeout, input=input,
                            check=check, env=self._env(user, env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def as_user(self, args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """run() as the bed's user."""
        return self.run(args, user=self.user, **kwargs)

    # -- talking to servers inside the host --------------------------------------

    def socket(self) -> socketlib.socket:
        """An unconnected TCP socket inside this host's network namespace."""
        return socket_in_netns(self.netns_path)

    def connects(self, port: int, address: str = "127.0.0.1", timeout: float = 2) -> bool:
        """True if address:port accepts a TCP connection, seen from inside the host."""
        sock = self.socket()
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def http_status(self, port: int, path: str = "/", address: str = "127.0.0.1",
                    timeout: float = 5) -> int | None:
        """Status of a GET http://address:port/path made from inside the host; None if
        nothing answered HTTP. No proxy is ever involved."""
        connection = NetnsHTTPConnection(self.netns_path, address, port, timeout)
        try:
            connection.request("GET", path, headers={"Host": f"{address}:{port}"})
            return connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    # -- the host's sshd ------------------------------------------------------------

    def find_sshd(self) -> int | None:
        """Root-namespace PID of this host's listening sshd, found among tini's children
        (session processes retitle themselves and never show the config path)."""
        for pid in procs.children(self.tini_pid):
            if procs.exe(pid) == str(SSHD) and str(self.sshd_config) in procs.cmdline(pid):
                return pid
        return None

    def _is_our_sshd(self, pid: int) -> bool:
        return (procs.alive(pid) and procs.parent(pid) == self.tini_pid and procs.exe(pid) == str(SSHD)
                and str(self.sshd_config) in procs.cmdline(pid))

    def stop_sshd(self, timeout: float = 10) -> None:
        """Stop this host's sshd listener (only that process, by its PID): port 22 on
        the host's address then refuses connections; the host itself keeps running."""
        pid = self.sshd_pid
        if pid is None or not self._is_our_sshd(pid):
            raise BedError(f"{self.name}: sshd is not running (recorded pid {pid})")
        os.kill(pid, signal.SIGTERM)
        if not wait_for(lambda: not procs.alive(pid) and not self.accepts_ssh(), timeout=timeout):
            raise BedError(f"{self.name}: sshd (pid {pid}) did not stop within {timeout} s")
        self.sshd_pid = None

    def start_sshd(self, timeout: float = 10) -> int:
        """(Re)start this host's sshd, as an orphan that tini adopts; return its PID."""
        if self.sshd_pid is not None and self._is_our_sshd(self.sshd_pid):
            return self.sshd_pid
        log = shlex.quote(str(self.sshd_log))
        command = f"({shlex.quote(str(SSHD))} -D -e -f {shlex.quote(str(self.sshd_config))} " \
                  f"</dev/null >>{log} 2>&1 &)"
        result = self.run(["/bin/sh", "-c", command], timeout=timeout)
        if result.returncode != 0:
            raise BedError(f"{self.name}: starting sshd failed: {result.stderr.strip()}")
        if not wait_for(lambda: self.find_sshd() is not None and self.accepts_ssh(), timeout=timeout):
            raise BedError(f"{self.name}: sshd did not come back on {self.address}:{self.port}:\n"
                           f"{log_tail(self.sshd_log, 30)}")
        pid = self.find_sshd()
        if pid is None:
            raise BedError(f"{self.name}: sshd came back but exited at once:\n{log_tail(self.sshd_log, 30)}")
        self.sshd_pid = pid
        return pid


# --- the startup script inside a host ---------------------------------------------

_HOST_SCRIPT = r"""
set -eu
exec </dev/null >>"$LOG" 2>&1
echo "$NAME: starting as PID $$"
printf '%s\n' "$NAME" > /proc/sys/kernel/hostname
mount -t tmpfs -o mode=1777,size=256m "host-tmp-$NAME" /tmp
mount -t tmpfs -o "mode=0700,uid=$USER_UID,gid=$USER_GID,size=64m" "host-state-$NAME" "$STATE"
# Only in this host's mount namespace (unshare makes it private): the machine's file stays as it is.
mount --bind -o ro "$MACHINE_ID" /etc/machine-id
# An orphan, so that tini is its parent: the host outlives a stopped sshd.
("$SSHD" -D -e -f "$CONFIG" &)
exec sleep infinity
"""


# --- the bed -----------------------------------------------------------------------


@dataclass
class _Plan:
    index: int
    slot: int
    name: str
    netns: str
    veth: str
    peer: str
    workdir: Path
    machine_id: str

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}.{self.slot}.1"

    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.slot}.2"


def busy_networks() -> list[ipaddress.IPv4Network]:
    """Networks of every IPv4 address and route in the root namespace."""
    busy = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            busy.append(ipaddress.ip_network(fields[fields.index("inet") + 1], strict=False))
    for line in _ip("-o", "-4", "route", "show", "table", "all").stdout.splitlines():
        fields = line.split()
        destination = fields[1] if fields[0] in ("local", "broadcast", "unicast", "blackhole",
                                                  "unreachable", "prohibit", "throw") else fields[0]
        if destination == "default":
            continue
        with contextlib.suppress(ValueError):
            busy.append(ipaddress.ip_network(destination, strict=False))
    return busy


def free_slots(count: int, busy: Sequence[ipaddress.IPv4Network]) -> list[int]:
    """count third octets N whose 10.213.N.0/24 touches none of the busy networks.
    A network wider than /16 (a 10.0.0.0/8 route, say) does not make a slot busy:
    our /30s are more specific and win."""
    narrow = [net for net in busy if net.prefixlen >= 16]
    slots = []
    for slot in SUBNET_SLOTS:
        candidate = ipaddress.ip_network(f"{SUBNET_PREFIX}.{slot}.0/24")
        if not any(candidate.overlaps(net) for net in narrow):
            slots.append(slot)
            if len(slots) == count:
                return slots
    raise BedError(f"only {len(slots)} free /24 slots in {SUBNET_PREFIX}.0.0/16, need {count}")


def _prune_stale() -> None:
    """Delete network namespaces, veths and work directories left by processes that no longer run."""
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            match = _NETNS_RE.match(entry.name)
            if match and not procs.alive(int(match[1])):
                _ip("netns", "del", entry.name, check=False)
    for entry in STATE_DIR.glob(f"{WORKDIR_PREFIX}*"):
        match = _WORKDIR_RE.match(entry.name)
        if match and not procs.alive(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        match = _VETH_RE.match(name)
        if match and not procs.alive(int(match[1], 16)):
            _ip("link", "del", name, check=False)


def prerequisites_missing() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("root (network namespaces, mounts, sshd)")
    problems += [f"{tool} (run bin/setup --test)"
                 for tool in (IP, UNSHARE, NSENTER, TINI, SSHD, SSH, RUNUSER) if not tool.exists()]
    return problems


class Hosts(list[NamespacedHost]):
    """The hosts of one bed, in order (host1 first), plus how long building took."""

    setup_seconds: float | None = None


class HostBed:
    """Builds and tears down `count` NamespacedHosts. Build it from the thread that will
    outlive it (the hosts are set to die with that thread, e.g. pytest's main thread)."""

    def __init__(self, target: Target, count: int = BED_SIZE) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"bed size must be 1..200, not {count}")
        self.target = target
        self.count = count
        self.bed = next(_bed_numbers)
        # Not under /tmp: every host mounts its own tmpfs there, hiding the machine's.
        self.workdir = STATE_DIR / f"{WORKDIR_PREFIX}{os.getpid()}-{self.bed}"
        self.hosts = Hosts()
        self.setup_seconds: float | None = None
        self._plans: list[_Plan] = []
        self._launchers: list[subprocess.Popen[bytes]] = []
        self._pidfds: list[int] = []
        self._torn_down = False

    # -- build ------------------------------------------------------------------

    def build(self) -> Hosts:
        problems = prerequisites_missing()
        if problems:
            raise BedUnavailable("the host test bed needs " + ", ".join(problems))
        started = time.monotonic()
        user = pwd.getpwnam(self.target.user)
        # The mount point of the per-host tmpfs; made in the shared home, as the user.
        run_checked(runuser_argv(self.target.user, ["mkdir", "-p", "--", self.target.home / ".local" / "state"]))
        with _hosts_lock():
            _prune_stale()
            self.workdir.mkdir(mode=0o700)
            slots = free_slots(self.count, busy_networks())
            pid = os.getpid()
            for index, slot in enumerate(slots, start=1):
                name = f"host{index}"
                workdir = self.workdir / name
                workdir.mkdir(parents=True, exist_ok=True)
                self._plans.append(_Plan(
                    index=index, slot=slot, name=name,
                    netns=f"{NETNS_PREFIX}{pid}-{self.bed}-{index}",
                    veth=f"fv{pid:x}b{self.bed:x}r{index:x}",
                    peer=f"fv{pid:x}b{self.bed:x}n{index:x}",
                    workdir=workdir, machine_id=uuid.uuid4().hex,
                ))
            # Networks are made while holding the lock, so that a concurrent session
            # sees these addresses in `ip -o addr` before it picks its own slots.
            with ThreadPoolExecutor(max_workers=min(8, self.count)) as pool:
                list(pool.map(self._make_network, self._plans))
        with ThreadPoolExecutor(max_workers=min(8, self.count)) as pool:
            keys = list(pool.map(self._write_sshd_files, self._plans))
        # Launched from this thread: PDEATHSIG is tied to the thread that forks.
        for plan in self._plans:
            self._launchers.append(self._launch(plan, user))
        for plan, launcher, key in zip(self._plans, self._launchers, keys):
            self.hosts.append(self._await(plan, launcher, key))
        self.setup_seconds = self.hosts.setup_seconds = time.monotonic() - started
        return self.hosts

    def _make_network(self, plan: _Plan) -> None:
        _ip("netns", "add", plan.netns)
        _ip("link", "add", plan.veth, "type", "veth", "peer", "name", plan.peer, "netns", plan.netns)
        _ip("addr", "add", f"{plan.gateway}/30", "dev", plan.veth)
        _ip("link", "set", plan.veth, "up")
        _ip("-n", plan.netns, "addr", "add", f"{plan.address}/30", "dev", plan.peer)
        _ip("-n", plan.netns, "link", "set", plan.peer, "up")
        _ip("-n", plan.netns, "link", "set", "lo", "up")

    def _write_sshd_files(self, plan: _Plan) -> Path:
        host_key = plan.workdir / "ssh_host_ed25519_key"
        for stale in (host_key, host_key.with_suffix(".pub")):
            stale.unlink(missing_ok=True)
        keygen(host_key, f"fabserve-host {plan.name}")
        write_sshd_config(plan.workdir / "sshd_config", sshd_config(
            listen=plan.address, port=SSH_PORT, host_key=host_key, users=[self.target.user]))
        return host_key

    def _launch(self, plan: _Plan, user: pwd.struct_passwd) -> subprocess.Popen[bytes]:
        log = plan.workdir / "host.log"
        log.write_bytes(b"")
        machine_id = plan.workdir / "machine-id"
        machine_id.write_text(f"{plan.machine_id}\n")
        # Read by the test user through the bind mount; the workdir itself stays root's.
        machine_id.chmod(0o444)
        env = {
            "PATH": f"{USER_PATH}:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "NAME": plan.name,
            "LOG": str(log),
            "STATE": str(Path(user.pw_dir) / ".local" / "state"),
            "USER_UID": str(user.pw_uid),
            "USER_GID": str(user.pw_gid),
            "SSHD": str(SSHD),
            "CONFIG": str(plan.workdir / "sshd_config"),
            "MACHINE_ID": str(machine_id),
        }
        # `ip netns exec` execs unshare in place, so the launcher's PID is unshare's;
        # unshare forks tini (PID 1 inside) and SIGKILLs it if unshare dies, and the
        # launcher gets SIGKILL if the thread that started it goes away.
        with log.open("ab") as err:
            return subprocess.Popen(
                [str(IP), "netns", "exec", plan.netns,
                 str(UNSHARE), "--pid", "--mount", "--uts", "--fork", "--mount-proc", "--kill-child=SIGKILL",
                 str(TINI), "--", "/bin/sh", "-c", _HOST_SCRIPT],
                env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, preexec_fn=procs.die_with_parent(signal.SIGKILL),
            )

    def _await(self, plan: _Plan, launcher: subprocess.Popen[bytes], host_key: Path) -> NamespacedHost:
        log = plan.workdir / "host.log"
        tini: list[int] = []

        def tini_started() -> bool:
            if launcher.poll() is not None:
                return True
            tini[:] = [pid for pid in procs.children(launcher.pid) if procs.exe(pid) == str(TINI)]
            return bool(tini)

        wait_for(tini_started, timeout=10)
        if not tini:
            status = launcher.poll()
            what = "did not start" if status is None else f"exited during startup (exit {status})"
            raise BedError(f"{plan.name}: the host {what}:\n{log_tail(log, 30)}")
        tini_pid = tini[0]
        pidfd = os.pidfd_open(tini_pid)
        self._pidfds.append(pidfd)
        host = NamespacedHost(
            name=plan.name, index=plan.index, address=plan.address, gateway=plan.gateway,
            netns=plan.netns, veth=plan.veth, tini_pid=tini_pid, sshd_pid=None,
            host_key=host_key.with_suffix(".pub").read_text().strip(), host_key_path=host_key,
            sshd_config=plan.workdir / "sshd_config", sshd_log=log, user=self.target.user,
            key=self.target.key, home=self.target.home, machine_id=plan.machine_id,
            _launcher=launcher, _tini_pidfd=pidfd,
        )
        if not wait_for(lambda: launcher.poll() is not None or (host.find_sshd() and host.accepts_ssh()),
                        timeout=15) or launcher.poll() is not None:
            raise BedError(f"{plan.name}: sshd did not come up on {plan.address}:{SSH_PORT} "
                           f"(launcher exit {launcher.poll()}):\n{log_tail(log, 30)}")
        host.sshd_pid = host.find_sshd()
        return host

    # -- teardown -------------------------------------------------------------------

    def teardown(self) -> None:
        """Kill each host's tini (by pidfd), wait, delete namespaces and leftover veths.
        Idempotent; raises BedError listing anything that could not be cleaned up."""
        if self._torn_down:
            return
        self._torn_down = True
        problems = []
        for pidfd in self._pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        for launcher in self._launchers:
            # A launcher whose tini was never found (failed build): it is ours to end.
            if launcher.poll() is None and not any(h._launcher is launcher for h in self.hosts):
                launcher.kill()
            try:
                launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"launcher {launcher.pid} did not exit")
        for pidfd in self._pidfds:
            # A pidfd polls readable once its process has exited.
            if not wait_for(lambda: _pidfd_exited(pidfd), timeout=10):
                problems.append("a tini did not exit")
            os.close(pidfd)
        self._pidfds.clear()
        for plan in self._plans:
            if (NETNS_DIR / plan.netns).exists():
                result = _ip("netns", "del", plan.netns, check=False)
                if result.returncode != 0:
                    problems.append(f"ip netns del {plan.netns}: {result.stderr.strip()}")
            # The pair normally goes with the namespace; the kernel may take a moment.
            if not wait_for(lambda: not _link_exists(plan.veth), timeout=5):
                _ip("link", "del", plan.veth, check=False)
                if _link_exists(plan.veth):
                    problems.append(f"veth {plan.veth} is left")
        if problems:
            raise BedError("host bed teardown: " + "; ".join(problems))
        shutil.rmtree(self.workdir, ignore_errors=True)


def _pidfd_exited(pidfd: int) -> bool:
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@contextlib.contextmanager
def host_bed(target: Target, count: int = BED_SIZE) -> Iterator[HostBed]:
    """Build count hosts, yield the bed, tear it down. A build failure is cleaned up and
    raised as BedUnavailable: this machine cannot host the bed."""
    bed = HostBed(target, count)
    try:
        try:
            bed.build()
        except Exception as error:
            with contextlib.suppress(BedError):
                bed.teardown()
            if isinstance(error, BedUnavailable):
                raise
            raise BedUnavailable(f"cannot build the host test bed: {error}") from error
        yield bed
    finally:
        bed.teardown()
