"""--ttl and bounded logs end to end, over the real sshd, as the unprivileged test
user, against real Django: a server that stops itself with nobody calling, its
watchdog gone with a stop, kept by restart, harmless to a process its recorded
PID names; previous runs' logs, --previous, and a log cut to its cap under a follower."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from bed.procs import children, cmdline
from helpers import alive, free_port, group_members, port_listening, wait_for, where
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


def test_a_server_with_a_ttl_stops_itself_with_nobody_calling(fab, site):
    port = free_port()
    flags = where(site, port)
    # fab has exited: the SSH session that started the server is closed.
    data = started(fab, flags, "--ttl", "6s", "--timeout", "30", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    watchdog = watchdog_of(data)
    assert len(data["pids"]) == 2 and 0 < data["expires_in"] <= 6
    members = group_members(data["pid"])
    assert wait_for(lambda: not group_members(data["pid"]) and not port_listening(port), timeout=6 + 30)
    assert not any(alive(pid) for pid in members) and not alive(watchdog)
    assert not os.path.exists(data["pidfile"]) and not os.path.exists(Path(data["pidfile"]).with_name("server.json"))
    last = Path(data["log"]).read_text().rstrip("\n").splitlines()[-1]
    assert last.startswith("--- fabserve ") and last.endswith("expired: the ttl ended, so the server was stopped")
    after = fab("status", *flags, "--json")
    assert after.returncode == 3 and after.json["expires_at"] is None and after.json["expires_in"] is None


def test_status_shows_the_expiry_restart_keeps_it_and_stop_leaves_no_watchdog(fab, site):
    flags = where(site, free_port())
    data = started(fab, flags, "--ttl", "1h")
    first = watchdog_of(data)
    status = fab("status", *flags, "--json")
    assert status.json["pids"] == data["pids"] and first not in status.json["pids"]
    assert status.json["expires_at"] == data["expires_at"] and 3500 < status.json["expires_in"] <= 3600
    assert data["expires_at"].endswith("Z") and len(data["expires_at"]) == len("2026-12-01T22:00:00Z")
    human = fab("status", *flags)
    assert f"; expires in 59m" in human.stdout and data["expires_at"] in human.stdout
    rows = fab("list", "--json").json  # one line, or a list of them
    listed = [row for row in (rows if isinstance(rows, list) else [rows]) if row["port"] == data["port"]]
    assert len(listed) == 1 and listed[0]["pids"] == data["pids"], listed  # the watchdog left out here too
    assert listed[0]["expires_at"] == data["expires_at"]

    restarted = fab("restart", *flags, "--json").json
    assert restarted["state"] == "running" and restarted["expires_at"] == data["expires_at"]
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
    assert Path(data["log"]).read_text().rstrip("\n").splitlines()[-1].endswith("expired: the ttl ended, so "
                                                                                  "the server was stopped")
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


def test_a_log_over_the_cap_is_cut_at_the_next_call_and_a_follower_keeps_its_place(fab, target, site, as_user):
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
        kept = log.read_text().splitlines()
        assert log.stat().st_size <= 8192 + 4096
        assert kept[0].startswith("--- fabserve ") and "log cut to its newest part" in kept[0]
        assert kept[-1] == "pushed 2999 of 3000" and kept[1].startswith("pushed ")
        numbers = [int(line.split()[1]) for line in kept[1:]]
        assert numbers == list(range(numbers[0], 3000))  # whole lines, the newest, none missing
        as_user_sh(as_user, 'echo "after the cut" >> "$1"', log)
        seen = wait_line(lines, "after the cut")
        assert [line.rstrip("\n") for line in seen] == ["after the cut"], seen  # nothing shown twice
    finally:
        os.killpg(follower.pid, signal.SIGTERM)
        follower.wait(timeout=10)
    assert fab("stop", *flags).returncode == 0
