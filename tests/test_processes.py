"""Companion processes (issue 22) over the real sshd and locally, as the test user, in
real Django projects whose Procfile names a worker (a loop writing to stdout, as Celery
would) and a watcher with a child of its own (as npm has; tests/bed/procfiles.py):
started, shown, logged, restarted and stopped as one instance, each process its own
group; twins of the companions' command lines that fabserve did not start survive
every verb; PORT, --env-file, a start whose companion dies, a web line of the
project's own, --only, a child that left its group, the `processes` setting over the
Procfile, a TTL over the whole instance, list's PROCS column, and a project without a
Procfile as before."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bed.procfiles import COMPANIONS, PYTHON, WEB
from bed.procs import cmdline, environ
from helpers import (alive, free_port, group_members, kill_pids, pids_with_cwd_under, port_listening, wait_for,
                     where)

GRACE = "5"  # stop's --timeout: every process here ends at its first TERM
#: A companion that is gone before any readiness window ends, with a line in its log.
DIES = f"{PYTHON} -c 'import sys; print(\"dying\"); sys.exit(3)'"
#: A companion whose child leaves its process group (a daemon's double fork): only the
#: token that child inherited ties it to the instance.
STRAY = (f"{PYTHON} -c 'import subprocess, sys, time; "
         f"subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(600)\"], start_new_session=True); "
         f"time.sleep(600)'")
#: A companion that ignores TERM: stop's KILL after --timeout ends it.
STUBBORN = f"{PYTHON} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'"


def table(result: dict) -> dict[str, dict]:
    """The result's processes by name, in the table's order."""
    return {row["name"]: row for row in result["processes"]}


def every_pid(result: dict) -> set[int]:
    return {pid for row in result["processes"] for pid in row["pids"]}


def log_line(row: dict, prefix: str) -> str:
    """The first line of the process's log that starts with `prefix`, once it is there."""
    found: list[str] = []

    def written() -> list[str]:
        found[:] = [line for line in Path(row["log"]).read_text().splitlines() if line.startswith(prefix)]
        return found
    assert wait_for(written, timeout=20), Path(row["log"]).read_text()[-2000:]
    return found[0]


def watch_child(row: dict) -> int:
    """The PID of the child watch.py started, from its first line."""
    return int(log_line(row, "watch ").split()[3])


