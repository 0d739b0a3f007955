"""Many hosts at once: inventory groups, per-host settings, concurrency, one host
down, JSON lines, previews exposed through each host's own Caddy. Against the
isolated test hosts of tests/bed/hosts.py, each with its own sshd, process table
and state, all running one project on port 8000."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from bed.caddy import (BY_HAND, HAND_HOST, HAND_TEXT, HOST_SITE_PORT, SITE_TEXT, add_route_by_hand,
                       allow_exposed_names, route_ids, running_caddy, through)
from bed.package import checkout_command
from bed.procs import children, cmdline
from bed.state import ensure_dir
from bed.wheels import PROBE, probe_wheel
from helpers import REPO, alive, wait_for

PORT = 8000


@pytest.fixture
def machines(bed_hosts, target, make_project, tmp_path):
    """The hosts with an inventory and an ssh_config for it, and a `fab` that uses both."""
    site, other = make_project("site"), make_project("other")
    known_hosts = tmp_path / "known_hosts"
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host 10.*\n    StrictHostKeyChecking accept-new\n"
                          f"    UserKnownHostsFile {known_hosts}\n    IdentitiesOnly yes\n")
    hosts = {host.name: {"ansible_host": host.address, "ansible_user": host.user,
                         "ansible_ssh_private_key_file": str(host.key)} for host in bed_hosts}
    names = [host.name for host in bed_hosts]
    inventory = {"all": {
        "vars": {"project": str(site), "port": PORT, "stop_timeout": 5},
        "children": {
            "web": {"hosts": {name: hosts[name] for name in names[:3]}},
            "workers": {"hosts": {name: hosts[name] for name in names[3:]},
                        "vars": {"project": str(other)}},
        },
    }}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))

    class Machines:
        def __init__(self):
            self.hosts = {host.name: host for host in bed_hosts}
            self.site, self.other, self.known_hosts = site, other, known_hosts
            self.ssh_config = ssh_config

        def command(self, *args):
            return [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(ssh_config), *args]

        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
               "FABRIC_FABSERVE_INVENTORY": str(path)}

        def fab(self, *args, timeout=120):
            return subprocess.run(self.command(*args), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)

        def popen(self, *args, stdout):
            return subprocess.Popen(self.command(*args), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True)

    machines = Machines()
    yield machines
    machines.fab("-H", "all", "stop", "--json")  # whatever a failed test left running


def json_lines(result):
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {line["host"]: line for line in lines}


def test_start_status_stop_on_every_host_at_once(machines):
    started = machines.fab("-H", "all", "start", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    results = json_lines(started)
    assert sorted(results) == sorted(machines.hosts)
    assert all(result["state"] == "running" and result["changed"] for result in results.values())
    for name, host in machines.hosts.items():
        assert host.http_status(PORT) == 200, name
    status = machines.fab("-H", "all", "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines[:-1]) == sorted(machines.hosts)
    assert all(f"running on http://127.0.0.1:{PORT}/" in line for line in lines[:-1])
    assert lines[-1] == f"{len(machines.hosts)} running"
    stopped = machines.fab("-H", "all", "stop", "--json")
    assert stopped.returncode == 0 and all(r["changed"] for r in json_lines(stopped).values())
    for host in machines.hosts.values():
        assert host.http_status(PORT) is None
    assert machines.fab("-H", "all", "status").returncode == 3


def test_per_host_settings_reach_the_right_host(machines):
    result = machines.fab("-H", "web,workers", "start", "--json")
    assert result.returncode == 0, result.stderr
    results = json_lines(result)
    names = sorted(machines.hosts)
    for name in names[:3]:
        assert results[name]["project"] == str(machines.site)
    for name in names[3:]:
        assert results[name]["project"] == str(machines.other)
    # The server's working directory on each host is the project its vars name.
    for name, host in machines.hosts.items():
        cwd = host.run(["readlink", f"/proc/{results[name]['pid']}/cwd"], check=True).stdout.strip()
        assert cwd == results[name]["project"]
    # A flag beats every inventory var.
    moved = machines.fab("-H", names[0], "status", "--port", "8001", "--json")
    assert moved.returncode == 3 and json_lines(moved)[names[0]]["port"] == 8001


def test_one_host_down_leaves_the_others_working_and_is_named(machines):
    down = machines.hosts[sorted(machines.hosts)[2]]
    down.stop_sshd()
    try:
        began = time.monotonic()
        result = machines.fab("-H", "all", "start")
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert lines[-1] == f"4 ok, 1 failed: {down.name} (cannot connect: Connection refused)"
        assert result.stderr.strip() == f"{down.name}: start failed: cannot connect: Connection refused"
        for name, host in machines.hosts.items():
            assert host.http_status(PORT) == (None if host is down else 200), name
        status = machines.fab("-H", "all", "status", "--json")
        assert status.returncode == 1
        assert json_lines(status)[down.name]["error"] == "cannot connect: Connection refused"
        print(f"start with one host down took {time.monotonic() - began:.2f}s")
    finally:
        down.start_sshd()
    assert machines.fab("-H", "all", "stop").returncode == 0


def test_status_exit_3_when_all_answer_but_one_is_not_running(machines):
    names = sorted(machines.hosts)
    assert machines.fab("-H", "web", "start").returncode == 0
    result = machines.fab("-H", "web,workers", "status")
    assert result.returncode == 3
    assert result.stdout.splitlines()[-1] == f"3 running, 2 not running: {names[3]}, {names[4]}"


def test_json_output_is_only_one_object_per_host(machines):
    result = machines.fab("-H", f"workers,{sorted(machines.hosts)[0]},workers", "status", "--json")
    assert result.returncode == 3
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(o["host"] for o in objects) == sorted([*sorted(machines.hosts)[3:], sorted(machines.hosts)[0]])
    assert result.stderr == ""


def test_unknown_group_is_a_usage_error_before_connecting(machines):
    before = {name: host.sshd_log.read_text().count("Connection from") for name, host in machines.hosts.items()}
    result = machines.fab("-H", "web,wbe", "status")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("unknown host or group 'wbe' in ")
    assert result.stdout == ""
    after = {name: host.sshd_log.read_text().count("Connection from") for name, host in machines.hosts.items()}
    assert after == before


def test_new_host_keys_are_recorded_and_verified(machines):
    assert machines.fab("-H", "all", "status").returncode == 3
    recorded = machines.known_hosts.read_text().splitlines()
    assert len(recorded) == len(machines.hosts)
    assert machines.fab("-H", "all", "status").returncode == 3
    assert machines.known_hosts.read_text().splitlines() == recorded


def test_logs_follow_prefixes_each_hosts_lines(machines, tmp_path):
    names = sorted(machines.hosts)[:2]
    assert machines.fab("-H", ",".join(names), "start").returncode == 0
    out = tmp_path / "follow.out"
    with open(out, "w") as sink:
        follower = machines.popen("-H", ",".join(names), "logs", "--follow", "--lines", "5", stdout=sink)
        try:
            for name in names:  # a request on each host shows up, under that host's name
                assert machines.hosts[name].http_status(PORT, f"/probe-{name}") == 404
            assert wait_for(lambda: all(f"{name}: " in line and f"/probe-{name}" in line
                                        for name in names
                                        for line in [next((l for l in out.read_text().splitlines()
                                                           if f"/probe-{name}" in l), "")]), timeout=30), \
                out.read_text()
        finally:
            os.killpg(follower.pid, signal.SIGTERM)
            follower.wait(timeout=10)


def test_logs_follow_ends_when_its_reader_closes_while_every_host_is_quiet(machines):
    names = sorted(machines.hosts)[:2]
    assert machines.fab("-H", ",".join(names), "start").returncode == 0
    follower = machines.popen("-H", ",".join(names), "logs", "--follow", "--lines", "1", stdout=subprocess.PIPE)
    try:
        assert follower.stdout.readline()  # one host's last line; then the reader goes, and no line comes
        follower.stdout.close()
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGTERM)
            follower.wait(timeout=10)


def test_list_across_hosts_one_table_each_and_json_lines_with_their_host(machines):
    names = sorted(machines.hosts)
    assert machines.fab("-H", "web", "start").returncode == 0  # the first three hosts
    result = machines.fab("-H", "all", "list", "--json")
    assert result.returncode == 0 and result.stderr == ""
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # one line per server
    # The hosts keep earlier tests' stopped instances (their logs): this test's project is fresh.
    ours = [row for row in rows if row["project"] == str(machines.site)]
    assert sorted(row["host"] for row in ours) == names[:3]
    for row in ours:
        assert (row["port"], row["state"], row["managed"]) == (PORT, "running", True), row
        assert row["url"] == f"http://127.0.0.1:{PORT}/" and len(row["pids"]) == 2
    assert not [row for row in rows if row["state"] == "running" and row["host"] in names[3:]]
    table = machines.fab("-H", "all", "list")
    assert table.returncode == 0, table.stderr
    blocks = {}
    for line in table.stdout.splitlines()[:-1]:
        if line.startswith("  "):
            blocks[host].append(line)
        else:
            host = line.split(":")[0]
            blocks[host] = [line]
    assert sorted(blocks) == names
    for name in names[:3]:
        assert blocks[name][1].split()[:3] == ["PROJECT", "PORT", "STATE"]
        assert [str(machines.site), str(PORT), "running", "yes"] in [line.split()[:4] for line in blocks[name][2:]]
    for name in names[3:]:
        assert blocks[name][0] == f"{name}: no servers" or str(machines.site) not in "\n".join(blocks[name])
    assert table.stdout.splitlines()[-1] == f"{len(names)} ok"


def test_manage_on_several_hosts_prefixes_each_hosts_lines(machines):
    names = sorted(machines.hosts)[:2]
    result = machines.fab("-H", ",".join(names), "manage", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in names:
        assert f"{name}: System check identified no issues (0 silenced)." in result.stdout.splitlines()
        assert f"{name}: manage.py check exited 0" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "2 ok"


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        below = children(todo.pop())
        found += below
        todo += below
    return found


def test_one_sigint_ends_a_follow_on_every_host_with_exit_0(machines):
    names = sorted(machines.hosts)[:2]
    assert machines.fab("-H", ",".join(names), "start").returncode == 0
    follower = machines.popen("-H", ",".join(names), "logs", "--follow", "--lines", "1", stdout=subprocess.PIPE)
    try:
        assert follower.stdout.readline() and follower.stdout.readline()  # each host's last line
        # The agents following the logs, inside the hosts (tini is each one's PID 1).
        agents = [pid for name in names for pid in descendants(machines.hosts[name].tini_pid)
                  if "fabserve-agent" in cmdline(pid)]
        assert len(agents) == 2
        os.killpg(follower.pid, signal.SIGINT)  # Ctrl-C: to fab's whole foreground group
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)
            follower.wait()
    assert wait_for(lambda: not any(alive(pid) for pid in agents), timeout=15)


def test_setup_on_hosts_that_share_the_project_builds_its_venv_once(machines):
    # The hosts share the test user's home, as hosts with an NFS home do: one builds
    # the venv, the others wait for it and find their requirements installed.
    site = machines.site
    (site / ".venv").unlink()
    wheels = Path(tempfile.mkdtemp(prefix="probes-", dir=ensure_dir()))
    try:
        wheels.chmod(0o755)
        probe_wheel(wheels, "1.0")
        (site / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\n{PROBE}==1.0\n")
        made = machines.fab("-H", "web", "setup", "--json", timeout=300)
        assert made.returncode == 0, made.stdout + made.stderr
        results = json_lines(made)
        assert sorted(results) == sorted(machines.hosts)[:3]
        assert sorted(result["changed"] for result in results.values()) == [False, False, True], results
        assert len({result["venv"] for result in results.values()}) == 1
        again = machines.fab("-H", "web", "setup")
        assert again.returncode == 0, again.stderr
        lines = again.stdout.splitlines()
        assert sorted(lines[:-1]) == [f"{name}: setup: requirements unchanged" for name in sorted(machines.hosts)[:3]]
    finally:
        shutil.rmtree(wheels)


def test_prune_with_branches_from_stdin_sweeps_every_host_in_one_ssh_command_each(machines, own_state):
    """The documented scheduled cleanup, in a state directory of the test's own on
    the hosts' shared home: each host's expired instance goes, in one SSH command per
    host, and stdin's list is read once for them all."""
    env = dict(machines.env, **own_state)

    def fab(*args, input=None):
        return subprocess.run(machines.command(*args), cwd=REPO, env=env, input=input or "",
                              capture_output=True, text=True, timeout=120)

    def commands(host):
        return host.sshd_log.read_text().count(f"Starting session: command for {host.user} from")

    try:
        started = fab("-H", "all", "start", "--noreload", "--ttl", "10s", "--json")
        assert started.returncode == 0, started.stdout + started.stderr
        assert wait_for(lambda: all(line["message"].startswith("expired at ") for line in
                                    json_lines(fab("-H", "all", "status", "--json")).values()), timeout=40)
        before = {name: commands(host) for name, host in machines.hosts.items()}
        pruned = fab("-H", "all", "prune", "--keep-branches", "-", "--json", input="abc123\trefs/heads/main\n")
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        results = json_lines(pruned)
        assert sorted(results) == sorted(machines.hosts)
        for name, result in results.items():
            assert [row["reasons"] for row in result["rows"]] == [["expired"]], name
            assert commands(machines.hosts[name]) - before[name] == 1, name
    finally:
        fab("-H", "all", "stop", "--json")


