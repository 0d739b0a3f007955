"""Many instances per host, pure and in-process parts: the port range and its
checks, the port chooser on captured /proc/net/tcp text, a port given nowhere
travelling as null, naming the project's one instance from its state, and the
list table and JSON lines on captured rows."""

import fcntl
import json
import os

import pytest
from fabric import Config

from tasks import listing, ns, settings
from tasks.agent import dispatch, launch, locate, protocol, sockets, state, verbs
from tasks.config import host_values, merged

# Listeners on 18000 (127.0.0.1), 18001 (0.0.0.0), 18003 (127.0.0.2); 18002 is only a connection.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4650 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20301 1 0 100 0 0 10 0
   1: 00000000:4651 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20302 1 0 100 0 0 10 0
   2: 0100007F:4652 0100007F:A7DA 01 00000000:00000000 00:00000000 00000000     0        0 20303 1 0 100 0 0 10 0
   3: 0200007F:4653 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20304 1 0 100 0 0 10 0
"""
# An IPv6 wildcard listener on 18004, which holds the port for every IPv4 address too.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:4654 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55321 1 0 100 0 0 10 0
"""


def parse_listen_inodes(text, port):
    """Socket inodes listening on `port` in /proc/net/tcp or tcp6 text."""
    return sockets.listeners([text]).get(port, set())


# ------------------------------------------------------------------ the range


@pytest.mark.parametrize("text,expected", [("8000-8999", (8000, 8999)), (" 18000-18000 ", (18000, 18000)),
                                           ("1-65535", (1, 65535))])
def test_a_port_range_is_low_dash_high(text, expected):
    assert protocol.port_range(text) == expected


@pytest.mark.parametrize("text", ["", "8000", "9000-8000", "0-10", "8000-65536", "a-b", "８０００-８９９９",
                                  "8000 - 8999", "-8000", None, 8000])
def test_a_range_that_is_empty_or_not_low_dash_high_is_refused(text):
    with pytest.raises(ValueError, match="must be LOW-HIGH"):
        protocol.port_range(text)


def test_a_bad_range_is_a_usage_error_naming_where_it_was_given():
    values = merged({"port_range": "9000-8000"}, {"project": "/srv/a", "port": "auto"})
    values.origin["port_range"] = ("port_range", " (from the inventory)")
    with pytest.raises(settings.UsageError) as caught:
        settings.request("start", values, [])
    assert str(caught.value) == ("port_range must be LOW-HIGH, two ports from 1 to 65535 with LOW at most "
                                 "HIGH, not '9000-8000' (from the inventory)")


def test_port_takes_auto_and_still_refuses_anything_else():
    assert settings.parse_port("auto") == "auto" and settings.parse_port(" auto ") == "auto"
    assert settings.parse_port("18000") == 18000
    for bad in ("Auto", "automatic", "", "0"):
        with pytest.raises(settings.Invalid, match="must be a number from 1 to 65535, not"):
            settings.parse_port(bad)


# ------------------------------------------------------------------ the chooser


def test_the_chooser_skips_listeners_on_the_address_wildcards_and_taken_ports():
    texts = [TCP, TCP6]
    # 18000: 127.0.0.1 listens; 18001: 0.0.0.0; 18002: a connection only, so free.
    assert sockets.choose_port(18000, 18010, set(), texts, "127.0.0.1") == 18002
    assert sockets.choose_port(18000, 18010, {18002}, texts, "127.0.0.1") == 18003  # 127.0.0.2 is another address
    assert sockets.choose_port(18003, 18010, set(), texts, "127.0.0.2") == 18005  # its own, then the v6 wildcard
    assert sockets.choose_port(18000, 18010, {18002, 18003}, texts, "127.0.0.1") == 18005
    # A wildcard bind conflicts with every listener.
    assert sockets.choose_port(18000, 18010, set(), texts, "0.0.0.0") == 18002
    # Every port it could choose, in order: a start whose port was taken at bind time picks among them.
    assert sockets.free_ports(18000, 18010, {18002}, texts, "127.0.0.1") == [18003, 18005, 18006, 18007, 18008,
                                                                           18009, 18010]


