"""--idle-ttl and extend end to end, over the real sshd, as the unprivileged test
user, against real Django, with the starting SSH connection closed (fab has
exited): a server nobody requests stops after its idle window; one requested
every second outlives twice its window; extend pushes a near expiry; with its
watchdog killed, a status past the idle deadline ends it; list shows IDLE; a
Procfile's processes all go when web is idle, and extend reaches each."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from helpers import alive, free_port, group_members, http_status, pids_with_cwd_under, port_listening, wait_for, where
from test_lifetimes import GRACE, last_log_line, recorded_watchdog, started, watchdog_of
from test_processes import every_pid, table, watch_child

WINDOW = 5  # seconds of the idle windows below: short, yet seconds more than a request's gap under load


def recorded(data) -> dict:
    """The metadata (server.json) of the instance `data` describes."""
    return json.loads(Path(data["pidfile"]).with_name("server.json").read_text())


def test_a_server_nobody_requests_stops_after_its_idle_window(fab, site, own_state):
    port = free_port()
    flags = where(site, port)
    data = started(fab, flags, "--idle-ttl", f"{WINDOW}s", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE, **own_state})
    watchdog = watchdog_of(data)  # --idle-ttl alone gets a watchdog too
    assert data["idle_expires_at"] is not None and data["expires_at"] == data["idle_expires_at"]
    assert 0 < data["expires_in"] <= WINDOW
    members = group_members(data["pid"])
    assert wait_for(lambda: not group_members(data["pid"]) and not port_listening(port), timeout=WINDOW + 30)
    assert not any(alive(pid) for pid in members) and not alive(watchdog)
    assert not os.path.exists(data["pidfile"])
    assert " expired: the idle ttl ended at " in last_log_line(data)
    after = fab("status", *flags, "--json", env=own_state)
    assert after.returncode == 3 and after.json["idle_expires_at"] is None and after.json["expires_at"] is None
    assert after.json["message"].startswith("expired at ") and after.json["message"].endswith(" (idle ttl)")
    listed = fab("list", "--all", env=own_state)
    assert next(line for line in listed.stdout.splitlines() if f" {port} " in line).split()[2] == "expired"


def test_a_server_requested_every_second_outlives_twice_its_idle_window(fab, site):
    flags = where(site, free_port())
    data = started(fab, flags, "--idle-ttl", f"{WINDOW}s", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    until = time.monotonic() + 2 * WINDOW + 1
    while time.monotonic() < until:
        assert http_status(data["url"], timeout=30) == 200
        time.sleep(1)
    assert all(alive(pid) for pid in data["pids"]) and port_listening(data["port"])
    http_status(data["url"], timeout=30)  # a request: the status call below may take seconds under load
    status = fab("status", *flags, "--json").json
    assert status["state"] == "running" and status["pids"] == data["pids"]
    assert status["idle_expires_at"] > data["idle_expires_at"]  # pushed on by the requests
    # Left alone now, it goes.
    assert wait_for(lambda: not group_members(data["pid"]), timeout=WINDOW + 30)
    assert " expired: the idle ttl ended at " in last_log_line(data)


def test_extend_pushes_a_near_expiry_and_without_flags_renews_the_recorded_durations(fab, site):
    flags = where(site, free_port())
    data = started(fab, flags, "--ttl", "8s", "--idle-ttl", "1h", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    first = watchdog_of(data)
    assert data["expires_at"] < data["idle_expires_at"]  # the ttl comes first
    armed = recorded(data)["idle_since"]
    pushed = fab("extend", *flags, "--ttl", "1h", "--json")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert pushed.json["changed"] is True and pushed.json["pids"] == data["pids"]
    assert pushed.json["message"].endswith("; the ttl now applies to it")
    assert 3500 < pushed.json["expires_in"] <= 3600
    assert recorded(pushed.json)["idle_since"] == armed  # --ttl alone leaves the idle window as it was
    attached = recorded_watchdog(pushed.json)
    assert attached != first and wait_for(lambda: not alive(first), timeout=10)
    time.sleep(8 + 2)  # past the first expiry: its watchdog is gone, the new one waits
    assert all(alive(pid) for pid in data["pids"]) and alive(attached)

    renewed = fab("extend", *flags, "--json").json  # the recorded durations, from now: 1h and 1h
    assert renewed["ok"] and renewed["message"].endswith("; the ttl and the idle ttl now apply to it")
    assert recorded(renewed)["idle_since"] > armed
    assert 3500 < renewed["expires_in"] <= 3600 and renewed["idle_expires_at"] >= pushed.json["idle_expires_at"]
    human = fab("extend", *flags, "--idle-ttl", "2h")
    assert human.returncode == 0 and "; the idle ttl now applies to it" in human.stdout
    assert "; idle until " in human.stdout and "; expires in 59m" in human.stdout
    assert fab("stop", *flags).returncode == 0
    stopped = fab("extend", *flags)
    assert stopped.returncode == 1 and stopped.stdout == ""
    assert stopped.stderr.strip().endswith("extend failed: not running"), stopped.stderr


def test_status_past_the_idle_deadline_ends_the_server_whose_watchdog_was_killed(fab, site):
    flags = where(site, free_port())
    data = started(fab, flags, "--idle-ttl", f"{WINDOW}s", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    watchdog = recorded_watchdog(data)
    os.kill(watchdog, signal.SIGKILL)
    assert wait_for(lambda: not alive(watchdog), timeout=10)
    time.sleep(WINDOW + 2)
    assert all(alive(pid) for pid in data["pids"]) and port_listening(data["port"])  # nothing ended it yet
    status = fab("status", *flags, "--json")
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.json["message"].startswith("expired at ")
    assert " (idle ttl); its watchdog was gone, so status stopped pids " in status.json["message"]
    assert wait_for(lambda: not group_members(data["pid"]) and not port_listening(data["port"]), timeout=10)
    assert last_log_line(data).endswith(f"its watchdog was gone, so status stopped pids "
                                        f"{' '.join(map(str, data['pids']))}")


def test_list_shows_both_deadlines_and_restart_reruns_the_idle_ttl(fab, site, own_state):
    port = free_port()
    flags = where(site, port)
    started(fab, flags, "--ttl", "2h", "--idle-ttl", "1h", env=own_state)
    listed = fab("list", env=own_state)
    header, row = listed.stdout.splitlines()[1].split(), next(
        line for line in listed.stdout.splitlines() if f" {port} " in line).split()
    assert header[7:9] == ["EXPIRES", "IDLE"], header
    assert row[7] == row[8] and row[8].startswith("59m"), row  # the idle deadline comes first
    restarted = fab("restart", *flags, "--json", env=own_state).json
    assert restarted["state"] == "running" and restarted["idle_expires_at"] is not None
    assert 3500 < restarted["expires_in"] <= 3600
    assert fab("stop", *flags, env=own_state).returncode == 0


def test_extend_reaches_every_process_of_a_procfile_instance_and_all_go_once_web_is_idle(
        fab, target, make_procfile_project):
    project = make_procfile_project()
    flags = where(project, free_port())
    data = started(fab, flags, "--idle-ttl", "1h")
    every = every_pid(data) | {watch_child(table(data)["watch"])}
    # The companions write their own logs: only web's requests count, and there are none.
    pushed = fab("extend", *flags, "--idle-ttl", f"{WINDOW}s", "--json", env={"FABRIC_FABSERVE_STOP_TIMEOUT": GRACE})
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert [row["pids"] for row in pushed.json["processes"]] == [row["pids"] for row in data["processes"]]
    assert all(row["state"] == "running" for row in pushed.json["processes"])
    assert wait_for(lambda: not [pid for pid in every if alive(pid)], timeout=WINDOW + 30)
    assert wait_for(lambda: pids_with_cwd_under(project, target.uid) == [], timeout=10)
    status = fab("status", *flags, "--json")
    assert status.returncode == 3 and status.json["message"].endswith(" (idle ttl)"), status.json