def started(call, flags, *extra: str, **kw) -> dict:
    result = call("start", *flags, *extra, **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.json["state"] == "running", result.json
    return result.json


def host_of(mode: str) -> str:
    return "local" if mode == "local" else "fabserve-target"


def procs_column(listing: str, project: Path, port: int) -> str:
    """The PROCS cell of the instance (project, port) in list's table."""
    lines = [line.split() for line in listing.splitlines()]
    heading = next(words for words in lines if "PROCS" in words)
    row = next(words for words in lines if words[:2] == [str(project), str(port)])
    return row[heading.index("PROCS")]


def listed_row(fab, project: Path, port: int) -> dict:
    rows = fab("list", "--json").json
    return next(row for row in (rows if isinstance(rows, list) else [rows])
                if (row["project"], row["port"]) == (str(project), port))


def test_the_issues_scenario_start_status_logs_a_killed_worker_restart_only_it_stop(run, mode, target,
                                                                                    make_procfile_project):
    project = make_procfile_project()
    port = free_port()
    flags = where(project, port)
    data = started(run, flags)
    assert data["changed"] is True and list(table(data)) == ["web", "worker", "watch"], data

    status = run("status", *flags)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.json["state"] == "running"
    rows = table(status.json)
    state_dir = Path(status.json["state_dir"])
    assert {name: (row["port"], row["log"]) for name, row in rows.items()} == {
        "web": (port, str(state_dir / "server.log")),
        "worker": (port + 100, str(state_dir / "proc.worker.log")),
        "watch": (port + 200, str(state_dir / "proc.watch.log"))}
    for row in rows.values():
        assert row["state"] == "running" and row["exit_status"] is None and row["log_tail"] is None, row
        assert row["uptime"] is not None and row["uptime"] >= 0, row
        assert sorted(row["pids"]) == sorted(group_members(row["pid"])), row  # each process its own group
    assert [rows[name]["command"] for name in COMPANIONS] == list(COMPANIONS.values())
    assert len({row["pid"] for row in rows.values()}) == 3
    assert log_line(rows["worker"], "worker PORT") == f"worker PORT {port + 100}"
    child = watch_child(rows["watch"])
    assert child in rows["watch"]["pids"] and alive(child)

    human = run("status", *flags, json=False)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"{host_of(mode)}: running on http://127.0.0.1:{port}/"), lines
    for name, row in rows.items():
        pattern = (rf"{host_of(mode)}:\s+{name}\s+running\s+pids {' '.join(map(str, row['pids']))}\s+up \S+"
                   rf"\s+log {re.escape(row['log'])}")
        assert any(re.fullmatch(pattern, line) for line in lines[1:]), (pattern, lines)

    log_line(rows["worker"], "worker tick 3")
    logs = run("logs", *flags, "--process", "worker", "--lines", "3")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert len(logs.json["lines"]) == 3 and all(line.startswith("worker tick ") for line in logs.json["lines"])

    worker = rows["worker"]
    # By hand, -9, as the OOM killer would: the python running worker.py. The shell
    # fabserve runs it under says how it ended, as its log's last line.
    kill_pids([pid for pid in worker["pids"] if cmdline(pid).startswith(COMPANIONS["worker"])])
    assert wait_for(lambda: not any(alive(pid) for pid in worker["pids"]))
    degraded = run("status", *flags)
    assert degraded.returncode == 1, degraded.stdout + degraded.stderr
    assert degraded.json["state"] == "degraded"
    assert "worker exited with status -9" in f"{degraded.json['error']} {degraded.json['message']}", degraded.json
    exited = table(degraded.json)["worker"]
    assert (exited["state"], exited["exit_status"], exited["uptime"]) == ("exited", -9, None), exited
    ticks = [line for line in exited["log_tail"] if line.startswith("worker tick ")]
    assert ticks, exited  # then the shell's "Killed", then the wrapper's line:
    assert re.fullmatch(r"--- fabserve \S+ \S+ worker exited with status 137", exited["log_tail"][-1]), exited
    assert [table(degraded.json)[name]["state"] for name in ("web", "watch")] == ["running", "running"]
    human = run("status", *flags, json=False)
    assert human.returncode == 1
    shown = human.stdout + human.stderr
    assert re.search(rf"\n{host_of(mode)}:\s+worker\s+exited \(status -9\)\s+log {re.escape(worker['log'])}\n",
                     shown), shown
    assert f"\n{host_of(mode)}:       {ticks[-1]}\n" in shown, shown

    restarted = run("restart", *flags, "--only", "worker")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    again = table(restarted.json)
    assert again["worker"]["state"] == "running" and not set(again["worker"]["pids"]) & set(worker["pids"])
    assert [again[name]["pids"] for name in ("web", "watch")] == [rows[name]["pids"] for name in ("web", "watch")]
    now = run("status", *flags)
    assert now.returncode == 0 and now.json["state"] == "running", now.json
    previous = run("logs", *flags, "--process", "worker", "--previous", "--lines", "1").json["lines"]
    assert previous == [exited["log_tail"][-1]]  # the killed run's log, its wrapper's last word
    assert table(now.json)["worker"]["pids"] == again["worker"]["pids"]

    nothing = run("start", *flags)
    assert nothing.returncode == 0 and nothing.json["changed"] is False, nothing.json
    assert nothing.json["message"].startswith("already running"), nothing.json

    every = every_pid(now.json) | every_pid(data) | {child}
    stop = run("stop", *flags, "--timeout", GRACE)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert every_pid(now.json) | {child} <= set(stop.json["pids"]), stop.json
    assert not [pid for pid in every if alive(pid)] and not port_listening(port)
    assert pids_with_cwd_under(project, target.uid) == []
    assert run("status", *flags).returncode == 3
    # Checked last, so that the rest is checked whatever this says: start's rows have
    # every running process's uptime, as status's do.
    assert [row["uptime"] is not None for row in data["processes"]] == [True] * 3, data["processes"]