@pytest.fixture
def caddies(machines, tmp_path):
    """The first two hosts, each with a real Caddy of its own (admin API on the
    host's localhost:2019, its site on HOST_SITE_PORT) and a route added by hand; the
    project reads its allowed hosts from the environment."""
    allow_exposed_names(machines.site)
    exposing = [machines.hosts[name] for name in sorted(machines.hosts)[:2]]
    with contextlib.ExitStack() as stack:
        for host in exposing:
            stack.enter_context(running_caddy(tmp_path / f"caddy-{host.name}", HOST_SITE_PORT, host.netns_path))
            add_route_by_hand(host.netns_path)
        yield exposing


def test_expose_on_two_hosts_each_hosts_name_reaches_its_server_until_stop(machines, caddies, tmp_path):
    """One start for both hosts: each publishes the branch's name through its own
    Caddy, a browser asking either host for it gets Django, the CI outputs hold
    both, and one stop withdraws both routes and only them."""
    names = ",".join(host.name for host in caddies)
    outputs = tmp_path / "outputs"
    started = machines.fab("-H", names, "start", "--expose", "--branch", "Feature/Many Hosts", "--host-template",
                           "{branch}-{port}.preview.test", "--github-output", str(outputs), "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    public = f"feature-many-hosts-{PORT}.preview.test"
    url = f"http://{public}:{HOST_SITE_PORT}/"
    assert {name: result["public_url"] for name, result in json_lines(started).items()} == {
        host.name: url for host in caddies}
    for host in caddies:
        status, body = through(HOST_SITE_PORT, public, address=host.address)
        assert status == 200 and "django" in body.lower(), (host.name, status, body[:200])
        assert through(HOST_SITE_PORT, HAND_HOST, address=host.address) == (200, HAND_TEXT)
    written = outputs.read_text().splitlines()
    assert [line for line in written if line.startswith("url=")] == [f"url={url}"] * 2
    assert sorted(line for line in written if line.startswith("host=")) == [f"host={host.name}" for host in caddies]
    listed = machines.fab("-H", names, "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(row["host"] for row in rows if row.get("public_url") == url) == [host.name for host in caddies]
    stopped = machines.fab("-H", names, "stop", "--json")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for host in caddies:
        assert through(HOST_SITE_PORT, public, address=host.address) == (404, SITE_TEXT)
        assert route_ids(host.netns_path) == [BY_HAND, None]


def test_idle_extend_and_prune_of_exposed_previews_through_the_fabserve_command(machines, caddies, tmp_path):
    """Through the `fabserve` command on both hosts: with nobody asking, one host's
    preview ends after its idle window and its route goes with it; the other,
    extended, keeps serving; prune then removes both, and each Caddy keeps only
    the route added by hand."""
    fabserve = checkout_command(tmp_path / "bin" / "fabserve", tmp_path / "tools")
    first, second = caddies

    def command(*args):
        return subprocess.run([str(fabserve), "-S", str(machines.ssh_config), *args], cwd=tmp_path, env=machines.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    public = f"idle-{PORT}.preview.test"
    started = command("-H", f"{first.name},{second.name}", "start", "--noreload", "--expose", "--host-template",
                      "idle-{port}.preview.test", "--idle-ttl", "4s", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    results = json_lines(started)
    assert all(result["idle_expires_at"] for result in results.values()), results
    extended = command("-H", first.name, "extend", "--idle-ttl", "10m", "--json")
    assert extended.returncode == 0, extended.stdout + extended.stderr
    # Nobody asks the second host (asking through Caddy would be a request): its watchdog,
    # alone there since the command returned, ends it and withdraws its route.
    assert wait_for(lambda: route_ids(second.netns_path) == [BY_HAND, None], timeout=30)
    assert through(HOST_SITE_PORT, public, address=second.address) == (404, SITE_TEXT)
    assert not any(second.as_user(["kill", "-0", str(pid)]).returncode == 0
                   for pid in results[second.name]["pids"])
    assert through(HOST_SITE_PORT, public, address=first.address)[0] == 200
    pruned = command("-H", f"{first.name},{second.name}", "prune", "--older-than", "1s", "--json")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    reasons = {name: [row["reasons"] for row in result["rows"] if row["project"] == str(machines.site)]
               for name, result in json_lines(pruned).items()}
    assert reasons == {first.name: [["older than 1s"]], second.name: [["expired", "older than 1s"]]}, reasons
    for host in caddies:
        assert through(HOST_SITE_PORT, public, address=host.address) == (404, SITE_TEXT)
        assert route_ids(host.netns_path) == [BY_HAND, None]
