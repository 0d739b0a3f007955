"""Many servers on one host, over the real sshd as the test user with real Django
projects: `--port auto` chosen concurrently, a project named without its port,
and `list` of the user's servers, managed or not, never another user's or a decoy."""

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import yaml

from bed import procs, state
from bed.accounts import made_dirs, startproject
from bed.ci import Runner
from bed.fab import FabResult
from bed.run import run_in_group
from bed.target import SHELL_ALIAS
from helpers import REPO, alive, free_port, group_members, http_status, port_listening, wait_for, where

# This module's own port range (other modules' tests run alongside as the same user).
LOW, HIGH = 18200, 18299
RANGE_ENV = {"FABRIC_FABSERVE_PORT_RANGE": f"{LOW}-{HIGH}"}


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.json


def as_list(documents):
    """FabResult.json: one object for one line, else the list."""
    return documents if isinstance(documents, list) else [documents]


def test_ten_concurrent_auto_starts_get_ten_serving_ports_and_skip_a_taken_one(fab, make_project):
    projects = [make_project(f"preview-{index}") for index in range(10)]
    # An unrelated listener (root's) on the range's first port.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", LOW))
    blocker.listen()
    started = []
    try:
        with ThreadPoolExecutor(len(projects)) as pool:
            results = list(pool.map(lambda project: fab("start", "--project", str(project), "--port", "auto",
                                                        "--noreload", "--json", env=RANGE_ENV), projects))
        started = [ok(result) for result in results]
        ports = [data["port"] for data in started]
        assert len(set(ports)) == 10 and all(LOW < port <= HIGH for port in ports), ports
        for data in started:
            assert data["state"] == "running" and data["changed"] is True
            assert data["url"] == f"http://127.0.0.1:{data['port']}/" and http_status(data["url"]) == 200

        # Human output names the chosen port; a second auto start finds the running one.
        first, project = started[0], projects[0]
        again = fab("start", "--project", str(project), "--port", "auto", env=RANGE_ENV)
        assert again.returncode == 0 and f"already running on {first['url']}" in again.stdout, again.stdout

        # Without --port, status and stop name the project's one instance.
        status = ok(fab("status", "--project", str(project), "--json"))
        assert status["port"] == first["port"] and status["state"] == "running" and status["pids"] == first["pids"]
        stop = ok(fab("stop", "--project", str(project), "--json"))
        assert stop["port"] == first["port"] and stop["changed"] is True and stop["port_free"] is True
        assert not any(alive(pid) for pid in first["pids"]) and not port_listening(first["port"])
        after = fab("status", "--project", str(project), "--json")
        assert after.returncode == 3 and after.json["port"] == first["port"]  # its kept log names it still
    finally:
        blocker.close()
        with ThreadPoolExecutor(len(projects)) as pool:
            stops = list(pool.map(lambda project: fab("stop", "--project", str(project), "--json"), projects))
    for data, result in zip(started, stops):
        assert result.returncode == 0 and not any(alive(pid) for pid in data["pids"]), result.stdout


def shell_user_projects(account, venv, count):
    """`count` Django projects of conftest's shell account, each with a .venv linked to `venv`."""
    root = account.home / "projects" / uuid.uuid4().hex[:12]
    owner = (account.uid, pwd.getpwnam(account.user).pw_gid)
    made_dirs(account.home, root, owner)
    projects = []
    for index in range(count):
        project = root / f"preview-{index}"
        shutil.copytree(startproject(venv), project, symlinks=True)
        os.symlink(venv, project / ".venv")
        for path in [project, *project.rglob("*")]:
            os.lchown(path, *owner)
        projects.append(project)
    return root, projects


