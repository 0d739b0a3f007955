"""The idle deadline's arithmetic: from the log's mtime or the window's arming,
whichever is later; the earlier of it and the TTL's in results; the log line
that says the idle TTL ended a server, and list's IDLE column."""

import json
import os
import time

import pytest

from tasks import listing
from tasks.agent import ttl
from tasks.agent.extend import durations
from tasks.agent.protocol import AgentError
from tasks.agent.records import RERUN
from tasks.agent.state import Request


def test_the_idle_deadline_counts_from_the_last_write_of_the_log_or_the_arming_whichever_is_later(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("GET / 200\n")
    os.utime(log, (1000, 1000))
    assert ttl.idle_expiry(60, 900.0, str(log)) == 1060  # a request after the arming
    assert ttl.idle_expiry(60, 1500.0, str(log)) == 1560  # armed (extend) after the last request
    assert ttl.idle_expiry(60, 1500.0, str(tmp_path / "gone.log")) == 1560  # no log: from the arming
    assert ttl.idle_expiry(None, 1500.0, str(log)) is None


def test_a_request_written_to_the_log_pushes_the_deadline_on(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("")
    os.utime(log, (1000, 1000))
    before = ttl.idle_expiry(5, 0.0, str(log))
    with open(log, "a") as handle:
        handle.write('"GET / HTTP/1.1" 200 10\n')
    assert ttl.idle_expiry(5, 0.0, str(log)) > before


def test_the_metadata_gives_the_idle_ttl_and_its_arming_or_nothing():
    assert ttl.idle_ttl_of({"idle_ttl": 30, "idle_since": 12.5}) == (30, 12.5)
    assert ttl.idle_ttl_of({"idle_ttl": 30}) == (30, 0.0)  # armed at no recorded time: the log alone counts
    for meta in ({}, {"idle_ttl": None}, {"idle_ttl": True}, {"idle_ttl": 0}, {"idle_ttl": "30"}, None):
        assert ttl.idle_ttl_of(meta) == (None, None), meta


def test_results_say_the_earlier_deadline_and_the_idle_one():
    now = time.time()
    both = ttl.expiry_fields(now + 100, now + 50)
    assert both["expires_at"] == both["idle_expires_at"] and 48 <= both["expires_in"] <= 50
    ttl_first = ttl.expiry_fields(now + 100, now + 500)
    assert ttl_first["expires_at"] == ttl.iso_time(now + 100)
    assert ttl_first["idle_expires_at"] == ttl.iso_time(now + 500)
    assert ttl.expiry_fields(None, now + 50)["expires_at"] == ttl.iso_time(now + 50)
    assert ttl.expiry_fields(now + 100)["idle_expires_at"] is None
    assert ttl.expiry_fields(None) == {"expires_at": None, "expires_in": None, "idle_expires_at": None}
    assert ttl.expiry_fields(now - 5, None)["expires_in"] == 0
    assert ttl.earliest(None, None) is None and ttl.earliest(3, None) == 3 and ttl.earliest(7, 4) == 4


def test_the_log_line_of_an_idle_expiry_is_read_back_as_such(tmp_path):
    log = tmp_path / "server.log"
    inst = type("Inst", (), {"log": str(log)})()
    line = ttl.expiry_line(1796162400, "with SIGKILL after 2s grace", idle=True)
    assert line == "expired: the idle ttl ended at 2026-12-01T22:00:00Z, so the server was stopped; with SIGKILL " \
                   "after 2s grace"
    log.write_text(f"serving\n--- fabserve 2026-12-01 22:00:01 {line}\n")
    assert ttl.expired_at(inst) == "2026-12-01T22:00:00Z (idle ttl)"


def test_the_request_carries_an_idle_ttl_and_restart_reruns_it():
    assert Request({}).idle_ttl is None and Request({"idle_ttl": 300}).idle_ttl == 300
    assert ("idle_ttl", int) in RERUN


def test_list_shows_dash_without_a_running_deadline():
    assert listing.idle_of({"idle_expires_at": "2026-12-07T20:00:00Z", "expires_at": None, "expires_in": None}) == "-"


def extending(tmp_path, meta, started_with, **given):
    """An instance as extend sees it: its request, metadata and instance.json."""
    (tmp_path / "instance.json").write_text(json.dumps({"started_with": started_with}))
    return type("Inst", (), {"req": Request(dict(given, action="extend")), "dir": str(tmp_path),
                             "recorded": meta, "port": 8000})()


def test_extend_takes_the_flags_given_else_renews_what_the_instance_was_started_with(tmp_path):
    meta = {"expires_at": 1.0e10, "idle_ttl": 60, "idle_since": 5.0}
    assert durations(extending(tmp_path, meta, {"ttl": 3600}, ttl=7200)) == (7200, None, False)
    assert durations(extending(tmp_path, meta, {"ttl": 3600}, idle_ttl=90)) == (None, 90, False)
    assert durations(extending(tmp_path, meta, {"ttl": 3600, "idle_ttl": 60})) == (3600, None, True)
    idle_only = {"idle_ttl": 60, "idle_since": 5.0}
    assert durations(extending(tmp_path, idle_only, {"idle_ttl": 60})) == (None, None, True)
    with pytest.raises(AgentError, match="has no ttl and no idle ttl to extend: give --ttl or --idle-ttl"):
        durations(extending(tmp_path, {"pid": 1}, {"ttl": None}))
