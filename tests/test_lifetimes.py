"""--ttl and bounded logs end to end, over the real sshd, as the unprivileged test
user, against real Django: a server that stops itself with nobody calling, its
watchdog gone with a stop, kept by restart, harmless to a process its recorded
PID names; previous runs' logs, --previous, and a log cut to its cap under a follower;
the cut racing a fast writer on each file system the bed can make (as root)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from bed.disks import KINDS, scratch_filesystem
from bed.procs import children, cmdline, parent
from bed.target import tiny_tmpfs as tmpfs_of
from helpers import alive, bed_outcome, free_port, group_members, port_listening, proc_state, wait_for, where
from test_lifetimes_unit import LOSSLESS, kept_size, race, shown
from test_logs import start_follower, wait_line

GRACE = "2"  # seconds between the expiry's TERM and KILL; Django ends on TERM at once


def started(fab, flags, *extra, env=None):
    result = fab("start", *flags, *extra, "--json", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.json["state"] == "running"
    return result.json


def watchdog_of(data) -> int:
    """The one process of the server's group that results leave out: its watchdog."""
    extra = [pid for pid in group_members(data["pid"]) if pid not in data["pids"]]
    assert len(extra) == 1, (group_members(data["pid"]), data["pids"])
    assert "fabserve-watchdog" in cmdline(extra[0])
    return extra[0]


def as_user_sh(as_user, script, *args):
    done = as_user(["sh", "-c", script, "sh", *map(str, args)])
    assert done.returncode == 0, done.stderr


def test_a_server_with_a_ttl_stops_itself_with_nobody_calling(fab, site, own_state):
    port = free_port()
    flags = where(site, port)
    # fab has exited: the SSH session that started the server is closed.
    data = started(fab, flags, "--ttl", "6s", "--timeout", "30",
                   env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE, **own_state})
    watchdog = watchdog_of(data)
    assert len(data["pids"]) == 2 and 0 < data["expires_in"] <= 6
    members = group_members(data["pid"])
    assert wait_for(lambda: not group_members(data["pid"]) and not port_listening(port), timeout=6 + 30)
    assert not any(alive(pid) for pid in members) and not alive(watchdog)
    assert not os.path.exists(data["pidfile"]) and not os.path.exists(Path(data["pidfile"]).with_name("server.json"))
    last = Path(data["log"]).read_text().rstrip("\n").splitlines()[-1]
    assert last.startswith("--- fabserve ")
    assert last.endswith(f"expired: the ttl ended at {data['expires_at']}, so the server was stopped")
    after = fab("status", *flags, "--json", env=own_state)
    assert after.returncode == 3 and after.json["expires_at"] is None and after.json["expires_in"] is None
    assert after.json["message"] == f"expired at {data['expires_at']} (ttl)"
    human = fab("status", *flags, env=own_state)
    assert human.returncode == 3 and human.stdout == f"{fab.remote_host}: expired at {data['expires_at']} (ttl)\n"
    listed = fab("list", "--all", env=own_state)
    assert listed.returncode == 0
    assert next(line for line in listed.stdout.splitlines() if f" {port} " in line).split()[2] == "expired"


def test_status_shows_the_expiry_restart_renews_it_and_stop_leaves_no_watchdog(fab, site):
    flags = where(site, free_port())
    data = started(fab, flags, "--ttl", "1h")
    first = watchdog_of(data)
    status = fab("status", *flags, "--json")
    assert status.json["pids"] == data["pids"] and first not in status.json["pids"]
    assert status.json["expires_at"] == data["expires_at"] and 3500 < status.json["expires_in"] <= 3600
    assert data["expires_at"].endswith("Z") and len(data["expires_at"]) == len("2026-12-01T22:00:00Z")
    human = fab("status", *flags)
    assert "; expires in 59m" in human.stdout and data["expires_at"] in human.stdout
    rows = fab("list", "--json").json  # one line, or a list of them
    listed = [row for row in (rows if isinstance(rows, list) else [rows]) if row["port"] == data["port"]]
    assert len(listed) == 1 and listed[0]["pids"] == data["pids"], listed  # the watchdog left out here too
    assert listed[0]["expires_at"] == data["expires_at"]

    restarted = fab("restart", *flags, "--json").json  # a whole ttl again: the one it was started with
    assert restarted["state"] == "running" and 3500 < restarted["expires_in"] <= 3600
    assert restarted["expires_at"] >= data["expires_at"]
    assert not alive(first)
    second = watchdog_of(restarted)
    renewed = fab("restart", *flags, "--ttl", "2h", "--json").json
    assert 7100 < renewed["expires_in"] <= 7200 and not alive(second)
    third = watchdog_of(renewed)

    stop = fab("stop", *flags, "--json")
    assert stop.returncode == 0 and third not in stop.json["pids"]
    assert not alive(third) and group_members(renewed["pid"]) == []
    assert not os.path.exists(renewed["pidfile"])