def test_twins_of_the_companions_command_lines_survive_every_verb(fab, target, make_procfile_project,
                                                                   spawn_as_user, spawn_as_other):
    """The very command lines fabserve runs (`/bin/sh -c COMMAND` and what it runs), in
    the same directory, started by hand by the test user and by another user: no verb
    signals them, also once the instance's pidfiles are gone."""
    project = make_procfile_project()
    twins = [spawn(["/bin/sh", "-c", command], cwd=project)
             for spawn in (spawn_as_user, spawn_as_other) for command in COMPANIONS.values()]
    # Up once the worker twins' python runs and the watcher twins' child does (runuser
    # leads each group, its sh and python in it).
    signs = [lambda line: line.startswith(COMPANIONS["worker"]), lambda line: "while True" in line] * 2
    assert wait_for(lambda: all(any(sign(cmdline(pid)) for pid in group_members(twin.pid))
                                for twin, sign in zip(twins, signs)), timeout=20)
    bystanders = [pid for twin in twins for pid in group_members(twin.pid)]

    def spared(step: str) -> None:
        assert [pid for pid in bystanders if not alive(pid)] == [], f"{step} ended a twin"

    flags = where(project, free_port())
    first = started(fab, flags, "--json")
    spared("start")
    assert fab("status", *flags, "--json").returncode == 0
    spared("status")
    restarted = fab("restart", *flags, "--json")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    spared("restart")
    stop = fab("stop", *flags, "--timeout", GRACE, "--json")
    assert stop.returncode == 0 and not set(stop.json["pids"]) & set(bystanders), stop.json
    assert not [pid for pid in every_pid(restarted.json) | every_pid(first) if alive(pid)]
    spared("stop")

    started(fab, flags, "--json")
    blind = stop_without_pidfiles(fab, flags)
    spared("a stop without pidfiles")
    assert not set(blind.json["pids"]) & set(bystanders), blind.json
    # Whatever it left of the instance (see the next test), the projects' cleanup ends.


def stop_without_pidfiles(fab, flags):
    """Delete the running instance's pidfiles (web's and each companion's), then stop it."""
    state_dir = Path(fab("status", *flags, "--json").json["state_dir"])
    for name in ("server.pid", "proc.worker.pid", "proc.watch.pid"):
        (state_dir / name).unlink()
    stop = fab("stop", *flags, "--timeout", GRACE, "--json")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    return stop


def test_a_stop_after_the_pidfiles_are_gone_ends_the_companions_by_their_token(fab, target, make_procfile_project):
    """proc.NAME.json keeps each companion's token: the pidfile gone, stop still finds them by it."""
    project = make_procfile_project()
    flags = where(project, free_port())
    data = started(fab, flags, "--json")
    every = every_pid(data)
    stop = stop_without_pidfiles(fab, flags)
    assert every <= set(stop.json["pids"]), stop.json
    assert not [pid for pid in every if alive(pid)] and pids_with_cwd_under(project, target.uid) == []