def test_listeners_map_each_listening_port_to_its_sockets_as_listen_inodes_reads_them():
    found = sockets.listeners([TCP, TCP6])
    assert found == {18000: {"20301"}, 18001: {"20302"}, 18003: {"20304"}, 18004: {"55321"}}
    for port in (18000, 18002, 18004):
        assert sockets.listen_inodes(port, found) == parse_listen_inodes(TCP, port) | \
            parse_listen_inodes(TCP6, port)


def test_the_chooser_says_none_when_the_range_is_full():
    assert sockets.choose_port(18000, 18001, set(), [TCP], "127.0.0.1") is None
    assert sockets.choose_port(18002, 18002, {18002}, [TCP], "127.0.0.1") is None


def test_a_held_lock_is_seen_and_a_free_one_is_left_free(tmp_path):
    path = tmp_path / "lock"
    assert not state.lock_held(str(path))  # no file: nobody holds it
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    assert not state.lock_held(str(path))
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert state.lock_held(str(path))
    finally:
        os.close(fd)
    assert not state.lock_held(str(path))


# ------------------------------------------------------------- port given nowhere


def loaded_config(**fabserve):
    config = Config(overrides={"fabserve": fabserve} if fabserve else {})
    config.load_collection(ns.configuration())
    return config


def request_for(action, config, flags=None, host_vars=None):
    values = host_values(config, host_vars or {}, {"project": "/srv/a", **(flags or {})})
    return settings.request(action, values, [])


def test_a_port_given_nowhere_travels_as_null_except_for_start():
    config = loaded_config()
    for action in ("stop", "status", "restart", "logs"):
        assert request_for(action, config)["port"] is None, action
    assert request_for("start", config)["port"] == 8000
    assert request_for("start", config)["port_range"] == "8000-8999"


def test_a_port_given_anywhere_is_sent():
    assert request_for("status", loaded_config(), {"port": "18001"})["port"] == 18001
    assert request_for("status", loaded_config(), host_vars={"port": 18002})["port"] == 18002
    assert request_for("stop", loaded_config(port=18003))["port"] == 18003
    assert request_for("start", loaded_config(port="auto"))["port"] == "auto"


def test_list_needs_no_project():
    values = host_values(loaded_config(), {}, {})
    req = settings.request("list", values, [])
    assert req["action"] == "list" and req["project"] is None


# ------------------------------------------- the project's one instance, from its state


def state_of(tmp_path, project, port, log=True):
    """An instance directory of `project` on `port` as a stopped instance leaves it."""
    req = agent_request(tmp_path, project, "status", port)
    inst = state.Instance(state.Host(state.Request(req)), state.Request(req))
    for path in state.levels(inst.base, inst.dir):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    if log:
        with open(inst.log, "w") as handle:
            handle.write("--- fabserve\n")
        os.chmod(inst.log, 0o600)
    verbs.remember(inst)
    return inst


def agent_request(tmp_path, project, action, port=None):
    return {"action": action, "project": str(project), "port": port, "addr": None, "python": None,
            "settings": None, "env": {}, "noreload": False, "start_timeout": 5.0, "stop_timeout": 2.0,
            "lines": 10, "follow": False, "state_dir": str(tmp_path / "state"), "port_range": "18100-18199"}


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "site"
    path.mkdir()
    (path / "manage.py").write_text("")
    return path