def test_the_expiry_signals_its_own_group_not_the_process_its_recorded_pid_now_names(fab, site, spawn_as_user,
                                                                                       as_user):
    """As after PID reuse: the pidfile and metadata name an unrelated process of
    the same user. The watchdog ends its own group, leaves that process and the
    state that no longer names its server alone."""
    flags = where(site, free_port())
    data = started(fab, flags, "--ttl", "8s", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    members = group_members(data["pid"])
    runner = spawn_as_user(["sleep", "300"])
    assert wait_for(lambda: children(runner.pid))
    unrelated = children(runner.pid)[0]
    meta = Path(data["pidfile"]).with_name("server.json")
    recorded = json.loads(meta.read_text())
    recorded["pid"] = unrelated
    as_user_sh(as_user, 'printf "%s\\n" "$1" > "$2" && printf "%s" "$3" > "$4"', unrelated, data["pidfile"],
               json.dumps(recorded), meta)
    assert wait_for(lambda: not any(alive(pid) for pid in members), timeout=8 + 30)
    assert alive(unrelated) and Path(data["pidfile"]).read_text() == f"{unrelated}\n"
    assert Path(data["log"]).read_text().rstrip("\n").splitlines()[-1].endswith(
        f"expired: the ttl ended at {data['expires_at']}, so the server was stopped")
    stop = fab("stop", *flags, "--json")  # the stale state goes; the unrelated process stays
    assert stop.returncode == 0 and "stale pidfile" in stop.json["message"]
    assert alive(unrelated) and not os.path.exists(data["pidfile"])


@pytest.mark.parametrize("flag,value,message", [
    ("--ttl", "0", "--ttl must be more than 0 seconds and at most 366d, not '0'"),
    ("--ttl", "5x", "--ttl must be a duration such as 30m, 2h or 1d (a bare number is seconds), not '5x'"),
])
def test_bad_ttl_values_exit_2_with_one_line_before_connecting(fab, site, flag, value, message):
    result = fab("start", *where(site, free_port()), flag, value)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"fabserve-target: {message}"


def test_bad_log_keep_exits_2_with_one_line_before_connecting(fab, site):
    result = fab("start", *where(site, free_port()), env={"FABRIC_FABSERVE_LOG_KEEP": "-1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("fabserve-target: fabserve.log_keep must be a whole number, not '-1' "
                                     "(from FABRIC_FABSERVE_LOG_KEEP)")


def test_each_start_keeps_the_previous_runs_logs_and_previous_shows_the_last(fab, site, as_user):
    flags = where(site, free_port())
    none = fab("logs", *flags, "--previous")
    assert none.returncode == 1 and ": logs failed: no previous log at " in none.stderr
    for run in (1, 2, 3):
        data = started(fab, flags)
        as_user_sh(as_user, 'echo "mark of run $1" >> "$2"', run, data["log"])
        if run < 3:
            assert fab("stop", *flags).returncode == 0
    log = Path(data["log"])
    assert sorted(path.name for path in log.parent.glob("server.log*")) == [
        "server.log", "server.log.1", "server.log.2"]
    assert "mark of run 1" in (log.parent / "server.log.2").read_text()
    previous = fab("logs", *flags, "--previous", "--lines", "1000", "--json").json
    assert previous["ok"] and "mark of run 2" in previous["lines"] and "mark of run 3" not in previous["lines"]
    assert previous["message"].endswith(f"lines of {log}.1")
    human = fab("logs", *flags, "--previous", "--lines", "5")
    assert human.returncode == 0 and "mark of run 2\n" in human.stdout and "run 3" not in human.stdout

    assert fab("restart", *flags, env={"FABRIC_FABSERVE_LOG_KEEP": "1"}).returncode == 0
    assert sorted(path.name for path in log.parent.glob("server.log*")) == ["server.log", "server.log.1"]
    assert "mark of run 3" in (log.parent / "server.log.1").read_text()
    assert fab("stop", *flags).returncode == 0


@pytest.fixture(params=["home", "tmpfs"])
def log_filesystem(request, target, monkeypatch):
    """Where the instance's state lives: the test user's home (where cuts collapse
    the front, on ext4 or XFS), or a tmpfs (where they punch a hole)."""
    if request.param == "home":
        yield
        return
    with bed_outcome(), tmpfs_of(target, "16m") as mountpoint:
        monkeypatch.setenv("FABRIC_FABSERVE_STATE_DIR", str(mountpoint / "state"))
        yield


def test_a_log_over_the_cap_is_cut_at_the_next_call_and_a_follower_keeps_its_place(fab, target, site, as_user,
                                                                                   log_filesystem):
    flags = where(site, free_port())
    data = started(fab, flags)
    log = Path(data["log"])
    follower, lines = start_follower(fab, target, flags)
    try:
        assert wait_line(lines, "")  # its tail: it follows from here
        as_user_sh(as_user, 'i=0; while [ $i -lt 3000 ]; do echo "pushed $i of 3000"; i=$((i+1)); done >> "$1"',
                   log)
        assert any("pushed 2999 of 3000" in line for line in wait_line(lines, "pushed 2999 of 3000"))
        assert log.stat().st_size > 50_000
        status = fab("status", *flags, "--json", env={"FABRIC_FABSERVE_LOG_MAX": "16K"})
        assert status.returncode == 0
        kept = shown(log)
        assert kept_size(log) <= 8192 + 4096
        assert kept[0].startswith("--- fabserve ") and "log cut to its newest part" in kept[0]
        assert kept[-1] == "pushed 2999 of 3000" and kept[1].startswith("pushed ")
        numbers = [int(line.split()[1]) for line in kept[1:]]
        assert numbers == list(range(numbers[0], 3000))  # whole lines, the newest, none missing
        shown_by_logs = fab("logs", *flags, "--lines", "100000", "--json").json["lines"]
        # A punched cut's hole shows as nothing.
        assert shown_by_logs[1:] == kept[1:] and shown_by_logs[0].rstrip() == kept[0].rstrip()
        as_user_sh(as_user, 'echo "after the cut" >> "$1"', log)
        seen = wait_line(lines, "after the cut")
        assert [line.rstrip("\n") for line in seen] == ["after the cut"], seen  # nothing shown twice
    finally:
        os.killpg(follower.pid, signal.SIGTERM)
        follower.wait(timeout=10)
    assert fab("stop", *flags).returncode == 0


@pytest.mark.parametrize("kind", KINDS)
def test_cuts_racing_a_fast_writer_lose_no_line_on_each_file_system(root, kind):
    """tmpfs and btrfs cannot collapse a range: a copy and truncate lost lines
    there (about one in two cuts on tmpfs, more on btrfs); ext4 collapses."""
    with bed_outcome(), scratch_filesystem(kind) as mountpoint:
        found = race(mountpoint / "server.log", 200)
    assert found == LOSSLESS


def recorded_watchdog(data) -> int:
    """The watchdog server.json records for the instance `data` describes."""
    meta = json.loads(Path(data["pidfile"]).with_name("server.json").read_text())
    return meta["watchdog"]["pid"]


def last_log_line(data) -> str:
    return Path(data["log"]).read_text().rstrip("\n").splitlines()[-1]


def past_expiry_without_its_watchdog(call, flags, ttl=4, env=None):
    """A server started with a short TTL whose watchdog was killed (as root, -9),
    still serving once its expiry has passed: the start's result."""
    data = call("start", *flags, "--ttl", str(ttl), "--json",
                env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE, **(env or {})}).json
    assert data["state"] == "running", data
    watchdog = recorded_watchdog(data)
    assert watchdog == watchdog_of(data)
    os.kill(watchdog, signal.SIGKILL)
    assert wait_for(lambda: not alive(watchdog), timeout=10)
    time.sleep(data["expires_in"] + 1.5)
    assert all(alive(pid) for pid in data["pids"]) and port_listening(data["port"])  # nothing ended it yet
    return data


def assert_ended(data):
    assert wait_for(lambda: not group_members(data["pid"]), timeout=10), group_members(data["pid"])
    assert not any(alive(pid) for pid in data["pids"]) and not port_listening(data["port"])
    assert not os.path.exists(data["pidfile"])


def test_a_killed_watchdog_is_reaped_not_left_a_zombie_of_the_server(run, mode, site):
    flags = where(site, free_port())
    data = run("start", *flags, "--ttl", "1h").json
    watchdog = recorded_watchdog(data)
    os.kill(watchdog, signal.SIGKILL)
    # Its parent reaps it: not the server (runserver waits only for its own child), which would keep a zombie.
    assert wait_for(lambda: proc_state(watchdog) is None, timeout=10), (proc_state(watchdog), parent(watchdog))
    assert all(alive(pid) for pid in data["pids"])
    assert run("stop", *flags).returncode == 0


def test_status_ends_a_server_past_its_expiry_whose_watchdog_was_killed(run, mode, site):
    flags = where(site, free_port())
    data = past_expiry_without_its_watchdog(lambda *a, **kw: run(*a, json=False, **kw), flags)
    status = run("status", *flags)
    assert status.returncode == 3, status.stderr + status.stdout
    expected = f"expired at {data['expires_at']} (ttl); its watchdog was gone, so status stopped pids "
    assert status.json["state"] == "stopped" and status.json["message"].startswith(expected), status.json
    assert_ended(data)
    assert last_log_line(data).endswith(f"expired: the ttl ended at {data['expires_at']}, so the server was stopped; "
                                        f"its watchdog was gone, so status stopped pids "
                                        f"{' '.join(map(str, data['pids']))}")
    again = run("status", *flags, json=False)
    assert again.returncode == 3 and again.stdout.strip().endswith(f": expired at {data['expires_at']} (ttl)")


@pytest.mark.parametrize("verb", ["list", "start", "stop", "logs"])
def test_every_call_that_reads_the_instance_ends_it_past_its_expiry(fab, site, verb, own_state):
    port = free_port()
    flags = where(site, port)
    data = past_expiry_without_its_watchdog(fab, flags, env=own_state)
    expired = f"expired at {data['expires_at']} (ttl); its watchdog was gone, so {verb} stopped pids "
    if verb == "list":
        result = fab("list", env=own_state)  # (with runservers of other sessions fabserve did not start)
        row = next(line for line in result.stdout.splitlines() if f" {port} " in line).split()
        assert result.returncode == 0 and row[1:4] == [str(port), "expired", "yes"], result.stdout
        again = fab("list", "--json", env=own_state)  # ended: stopped rows leave list
        assert again.returncode == 0 and f'"port": {port},' not in again.stdout, again.stdout
    elif verb == "start":
        result = fab("start", *flags, "--json", env=own_state)
        assert result.returncode == 0 and result.json["state"] == "running", result.stdout
        assert expired in result.json["message"] and result.json["pid"] != data["pid"]
        assert not any(alive(pid) for pid in data["pids"])
        assert fab("stop", *flags, env=own_state).returncode == 0
    elif verb == "stop":
        result = fab("stop", *flags, "--json", env=own_state)
        assert result.returncode == 0 and result.json["message"].startswith(expired), result.stdout
        assert result.json["changed"] is True and result.json["pids"] == data["pids"]
    else:
        result = fab("logs", *flags, "--json", env=own_state)
        assert result.returncode == 0 and result.json["state"] == "stopped", result.stdout
        assert result.json["lines"][-1].endswith(f"its watchdog was gone, so logs stopped pids "
                                                 f"{' '.join(map(str, data['pids']))}")
    assert_ended(data)


def test_restart_past_the_expiry_gives_the_new_server_a_whole_ttl_again(fab, site):
    flags = where(site, free_port())
    data = past_expiry_without_its_watchdog(fab, flags, ttl=10)  # the new server's start may take seconds
    restarted = fab("restart", *flags, "--json", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    new = restarted.json
    assert new["state"] == "running" and 0 < new["expires_in"] <= 10, new
    assert new["expires_at"] > data["expires_at"] and new["message"].startswith("restarted on ")
    assert not any(alive(pid) for pid in data["pids"])
    watchdog = watchdog_of(new)
    # Its own watchdog ends it once its whole TTL has passed, and says so.
    assert wait_for(lambda: not group_members(new["pid"]) and not port_listening(new["port"]), timeout=10 + 30)
    assert not alive(watchdog)
    assert last_log_line(new).endswith(f"expired: the ttl ended at {new['expires_at']}, so the server was stopped")


def test_start_with_a_ttl_applies_it_to_the_server_that_already_runs(run, mode, site):
    flags = where(site, free_port())
    first = run("start", *flags, "--ttl", "1h").json
    in_group = watchdog_of(first)
    second = run("start", *flags, "--ttl", "4s", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    assert second.returncode == 0, second.stdout + second.stderr
    applied = second.json
    assert applied["changed"] is True and applied["pids"] == first["pids"] and 0 < applied["expires_in"] <= 4
    assert applied["message"] == f"already running on {first['url']}; the ttl now applies to it"
    attached = recorded_watchdog(applied)
    assert attached != in_group and alive(attached) and attached not in group_members(first["pid"])
    assert wait_for(lambda: proc_state(in_group) is None, timeout=10)  # the replaced one: ended and reaped
    assert run("status", *flags).json["expires_at"] == applied["expires_at"]
    assert wait_for(lambda: not group_members(first["pid"]) and not port_listening(first["port"]), timeout=4 + 30)
    assert wait_for(lambda: not alive(attached), timeout=10)
    assert last_log_line(first).endswith(f"expired: the ttl ended at {applied['expires_at']}, so the server was "
                                         f"stopped")
    status = run("status", *flags, json=False)
    assert status.returncode == 3 and status.stdout.strip().endswith(f": expired at {applied['expires_at']} (ttl)")


def test_a_ttl_given_to_a_running_server_without_one_is_shown_kept_by_restart_and_ended_by_stop(fab, site):
    flags = where(site, free_port())
    first = started(fab, flags)
    assert first["expires_at"] is None
    human = fab("start", *flags, "--ttl", "1h")
    assert human.returncode == 0
    assert human.stdout.startswith(f"{fab.remote_host}: already running on {first['url']}; the ttl now applies to "
                                   f"it (pids ")
    assert "; expires in 59m" in human.stdout or "; expires in 1h" in human.stdout
    status = fab("status", *flags, "--json").json
    assert 3500 < status["expires_in"] <= 3600 and status["pids"] == first["pids"]
    attached = recorded_watchdog(status)
    restarted = fab("restart", *flags, "--json").json  # the duration given to the running server, again
    assert restarted["state"] == "running" and 3500 < restarted["expires_in"] <= 3600
    assert wait_for(lambda: not alive(attached), timeout=10)
    assert fab("stop", *flags).returncode == 0


def test_start_with_a_ttl_refuses_a_server_fabserve_did_not_start(fab, site, spawn_as_user):
    port = free_port()
    spawn_as_user([site / ".venv" / "bin" / "python", "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=site)
    assert wait_for(lambda: port_listening(port), timeout=30)
    result = fab("start", *where(site, port), "--ttl", "1h")
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert result.stderr.strip().endswith(f"start failed: the server on port {port} was not started by fabserve, "
                                          f"so --ttl cannot be applied to it: stop it, then start it with --ttl")
    assert port_listening(port)
    assert fab("stop", *where(site, port)).returncode == 0