def test_port_counts_only_the_companions_and_a_web_line_of_its_own_runs_as_written(fab, target,
                                                                                  make_procfile_project):
    # web last: the n-th process other than web gets port + 100 × n, whatever web's place.
    project = make_procfile_project({**COMPANIONS, "web": WEB})
    port = free_port()
    flags = where(project, port)
    data = started(fab, flags, "--check", "/", "--json")
    rows = table(data)
    assert list(rows) == ["web", "worker", "watch"], data  # web first, wherever its line is
    assert data["http_status"] == 200 and port_listening(port), data
    assert {name: row["port"] for name, row in rows.items()} == {"worker": port + 100, "watch": port + 200,
                                                                  "web": port}
    assert rows["web"]["command"] == WEB
    # Run as written through sh, which expanded $PORT: runserver's parent and its reloader child.
    assert [f"127.0.0.1:{port}" in cmdline(pid) for pid in rows["web"]["pids"]].count(True) >= 2, rows["web"]
    assert log_line(rows["worker"], "worker PORT") == f"worker PORT {port + 100}"
    assert log_line(rows["watch"], "watch ").endswith(f" PORT {port + 200}")

    checked = fab("status", *flags, "--check", "/", "--json")
    assert checked.returncode == 0 and checked.json["http_status"] == 200, checked.json
    stop = fab("stop", *flags, "--timeout", GRACE, "--json")
    assert stop.returncode == 0 and set(rows["web"]["pids"]) <= set(stop.json["pids"]), stop.json
    assert not port_listening(port) and pids_with_cwd_under(project, target.uid) == []


def test_a_web_line_that_never_answers_fails_the_start_and_leaves_nothing(fab, target, make_procfile_project):
    project = make_procfile_project({"web": f"{PYTHON} worker.py", **COMPANIONS})
    port = free_port()
    result = fab("start", *where(project, port), "--timeout", "3", "--json")
    assert result.returncode == 1 and result.json["ok"] is False, result.stdout + result.stderr
    assert result.json["error"].startswith(f"nothing answered on port {port} within 3s"), result.json
    assert wait_for(lambda: pids_with_cwd_under(project, target.uid) == [], timeout=15), \
        [cmdline(pid) for pid in pids_with_cwd_under(project, target.uid)]
    assert fab("status", *where(project, port), "--json").returncode == 3


ENV_FILE = """\
# what every process of the site gets
export A=1
B='single $HOME # kept'
C="two\\nlines"

D=from-file
"""


def test_an_env_file_reaches_every_process_and_env_wins(fab, target, make_procfile_project):
    project = make_procfile_project({**COMPANIONS, "web": WEB})
    env_file = project / ".env"
    env_file.write_text(ENV_FILE)
    env_file.chmod(0o600)
    os.chown(env_file, target.uid, -1)
    port = free_port()
    flags = where(project, port)
    data = started(fab, flags, "--env-file", ".env", "--env", "D=from-flag", "--json")
    tokens = set()
    for name, row in table(data).items():
        seen = environ(row["pid"])
        picked = {key: seen.get(key) for key in ("A", "B", "C", "D", "PORT", "PYTHONUNBUFFERED")}
        assert picked == {"A": "1", "B": "single $HOME # kept", "C": "two\nlines", "D": "from-flag",
                          "PORT": str(row["port"]), "PYTHONUNBUFFERED": "1"}, (name, picked)
        tokens.add(seen["FABSERVE_TOKEN"])
    assert len(tokens) == 3 and "" not in tokens  # a token per process

    code = "import os; print(repr(os.environ['B']), os.environ['D'])"
    manage = fab("manage", f'shell -c "{code}"', "--project", str(project), "--env-file", ".env", "--json")
    assert manage.returncode == 0, manage.stdout + manage.stderr
    assert manage.json["output_tail"][-1] == "'single $HOME # kept' from-file"
    assert fab("stop", *flags, "--timeout", GRACE).returncode == 0


def test_a_companion_that_dies_at_once_fails_the_start_and_leaves_nothing(run, mode, target, make_procfile_project):
    project = make_procfile_project({**COMPANIONS, "dies": DIES})
    port = free_port()
    flags = where(project, port)
    result = run("start", *flags)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = result.json
    assert failed["ok"] is False and "dies" in failed["error"] and "status 3" in failed["error"], failed
    assert "dying" in failed["log_tail"], failed
    assert wait_for(lambda: pids_with_cwd_under(project, target.uid) == [], timeout=15), \
        [cmdline(pid) for pid in pids_with_cwd_under(project, target.uid)]
    assert not port_listening(port)
    human = run("start", *flags, json=False)
    assert human.returncode == 1
    first = human.stderr.splitlines()[0]
    assert first.startswith(f"{host_of(mode)}: start failed: ") and "dies" in first, human.stderr
    assert wait_for(lambda: pids_with_cwd_under(project, target.uid) == [], timeout=15)
    assert run("status", *flags).returncode == 3