def test_no_port_names_the_one_stopped_instance_and_of_several_the_last_written_never_exit_2(tmp_path, project):
    state_of(tmp_path, project, 18101)
    state_of(tmp_path, project, 18150, log=False)  # a lock alone (a stop of nothing) is no instance
    one = dispatch.handle(agent_request(tmp_path, project, "status"))
    assert one["port"] == 18101 and one["state"] == protocol.STOPPED and protocol.exit_code("status", one) == 3
    later = state_of(tmp_path, project, 18102)
    earlier = state_of(tmp_path, project, 18103)  # a start that never came up leaves a log too
    os.utime(earlier.log, (1_000_000, 1_000_000))
    # Nothing runs: only running instances make a project ambiguous (the CI recipe's always-step).
    for action in ("status", "stop", "logs"):
        result = dispatch.handle(agent_request(tmp_path, project, action))
        assert result["port"] == later.port and "ambiguous" not in result, (action, result)
        assert protocol.exit_code(action, result) == (3 if action == "status" else 0), (action, result)
    stop = dispatch.handle(agent_request(tmp_path, project, "stop"))
    assert stop["ok"] and stop["changed"] is False and stop["message"] == "not running"
    named = dispatch.handle(agent_request(tmp_path, project, "status", 18103))
    assert named["port"] == 18103 and protocol.exit_code("status", named) == 3


def test_no_port_and_no_instance_is_port_8000_as_before(tmp_path, project):
    result = dispatch.handle(agent_request(tmp_path, project, "stop"))
    assert result["port"] == 8000 and result["ok"] and result["message"] == "not running"


def test_list_leaves_stopped_instances_to_list_all_which_names_their_projects_and_keeps_out_a_lock_alone(
        tmp_path, project):
    other = tmp_path / "other"
    other.mkdir()
    state_of(tmp_path, project, 18101)
    state_of(tmp_path, other, 18102)
    state_of(tmp_path, other, 18103, log=False)

    def listed(**extra):
        result = dispatch.handle(dict(agent_request(tmp_path, None, "list"), **extra))
        assert result["ok"] and protocol.exit_code("list", result) == 0
        return result, [(row["project"], row["port"], row["state"], row["managed"]) for row in result["rows"]
                        if row["project"] in (str(project), str(other))]

    plain, mine = listed()
    assert mine == [] and plain["message"] == "no servers; 2 stopped (list --all shows them)", plain["message"]
    everything, mine = listed(all=True)
    assert sorted(mine) == sorted([(str(project), 18101, "stopped", None), (str(other), 18102, "stopped", None)])
    assert everything["message"] == "2 servers"


def test_list_all_is_a_flag_of_list_alone_that_travels():
    values = host_values(loaded_config(), {}, {"all": True})
    assert settings.request("list", values, [])["all"] is True
    assert [setting.name for setting in settings.flags_of("list")] == ["json", "all"]


# ------------------------------------------------------------------ the table


ROWS = [
    {"project": "/srv/previews/pr-42", "port": 8001, "state": "running", "managed": True, "pids": [4711, 4712],
     "uptime": 7500, "url": "http://127.0.0.1:8001/", "log": "/home/u/.local/state/fabserve/x/server.log",
     "message": "running on http://127.0.0.1:8001/", "expires_in": 3600, "expires_at": "2026-12-07T20:00:00Z",
     "idle_expires_at": "2026-12-07T20:30:00Z", "branch": "pr-42",
     "commit": "3f9c2a7d41be90aa1234",
     "processes": [{"name": "web", "state": "running"}, {"name": "worker", "state": "exited"},
                   {"name": "watch", "state": "running"}]},
    {"project": "/home/u/scratch", "port": 8042, "state": "running", "managed": False, "pids": [5120],
     "uptime": 180, "url": "http://127.0.0.1:8042/", "log": None, "message": "running; not started by fabserve"},
    {"project": "/srv/b", "port": 8003, "state": "stopped", "managed": None, "pids": [], "url": "http://127.0.0.1:8003/",
     "log": "/s/b/server.log", "message": "not running; stale pidfile: process 99 is gone"},
]


