"""The host test bed itself: BED_SIZE real, isolated hosts, each with its own sshd,
network, process table, /tmp and ~/.local/state; one can be made unreachable; and a
bed leaves nothing behind. Real OpenSSH client and server, real Django runserver."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from bed import procs
from bed.hosts import BED_SIZE, NamespacedHost, host_bed
from helpers import Target, alive, bed_outcome, wait_for

RUNSERVER_PORT = 8000


def ssh_ok(host: NamespacedHost, *command: str) -> str:
    result = host.ssh(*command)
    assert result.returncode == 0, f"{host.name}: {command} exited {result.returncode}: {result.stderr}"
    return result.stdout


def group_of(host: NamespacedHost, pgid: int) -> list[str]:
    """PIDs (inside host) of the live members of process group pgid."""
    listing = ssh_ok(host, "ps", "-e", "-o", "pgid=,pid=,stat=")
    return [pid for group, pid, stat in (line.split() for line in listing.splitlines())
            if int(group) == pgid and not stat.startswith("Z")]


def test_bed_has_bed_size_distinct_hosts(bed_hosts) -> None:
    assert len(bed_hosts) == BED_SIZE == 5
    assert [host.name for host in bed_hosts] == [f"host{i}" for i in range(1, BED_SIZE + 1)]
    for field in ("address", "netns", "tini_pid", "sshd_pid", "host_key"):
        values = [getattr(host, field) for host in bed_hosts]
        assert len(set(values)) == BED_SIZE, (field, values)
    for host in bed_hosts:
        assert Path("/run/netns", host.netns).exists()
        assert os.readlink(f"/proc/{host.tini_pid}/exe") == "/usr/bin/tini"
        assert host.host_key.startswith("ssh-ed25519 ")
    assert bed_hosts.setup_seconds is not None


def test_ssh_reaches_each_host_as_the_test_user_and_hostname_is_its_name(bed_hosts, target: Target) -> None:
    for host in bed_hosts:
        # Exactly the client invocation the brief names, spelled out.
        result = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-i", str(target.key), f"{target.user}@{host.address}",
             "id -un; hostname"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"{host.name}: {result.stderr}"
        assert result.stdout.split() == [target.user, host.name]
        assert f"Accepted publickey for {target.user}" in host.sshd_log.read_text()


def test_host_key_is_the_one_each_sshd_presents(bed_hosts, tmp_path: Path) -> None:
    for host in bed_hosts:
        known_hosts = tmp_path / f"known_hosts-{host.name}"
        known_hosts.write_text(host.known_hosts_line() + "\n")
        result = subprocess.run(
            ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
             "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-i", str(host.key), f"{host.user}@{host.address}", "true"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"{host.name}: {result.stderr}"


def test_each_host_has_its_own_process_table_with_tini_as_pid_1(bed_hosts) -> None:
    root_pids = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
    for host in bed_hosts:
        # comm of every process in the host's /proc, as the test user over ssh.
        listing = ssh_ok(host, "sh", "-c", 'for p in /proc/[0-9]*; do echo "${p#/proc/} $(cat $p/comm)"; done')
        processes = dict(line.split(" ", 1) for line in listing.splitlines() if line.strip())
        assert processes["1"] == "tini", processes
        # tini, its sleep, sshd (listener and session) and this shell: a handful.
        assert len(processes) < 15, processes
        assert len(processes) < len(root_pids)
        assert "pytest" not in " ".join(processes.values())


def test_each_host_has_its_own_tmp_and_state_directory(bed_hosts, target: Target) -> None:
    first, second = bed_hosts[0], bed_hosts[1]
    marker = f"host-marker-{uuid.uuid4().hex}"
    ssh_ok(first, "sh", "-c", f"echo {first.name} > /tmp/{marker} && echo {first.name} > ~/.local/state/{marker}")

    assert ssh_ok(first, "cat", f"/tmp/{marker}").strip() == first.name
    assert ssh_ok(first, "sh", "-c", f"cat ~/.local/state/{marker}").strip() == first.name
    for other in bed_hosts[1:]:
        result = other.ssh("sh", "-c", f"test -e /tmp/{marker} || test -e ~/.local/state/{marker}")
        assert result.returncode == 1, f"{other.name} sees {first.name}'s files: {result.stderr}"
    assert not Path("/tmp", marker).exists()
    assert not (target.home / ".local" / "state" / marker).exists()

    # Each state directory is a private tmpfs owned by the test user, mode 0700.
    for host in (first, second):
        owner_mode = ssh_ok(host, "sh", "-c", "stat -c '%U %a' ~/.local/state; stat -f -c %T ~/.local/state /tmp")
        assert owner_mode.split() == [target.user, "700", "tmpfs", "tmpfs"], owner_mode
    # Nothing mounted in a host shows up in the machine's mount table.
    assert "host-state-" not in Path("/proc/self/mountinfo").read_text()
    assert "host-tmp-" not in Path("/proc/self/mountinfo").read_text()


def test_each_host_reads_its_own_machine_id_and_the_machines_file_is_unchanged(bed_hosts) -> None:
    machine_file = Path("/etc/machine-id")
    before = (machine_file.read_bytes(), machine_file.stat().st_ino, machine_file.stat().st_mtime_ns)
    ids = [host.machine_id for host in bed_hosts]
    assert len(set(ids)) == BED_SIZE, ids
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids), ids
    assert machine_file.read_text().strip() not in ids
    for host in bed_hosts:
        # Read over ssh as the test user, as the agent reads it.
        assert ssh_ok(host, "cat", "/etc/machine-id") == f"{host.machine_id}\n"
        # Read-only inside the host, even for root.
        refused = host.run(["sh", "-c", "echo 0 > /etc/machine-id"])
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
        assert ssh_ok(host, "cat", "/etc/machine-id") == f"{host.machine_id}\n"
    after = (machine_file.read_bytes(), machine_file.stat().st_ino, machine_file.stat().st_mtime_ns)
    assert after == before
    assert "/etc/machine-id" not in Path("/proc/self/mountinfo").read_text()


def test_same_django_project_runs_on_two_hosts_on_their_own_loopback(
    bed_hosts, make_project, target: Target
) -> None:
    project = make_project("site")
    first, second, bystander = bed_hosts[0], bed_hosts[1], bed_hosts[2]
    start = (f"cd {project} && setsid {target.python} manage.py runserver 127.0.0.1:{RUNSERVER_PORT} "
             f"</dev/null >/tmp/runserver.log 2>&1 & echo $!")
    pids: dict[str, int] = {}
    try:
        for host in (first, second):
            pids[host.name] = int(ssh_ok(host, "sh", "-c", start).strip())
        for host in (first, second):
            assert wait_for(lambda: host.http_status(RUNSERVER_PORT) == 200, timeout=60), \
                f"{host.name}: {host.run(['cat', '/tmp/runserver.log']).stdout}"
        # Two servers on the same 127.0.0.1:8000 at once: each in its own namespace.
        assert bystander.http_status(RUNSERVER_PORT) is None
        assert not bystander.connects(RUNSERVER_PORT)
        for host in (first, second):
            # The server runs inside the host: its PID there leads its process group.
            ps = ssh_ok(host, "ps", "-o", "pid=,pgid=,args=", "-p", str(pids[host.name]))
            assert f"manage.py runserver 127.0.0.1:{RUNSERVER_PORT}" in ps
            assert ps.split()[:2] == [str(pids[host.name])] * 2

        # Stop each by PID (its process group: autoreloader parent and child); the
        # other keeps serving.
        for host, survivor in ((first, second), (second, None)):
            group = pids[host.name]
            assert len(group_of(host, group)) == 2  # autoreloader parent and child
            ssh_ok(host, "kill", "-TERM", "--", f"-{group}")
            assert wait_for(lambda: not group_of(host, group), timeout=20), group_of(host, group)
            del pids[host.name]
            assert not host.connects(RUNSERVER_PORT)
            if survivor:
                assert survivor.http_status(RUNSERVER_PORT) == 200
    finally:
        for host in (first, second):
            if host.name in pids:
                host.run(["kill", "-KILL", "--", f"-{pids[host.name]}"])


def test_run_and_http_status_reach_inside_the_host(bed_hosts) -> None:
    host = bed_hosts[0]
    result = host.as_user(["sh", "-c", "id -un; hostname; pwd"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [host.user, host.name, str(host.home)]
    assert host.run(["cat", "/proc/1/comm"], check=True).stdout.strip() == "tini"
    # The host's sshd answers inside (on its own address), not on its loopback.
    assert host.connects(22, address=host.address)
    assert not host.connects(22)


def test_stop_sshd_makes_only_that_host_unreachable(bed_hosts) -> None:
    victim, others = bed_hosts[-1], bed_hosts[:-1]
    old_pid = victim.sshd_pid
    assert old_pid is not None and alive(old_pid)
    victim.stop_sshd()
    try:
        assert not alive(old_pid)
        with pytest.raises(ConnectionRefusedError):
            with socket.create_connection((victim.address, 22), timeout=5):
                pass
        failed = victim.ssh("true")
        assert failed.returncode == 255 and "refused" in failed.stderr, failed.stderr
        for host in others:
            assert ssh_ok(host, "hostname").strip() == host.name
        # The host itself is still there, with its other processes.
        assert alive(victim.tini_pid)
        assert victim.run(["cat", "/proc/1/comm"]).stdout.strip() == "tini"
    finally:
        new_pid = victim.start_sshd()
    assert new_pid != old_pid
    assert ssh_ok(victim, "hostname").strip() == victim.name


def test_a_bed_leaves_nothing_behind(bed_hosts, target: Target) -> None:
    with bed_outcome(), host_bed(target, count=2) as bed:
        hosts, workdir = bed.hosts, bed.workdir
        assert workdir.is_dir()
        # A second bed in the same session, beside the session's: nothing shared.
        for field in ("address", "gateway", "netns", "veth"):
            assert not {getattr(h, field) for h in hosts} & {getattr(h, field) for h in bed_hosts}, field
        recorded = [(host.netns, host.veth, host.tini_pid, host.sshd_pid, host.address) for host in hosts]
        # A process inside (an orphan, reparented to tini) must die with its host.
        orphans = []
        for host in hosts:
            host.as_user(["sh", "-c", "(sleep 600 >/dev/null 2>&1 &)"], check=True)
            orphan: list[int] = []
            assert wait_for(lambda: orphan.extend(
                pid for pid in procs.children(host.tini_pid) if procs.cmdline(pid) == "sleep 600 "
            ) or orphan, timeout=5)
            orphans += orphan
        for host in hosts:
            assert ssh_ok(host, "hostname").strip() == host.name
    for netns, veth, tini_pid, sshd_pid, address in recorded:
        assert not Path("/run/netns", netns).exists()
        assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not Path("/sys/class/net", veth).exists()
        assert not alive(tini_pid)
        assert not alive(sshd_pid)
        assert address not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert not any(alive(pid) for pid in orphans)
    assert not workdir.exists()