def test_only_stops_and_starts_the_processes_it_names(fab, target, make_procfile_project):
    project = make_procfile_project()
    flags = where(project, free_port())
    rows = table(started(fab, flags, "--json"))
    child = watch_child(rows["watch"])
    stop = fab("stop", *flags, "--only", "watch", "--timeout", GRACE, "--json")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert set(rows["watch"]["pids"]) | {child} <= set(stop.json["pids"]), stop.json
    assert not alive(child) and all(alive(pid) for name in ("web", "worker") for pid in rows[name]["pids"])
    after = table(fab("status", *flags, "--json").json)
    assert after["watch"]["state"] == "stopped" and after["watch"]["pids"] == [], after["watch"]

    back = fab("start", *flags, "--only", "watch", "--json")
    assert back.returncode == 0 and back.json["changed"] is True, back.stdout + back.stderr
    again = table(back.json)
    assert again["watch"]["state"] == "running" and again["web"]["pids"] == rows["web"]["pids"]
    assert again["worker"]["pids"] == rows["worker"]["pids"]
    unknown = fab("start", *flags, "--only", "nosuch", "--json")
    assert unknown.returncode != 0 and "nosuch" in unknown.stdout + unknown.stderr, unknown
    assert fab("stop", *flags, "--timeout", GRACE).returncode == 0
    assert pids_with_cwd_under(project, target.uid) == []


def test_stop_ends_a_child_that_left_its_group_by_its_token_and_one_that_ignores_term(fab, target,
                                                                                     make_procfile_project):
    project = make_procfile_project({"stray": STRAY, "stubborn": STUBBORN})
    flags = where(project, free_port())
    rows = table(started(fab, flags, "--json"))
    grouped = every_pid({"processes": list(rows.values())})
    assert wait_for(lambda: set(pids_with_cwd_under(project, target.uid)) - grouped)
    outside = set(pids_with_cwd_under(project, target.uid)) - grouped
    assert len(outside) == 1 and environ(outside.pop())["FABSERVE_TOKEN"] == environ(rows["stray"]["pid"])[
        "FABSERVE_TOKEN"]
    stop = fab("stop", *flags, "--timeout", "1", "--json")
    assert stop.returncode == 0 and stop.json["killed"] is True, stop.stdout + stop.stderr
    assert grouped <= set(stop.json["pids"]) and len(stop.json["pids"]) == len(grouped) + 1, stop.json
    assert pids_with_cwd_under(project, target.uid) == []


@pytest.mark.parametrize("source", ["inventory", "config file"])
def test_the_processes_setting_wins_over_the_procfile(fab, target, make_procfile_project, tmp_path, source):
    project = make_procfile_project({**COMPANIONS, "dies": DIES})  # the setting leaves out what would fail
    setting = {"worker": COMPANIONS["worker"]}
    path = tmp_path / "settings.yml"  # YAML reads JSON
    if source == "inventory":
        path.write_text(json.dumps({"all": {"hosts": {target.alias: {"fabserve_processes": setting}}}}))
        words, env = (), {"FABRIC_FABSERVE_INVENTORY": str(path)}
    else:
        path.write_text(json.dumps({"fabserve": {"processes": setting}}))
        words, env = ("-f", str(path)), None
    flags = where(project, free_port())
    start = fab(*words, "start", *flags, "--json", env=env)
    assert start.returncode == 0, start.stdout + start.stderr
    assert [(row["name"], row["state"]) for row in start.json["processes"]] == [("web", "running"),
                                                                               ("worker", "running")]
    assert fab(*words, "stop", *flags, "--timeout", GRACE, env=env).returncode == 0
    assert pids_with_cwd_under(project, target.uid) == []