def test_the_table_is_aligned_with_expiry_the_processes_running_and_the_synced_commit_where_a_row_has_them():
    lines = listing.table(ROWS)
    assert lines[0].split() == ["PROJECT", "PORT", "STATE", "MANAGED", "PIDS", "PROCS", "UPTIME", "EXPIRES", "IDLE",
                                "URL", "BRANCH", "COMMIT", "LOG"]
    starts = [lines[0].index(heading) for heading in ("PORT", "STATE", "MANAGED", "IDLE", "URL", "BRANCH", "COMMIT",
                                                      "LOG")]
    for line in lines[1:]:
        assert all(line[start - 2:start] == "  " and line[start] != " " for start in starts), line
    assert lines[1].split() == ["/srv/previews/pr-42", "8001", "running", "yes", "4711,4712", "2/3", "2h5m", "1h", "1h30m",
                                "http://127.0.0.1:8001/", "pr-42", "3f9c2a7d41be",
                                "/home/u/.local/state/fabserve/x/server.log"]
    assert lines[2].split() == ["/home/u/scratch", "8042", "running", "no", "5120", "-", "3m", "-", "-",
                                "http://127.0.0.1:8042/", "-", "-", "-"]
    assert lines[3].split() == ["/srv/b", "8003", "stale", "yes", "-", "-", "-", "-", "-", "http://127.0.0.1:8003/",
                                "-", "-", "/s/b/server.log"]


def test_idle_counts_from_the_hosts_own_expires_in_and_is_expires_when_it_comes_first():
    row = {"expires_in": 90, "expires_at": "2026-12-07T20:00:00Z", "idle_expires_at": "2026-12-07T20:00:00Z"}
    assert listing.idle_of(row) == "1m30s"  # the idle deadline is the earlier one: EXPIRES says the same
    assert listing.idle_of(dict(row, idle_expires_at="2026-12-07T20:10:00Z")) == "11m30s"
    assert listing.idle_of(dict(row, idle_expires_at=None)) == "-"


def test_a_host_reads_as_its_count_and_table_or_no_servers():
    shown = listing.show_list({"host": "web1", "rows": ROWS, "message": "3 servers"}).splitlines()
    assert shown[0] == "web1: 3 servers" and len(shown) == 5 and all(line.startswith("  ") for line in shown[1:])
    assert listing.show_list({"host": "web2", "rows": [], "message": "no servers"}) == "web2: no servers"


def test_json_lines_are_one_per_server_with_the_host_or_the_one_failure():
    lines = listing.json_lines({"host": "web1", "rows": ROWS, "error": None})
    parsed = [json.loads(line) for line in lines]
    assert [row["host"] for row in parsed] == ["web1"] * 3 and [row["port"] for row in parsed] == [8001, 8042, 8003]
    assert listing.json_lines({"host": "web1", "rows": [], "error": None}) == []
    failed = {"host": "web9", "action": "list", "error": "cannot connect: Connection refused", "rows": None}
    assert [json.loads(line) for line in listing.json_lines(failed)] == [failed]


def test_a_start_whose_chosen_port_is_taken_tries_other_free_ones_then_names_the_ports_tried(
        tmp_path, project, monkeypatch):
    tried = []

    def start(inst):  # another user's server binds every port this start chooses first
        tried.append(inst.port)
        raise launch.PortTaken(f"port {inst.port} on 127.0.0.1 was taken by another user's process (user o) "
                              f"before the server could bind it")

    monkeypatch.setattr(verbs, "do_start", start)
    result = dispatch.handle(agent_request(tmp_path, project, "start", "auto"))
    assert len(tried) == locate.PORT_TRIES == len(set(tried)) and all(18100 <= port <= 18199 for port in tried)
    assert result["error"].endswith("before the server could bind it; ports tried: " + ", ".join(map(str, tried)))
    assert result["port"] == tried[-1] and protocol.exit_code("start", result) == 1
    tried.clear()  # a port given is the instance asked for: no other is tried
    given = dispatch.handle(agent_request(tmp_path, project, "start", 18150))
    assert tried == [18150] and given["error"].endswith("before the server could bind it")