def test_auto_starts_of_two_users_at_once_in_one_range_all_serve_on_distinct_ports(
        fab, make_project, shell_account, target):
    # Each user's agent locks its choice in its own state directory: the other user's
    # servers are seen only once they listen, so both choose the same ports at first.
    low, high = 19430, 19449
    env = {"FABRIC_FABSERVE_PORT_RANGE": f"{low}-{high}"}

    def as_shell_user(*args):
        done = run_in_group([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(shell_account.ssh_config),
                             "-H", SHELL_ALIAS, *args], cwd=REPO, env=os.environ | env, timeout=180,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return FabResult(done.returncode, done.stdout, done.stderr)

    # The account's login shell is another module's to change, under this lock.
    with state.locked(state.STATE_DIR / ".login-shells.lock"):
        root, theirs = shell_user_projects(shell_account, target.venv, 5)
        mine = [make_project(f"preview-{index}") for index in range(5)]
        calls = [(lambda project=project: fab("start", "--project", str(project), "--port", "auto", "--noreload",
                                              "--json", env=env, timeout=180)) for project in mine]
        calls += [(lambda project=project: as_shell_user("start", "--project", str(project), "--port", "auto",
                                                         "--noreload", "--json")) for project in theirs]
        started = []
        try:
            with ThreadPoolExecutor(len(calls)) as pool:
                results = list(pool.map(lambda call: call(), calls))
            started = [ok(result) for result in results]
            ports = [data["port"] for data in started]
            assert len(set(ports)) == 10 and all(low <= port <= high for port in ports), ports
            for data, uid in zip(started, [target.uid] * 5 + [shell_account.uid] * 5):
                assert data["state"] == "running" and http_status(data["url"]) == 200
                assert all(procs.real_uid(pid) == uid for pid in data["pids"]), data
        finally:
            stops = [fab("stop", "--project", str(project), "--json") for project in mine]
            stops += [as_shell_user("stop", "--project", str(project), "--json") for project in theirs]
            try:
                assert all(result.returncode == 0 for result in stops), [result.stdout for result in stops]
                assert not any(alive(pid) for data in started for pid in data["pids"])
                assert not any(port_listening(data["port"]) for data in started)
                assert wait_for(lambda: not procs.uid_processes([shell_account.uid]))
            finally:
                procs.kill_uid_processes([shell_account.uid])
                shutil.rmtree(root, ignore_errors=True)


def test_two_instances_of_a_project_without_a_port_are_exit_2_naming_both(fab, site):
    ports = sorted([free_port(), free_port()])
    started = [ok(fab("start", *where(site, port), "--noreload", "--json")) for port in ports]
    try:
        for verb in ("status", "stop"):  # restart and logs: the unit tests
            result = fab(verb, "--project", str(site))
            assert result.returncode == 2, (verb, result.stdout, result.stderr)
            assert f"has 2 instances on this host, on ports {ports[0]}, {ports[1]}: name one with --port" \
                in result.stderr, (verb, result.stderr)
        as_json = fab("status", "--project", str(site), "--json")
        assert as_json.returncode == 2 and as_json.json["ambiguous"] == ports and as_json.json["port"] is None
        assert all(alive(pid) for data in started for pid in data["pids"])  # nothing was stopped or restarted
    finally:
        stops = [fab("stop", *where(site, port), "--json") for port in ports]
    assert all(result.returncode == 0 for result in stops)
    assert not any(port_listening(port) for port in ports)


def test_list_shows_managed_and_hand_started_servers_not_another_users_nor_decoys(
        fab, make_project, spawn_as_user, spawn_as_other, target):
    managed, by_hand, stopped = make_project("managed"), make_project("by hand"), make_project("stopped")
    port, hand_port, stopped_port = free_port(), free_port(), free_port()
    running = ok(fab("start", *where(managed, port), "--json"))  # with the autoreloader: two processes
    ok(fab("start", *where(stopped, stopped_port), "--noreload", "--json"))
    ok(fab("stop", *where(stopped, stopped_port), "--json"))  # its log is kept
    python = str(target.python)
    hand = spawn_as_user([python, "manage.py", "runserver", f"127.0.0.1:{hand_port}", "--noreload"], cwd=by_hand)
    theirs = spawn_as_other.sleeping_runserver(python, by_hand, free_port())  # another user's, same project
    decoys = [
        spawn_as_user(["tail", "-f", "manage.py", "runserver"], cwd=by_hand),
        spawn_as_user(["bash", "-c", f"exec -a vim {python} -c 'import time; time.sleep(600)' "
                                     f"manage.py runserver {hand_port}"], cwd=by_hand),
    ]
    try:
        assert wait_for(lambda: http_status(f"http://127.0.0.1:{hand_port}/") == 200, timeout=30)
        assert wait_for(lambda: len(group_members(theirs.pid)) == 2 and all(group_members(d.pid) for d in decoys))
        hand_pids = [pid for pid in group_members(hand.pid) if pid != hand.pid]  # runuser leads the group
        bystanders = set(group_members(theirs.pid)) | {pid for d in decoys for pid in group_members(d.pid)}

        plain = fab("list", "--json")
        assert plain.returncode == 0, plain.stderr
        assert not [row for row in as_list(plain.json) if row["project"] == str(stopped)]  # --all shows it
        listed = fab("list", "--all", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = as_list(listed.json)  # every line parses
        assert all(row["host"] == target.alias and row["action"] == "list" for row in rows)
        assert not bystanders & {pid for row in rows for pid in row["pids"]}
        mine = {row["project"]: row for row in rows if row["project"] in (str(managed), str(by_hand), str(stopped))}
        assert sorted(mine) == sorted([str(managed), str(by_hand), str(stopped)])
        assert [row for row in rows if row["project"] == str(by_hand)] == [mine[str(by_hand)]]  # not the other user's
        assert mine[str(managed)]["managed"] is True and mine[str(managed)]["state"] == "running"
        assert sorted(mine[str(managed)]["pids"]) == sorted(running["pids"]) and mine[str(managed)]["port"] == port
        assert mine[str(managed)]["log"] == running["log"] and mine[str(managed)]["uptime"] >= 0
        assert mine[str(by_hand)]["managed"] is False and mine[str(by_hand)]["state"] == "running"
        assert mine[str(by_hand)]["pids"] == hand_pids and mine[str(by_hand)]["port"] == hand_port
        assert mine[str(by_hand)]["log"] is None and mine[str(by_hand)]["url"] == f"http://127.0.0.1:{hand_port}/"
        assert mine[str(stopped)]["state"] == "stopped" and mine[str(stopped)]["port"] == stopped_port
        assert mine[str(stopped)]["pids"] == [] and os.path.exists(mine[str(stopped)]["log"])

        table = fab("list")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert re.fullmatch(rf"{target.alias}: \d+ servers(; \d+ stopped \(list --all shows them\))?", lines[0]), lines[0]
        assert lines[1].split() == ["PROJECT", "PORT", "STATE", "MANAGED", "PIDS", "PROCS", "UPTIME", "EXPIRES",
                                    "IDLE", "URL", "BRANCH", "COMMIT", "LOG"]
        hand_line = next(line for line in lines if str(by_hand) in line)
        assert f" {hand_port} " in hand_line and " running " in hand_line and " no " in hand_line
    finally:
        stop = fab("stop", *where(managed, port), "--json")
    assert stop.returncode == 0 and not any(alive(pid) for pid in running["pids"])


def documented_ci_job():
    """docs/ci.md's GitHub Actions job, parsed."""
    text = (REPO / "docs" / "ci.md").read_text()
    block = text.split("\n## GitHub Actions\n", 1)[1].split("```yaml\n", 1)[1].split("\n```", 1)[0]
    return yaml.safe_load(block)["jobs"]["preview"]


def test_the_documented_ci_always_step_exits_0_after_stopped_instances_and_a_start_that_never_came_up(
        fab, site, target, tmp_path):
    job = documented_ci_job()
    always = next(step for step in job["steps"] if step.get("if") == "always()")
    runner = Runner(tmp_path, target)

    def always_step():
        return runner.step(always["run"], {**{key: str(value) for key, value in job["env"].items()},
                                           "FABRIC_FABSERVE_PROJECT": str(site)})

    # Two runs of the job that stopped their server, and one whose start never came up.
    ports = [free_port(), free_port(), free_port()]
    for port in ports[:2]:
        ok(fab("start", *where(site, port), "--noreload", "--json"))
        ok(fab("stop", *where(site, port), "--json"))
    never = fab("start", *where(site, ports[2]), "--settings", "no_such_settings", "--json")
    assert never.returncode == 1, never.stdout + never.stderr

    step = always_step()
    assert step.returncode == 0, step.stdout + step.stderr
    result = json.loads(step.stdout)
    assert result["ok"] and result["changed"] is False and result["message"] == "not running", result
    listed = [row for row in as_list(fab("list", "--json").json) if row.get("project") == str(site)]
    assert listed == []  # nothing of the project runs
    every = [row for row in as_list(fab("list", "--all", "--json").json) if row.get("project") == str(site)]
    assert sorted(row["port"] for row in every) == sorted(ports)
    # With one server running among them, the always-step stops exactly that one.
    running = ok(fab("start", *where(site, ports[0]), "--noreload", "--json"))
    step = always_step()
    assert step.returncode == 0, step.stdout + step.stderr
    result = json.loads(step.stdout)
    assert result["changed"] is True and result["port"] == ports[0], result
    assert not any(alive(pid) for pid in running["pids"]) and not port_listening(ports[0])