def test_a_ttl_ends_every_process_of_the_instance(fab, target, make_procfile_project):
    project = make_procfile_project()
    port = free_port()
    flags = where(project, port)
    # fab has exited: nobody calls again until the processes are gone. The TTL runs from the
    # call's start: a loaded machine's start of three processes takes seconds of it.
    data = started(fab, flags, "--ttl", "12s", "--json", env={"FABRIC_FABSERVE_STOP_TIMEOUT": "2"})
    assert 0 < data["expires_in"] <= 12
    every = every_pid(data) | {watch_child(table(data)["watch"])}
    assert wait_for(lambda: not [pid for pid in every if alive(pid)], timeout=12 + 30)
    assert wait_for(lambda: pids_with_cwd_under(project, target.uid) == [], timeout=10)
    state_dir = Path(data["state_dir"])
    assert not port_listening(port)
    # Each watchdog removes its process's pidfile once its group is gone.
    assert wait_for(lambda: not list(state_dir.glob("*.pid")), timeout=10), list(state_dir.glob("*.pid"))
    status = fab("status", *flags, "--json")
    assert status.returncode == 3 and status.json["message"] == f"expired at {data['expires_at']} (ttl)", status.json


def test_a_ttl_given_to_the_running_instance_reaches_every_process(fab, target, make_procfile_project):
    project = make_procfile_project()
    flags = where(project, free_port())
    data = started(fab, flags, "--json")
    every = every_pid(data) | {watch_child(table(data)["watch"])}
    applied = started(fab, flags, "--ttl", "4s", "--json", env={"FABRIC_FABSERVE_STOP_TIMEOUT": "2"})
    assert applied["changed"] is True and 0 < applied["expires_in"] <= 4, applied
    assert [row["pids"] for row in applied["processes"]] == [row["pids"] for row in data["processes"]]
    assert wait_for(lambda: not [pid for pid in every if alive(pid)], timeout=4 + 30)
    assert wait_for(lambda: pids_with_cwd_under(project, target.uid) == [], timeout=10)
    status = fab("status", *flags, "--json")
    assert status.returncode == 3 and status.json["message"] == f"expired at {applied['expires_at']} (ttl)", \
        status.json


def test_list_counts_the_running_processes_of_each_instance(fab, make_procfile_project):
    project = make_procfile_project()
    port = free_port()
    flags = where(project, port)
    rows = table(started(fab, flags, "--json"))
    listing = fab("list")
    assert listing.returncode == 0 and procs_column(listing.stdout, project, port) == "3/3", listing.stdout

    kill_pids(rows["worker"]["pids"])  # the shell that would have said its status too: unknown
    assert wait_for(lambda: not any(alive(pid) for pid in rows["worker"]["pids"]))
    listing = fab("list")
    assert procs_column(listing.stdout, project, port) == "2/3", listing.stdout
    row = listed_row(fab, project, port)
    assert row["state"] == "degraded" and [process["state"] for process in row["processes"]] == [
        "running", "exited", "running"], row
    assert row["processes"][1]["exit_status"] is None and "worker exited" in f"{row['error']} {row['message']}"

    revived = fab("start", *flags, "--json")  # starts what does not run, the worker alone
    assert revived.returncode == 0 and revived.json["changed"] is True, revived.stdout + revived.stderr
    now = table(revived.json)
    assert now["worker"]["state"] == "running" and now["web"]["pids"] == rows["web"]["pids"]
    assert procs_column(fab("list").stdout, project, port) == "3/3"
    assert fab("stop", *flags, "--timeout", GRACE).returncode == 0


def test_without_a_procfile_nothing_changes(fab, site):
    port = free_port()
    flags = where(site, port)
    data = started(fab, flags, "--json")
    assert data.get("processes") is None, data
    status = fab("status", *flags, "--json")
    assert status.returncode == 0 and status.json.get("processes") is None, status.json
    human = fab("status", *flags)
    assert len(human.stdout.splitlines()) == 1, human.stdout
    assert procs_column(fab("list").stdout, site, port) == "-"
    assert listed_row(fab, site, port).get("processes") is None
    assert fab("stop", *flags, "--timeout", GRACE).returncode == 0
