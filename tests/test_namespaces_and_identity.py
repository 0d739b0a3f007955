"""What counts as this instance's server (docs/safety.md): a process in the
agent's own PID and network namespaces (its mount namespace may be a session's
own, as pam_namespace makes it), running a Python interpreter
(by its executable, not its argv[0]) on this project's manage.py as resolved by
the kernel, and, through the pidfile, carrying the token fabserve recorded.
Look-alikes are neither reported nor signalled. Real sshd, real Django projects,
the unprivileged test user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bed.fab import FabRunner
from bed.target import POLY_PARENT
from helpers import alive, free_port, group_members, http_status, kill_pids, port_listening, wait_for, where

USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def started(run, project, port):
    result = run("start", *where(project, port))
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.json["changed"] is True
    return result.json


def stat_fields(pid: int) -> list[str]:
    text = open(f"/proc/{pid}/stat").read()
    return text[text.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(stat_fields(int(name))[1]) == pid:
                    found.append(int(name))
            except (OSError, ValueError):
                continue
    return found


def listening_in_netns_of(pid: int, port: int) -> bool:
    """Whether something listens on `port` in the network namespace of `pid`."""
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def write_state(as_user, data: dict, pid: int, **recorded) -> None:
    """A pidfile naming `pid` and metadata with its real start time and boot
    id plus `recorded`, written as the test user, in the instance's state dir."""
    meta = {"pid": pid, "starttime": int(stat_fields(pid)[19]),
            "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip(), **recorded}
    meta_path = os.path.join(data["state_dir"], "server.json")
    script = 'printf "%s\\n" "$1" > "$2" && printf "%s" "$3" > "$4"'
    as_user(["sh", "-c", script, "sh", str(pid), data["pidfile"], json.dumps(meta), meta_path], check=True)


def assert_untouched(result, survivors: list[int]) -> None:
    assert result.returncode == 0 and result.json["changed"] is False, result.stdout + result.stderr
    assert all(alive(pid) for pid in survivors), survivors


# ------------------------------------------------------------------ namespaces


@pytest.fixture
def spawn_in_namespaces(target, tmp_path_factory) -> Iterator[Callable[..., list[int]]]:
    """Start, as root, `manage.py runserver` of a project in new PID, network
    and mount namespaces, dropped to the test user with its cwd in the project:
    what `docker run --user $(id -u) -v $PWD:$PWD -w $PWD` gives. Returns the
    server's PIDs: the reloader parent (PID 1 inside, leading its own session
    and group, as fabserve's servers do) and its serving child. `token` goes
    into its environment as FABSERVE_TOKEN."""
    user = pwd.getpwnam(target.user)
    tools = {name: shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") for name in ("unshare", "setpriv", "ip")}
    missing = [name for name, path in tools.items() if path is None]
    assert not missing, f"missing {missing} (util-linux, iproute2)"
    env = {"HOME": str(target.home), "USER": target.user, "LOGNAME": target.user, "PATH": USER_PATH,
           "LANG": "C.UTF-8"}
    launched: list[subprocess.Popen[bytes]] = []

    def spawn(project: Path, port: int, token: str | None = None) -> list[int]:
        inner = ('"$1" link set lo up && cd "$2" && exec "$3" --reuid="$4" --regid="$5" --init-groups '
                 'setsid "$6" manage.py runserver "$7"')
        # The twin's output is kept for the failure message: without it a slow or
        # failed start inside the namespaces is only a timeout.
        output = tmp_path_factory.mktemp("twin") / "output"
        with open(output, "wb") as sink:
            proc = subprocess.Popen(
                [tools["unshare"], "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
                 "sh", "-c", inner, "sh", tools["ip"], str(project), tools["setpriv"], str(user.pw_uid),
                 str(user.pw_gid), str(project / ".venv" / "bin" / "python"), f"127.0.0.1:{port}"],
                env=env | ({"FABSERVE_TOKEN": token} if token else {}), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        launched.append(proc)
        parents: list[int] = []
        assert wait_for(lambda: parents.extend(children(proc.pid)) or parents, timeout=10), output.read_text()
        reloader = parents[0]
        # Every process inside shares the namespace's socket table, so the reloader's
        # view answers for whichever serving child it runs by then.
        assert wait_for(lambda: listening_in_netns_of(reloader, port), timeout=60), output.read_text()
        servers = children(reloader)
        assert len(servers) == 1, (servers, output.read_text())
        return [reloader, servers[0]]

    yield spawn
    for proc in launched:
        # --kill-child: unshare's end kills the namespace's PID 1, and with it everything inside.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_twin_in_other_namespaces_is_neither_reported_nor_signalled(run, site, target, spawn_in_namespaces):
    port = free_port()
    twin = spawn_in_namespaces(site, port)
    assert all(os.stat(f"/proc/{pid}").st_uid == target.uid for pid in twin)
    assert not port_listening(port)  # it listens in its own network namespace only
    status = run("status", *where(site, port))
    assert status.returncode == 3 and status.json["state"] == "stopped", status.stdout
    assert status.json["pids"] == []
    assert_untouched(run("stop", *where(site, port)), twin)

    ours = started(run, site, port)  # the port is free in our namespace
    assert not set(ours["pids"]) & set(twin) and http_status(ours["url"]) == 200
    status = run("status", *where(site, port))
    assert status.returncode == 0 and sorted(status.json["pids"]) == sorted(ours["pids"])
    os.unlink(ours["pidfile"])  # stop searches /proc, where both are
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and sorted(stop.json["pids"]) == sorted(ours["pids"]), stop.stdout
    assert not any(alive(pid) for pid in ours["pids"]) and not port_listening(port)
    assert all(alive(pid) for pid in twin) and listening_in_netns_of(twin[1], port)


def test_a_pidfile_naming_a_twin_in_other_namespaces_is_stale(run, site, as_user, spawn_in_namespaces):
    """The twin leads its group and carries the recorded token: only its
    namespaces tell it from the server fabserve started."""
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    token = "0123456789abcdef0123456789abcdef"
    twin = spawn_in_namespaces(site, port, token=token)
    leader = twin[0]
    assert int(stat_fields(leader)[2]) == leader
    assert f"FABSERVE_TOKEN={token}".encode() in open(f"/proc/{leader}/environ", "rb").read().split(b"\0")
    write_state(as_user, data, leader, token=token)
    status = run("status", *where(site, port))
    assert status.returncode == 3 and status.json["state"] == "stopped", status.stdout
    assert f"stale pidfile: PID {leader} runs in another PID or network namespace" in status.json["message"]
    assert_untouched(run("stop", *where(site, port)), twin)
    assert not os.path.exists(data["pidfile"]) and listening_in_netns_of(twin[1], port)


# ------------------------------------------------------------------- identity


def test_a_program_renamed_python3_is_not_a_server(run, site, spawn_as_user):
    port = free_port()
    runner = spawn_as_user(["bash", "-c", f"exec -a python3 tail -f manage.py runserver {port}"], cwd=site)
    decoys: list[int] = []
    assert wait_for(lambda: decoys.extend(children(runner.pid)) or decoys)
    decoy = decoys[0]
    assert wait_for(lambda: open(f"/proc/{decoy}/cmdline", "rb").read().startswith(b"python3\0-f\0manage.py\0"))
    assert os.path.basename(os.readlink(f"/proc/{decoy}/exe")) == "tail"
    status = run("status", *where(site, port))
    assert status.returncode == 3 and status.json["state"] == "stopped", status.stdout
    assert_untouched(run("stop", *where(site, port)), [decoy])
    ours = started(run, site, port)
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and sorted(stop.json["pids"]) == sorted(ours["pids"])
    assert alive(decoy) and not port_listening(port)


def test_a_script_reached_through_a_symlink_belongs_to_the_project_it_resolves_to(run, make_project, as_user,
                                                                                   spawn_as_user):
    """`sub/../site/manage.py` reads as this project's, but `sub` links into
    another project's tree, so the kernel runs the other project's manage.py."""
    mine = make_project("site")
    theirs = make_project("x/site")
    workdir = mine.parent
    as_user(["ln", "-s", str(theirs), str(workdir / "sub")], check=True)
    assert os.path.normpath(workdir / "sub/../site/manage.py") == str(mine / "manage.py")
    assert os.path.realpath(workdir / "sub/../site/manage.py") == str(theirs / "manage.py")
    port = free_port()
    runner = spawn_as_user([mine / ".venv" / "bin" / "python", "sub/../site/manage.py", "runserver",
                            f"127.0.0.1:{port}"], cwd=workdir)
    assert wait_for(lambda: port_listening(port), timeout=30)
    server = [pid for pid in group_members(runner.pid) if pid != runner.pid]
    status = run("status", *where(mine, port))
    assert status.returncode == 3 and status.json["state"] == "stopped", status.stdout
    assert_untouched(run("stop", *where(mine, port)), server)
    assert port_listening(port)
    theirs_status = run("status", *where(theirs, port))
    assert theirs_status.returncode == 0 and "not started by fabserve" in theirs_status.json["message"]
    assert sorted(theirs_status.json["pids"]) == sorted(server)
    stop = run("stop", *where(theirs, port))
    assert stop.returncode == 0 and sorted(stop.json["pids"]) == sorted(server)
    assert wait_for(lambda: not port_listening(port))


@pytest.fixture
def own_group_leader(spawn_as_user, target) -> Iterator[int]:
    """A process of the test user that leads its own process group, has no
    FABSERVE_TOKEN and is no server: the pidfile check passes everything else."""
    runner = spawn_as_user([target.python, "-c", "import os, time; os.setpgid(0, 0); time.sleep(600)"])
    found: list[int] = []
    assert wait_for(lambda: found.extend(pid for pid in children(runner.pid)
                                         if int(stat_fields(pid)[2]) == pid) or found)
    yield found[0]
    kill_pids(found[:1])  # its own group: the spawner's cleanup does not reach it


@pytest.mark.parametrize("recorded,reason", [
    ({}, "the metadata records no token for PID {pid}"),
    ({"token": "0123456789abcdef0123456789abcdef"}, "PID {pid} now belongs to another process"),
])
def test_a_pidfile_is_trusted_only_with_the_recorded_token(run, site, as_user, own_group_leader, recorded, reason):
    """server.json rewritten without its token, or naming one the process does
    not carry, while the pidfile, start time and boot id all fit."""
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    pid = own_group_leader
    write_state(as_user, data, pid, **recorded)
    status = run("status", *where(site, port))
    assert status.returncode == 3 and status.json["state"] == "stopped", status.stdout
    assert f"stale pidfile: {reason.format(pid=pid)}" in status.json["message"]
    assert_untouched(run("stop", *where(site, port)), [pid])
    assert not os.path.exists(data["pidfile"])


# -------------------------------------------------------------- pam_namespace


def mount_namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def tmp_source(pid: int) -> str | None:
    """What is mounted on /tmp for `pid` (mountinfo's root field), if anything is."""
    for line in open(f"/proc/{pid}/mountinfo"):
        fields = line.split()
        if fields[4] == "/tmp":
            return fields[3]
    return None


def test_a_pam_namespace_host_finds_the_server_an_earlier_session_started(pam_target, product, site):
    """Under pam_namespace every SSH session runs in a mount namespace of its own
    (with a /tmp of the user's own): status, list and stop come in sessions other
    than the start's, and must still find the server it started."""
    fab = FabRunner(pam_target, product)
    port = free_port()
    start = fab("start", *where(site, port), "--json")
    assert start.returncode == 0, start.stdout + start.stderr
    leader = start.json["pid"]
    assert mount_namespace(leader) != mount_namespace("self")
    assert tmp_source(leader) == f"{POLY_PARENT}/{pam_target.user}"  # polyinstantiated
    later = subprocess.run(["ssh", "-F", str(pam_target.ssh_config), pam_target.alias, "readlink /proc/self/ns/mnt"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert later.returncode == 0 and later.stdout.strip() != mount_namespace(leader), later
    status = fab("status", *where(site, port), "--json")
    assert status.returncode == 0 and status.json["state"] == "running", status.stdout + status.stderr
    assert sorted(status.json["pids"]) == sorted(start.json["pids"])
    listed = fab("list", "--json")
    rows = listed.json if isinstance(listed.json, list) else [listed.json]  # one line (a fresh account), or more
    assert listed.returncode == 0 and port in [row["port"] for row in rows if row["state"] == "running"], \
        listed.stdout
    stop = fab("stop", *where(site, port), "--json")
    assert stop.returncode == 0 and stop.json["changed"] is True, stop.stdout + stop.stderr
    assert not any(alive(pid) for pid in start.json["pids"]) and not port_listening(port)
    assert os.listdir(POLY_PARENT / pam_target.user) == []  # the user's /tmp: fabserve kept nothing there
