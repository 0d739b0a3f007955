"""Unit tests of the agent's pure parts, on inputs captured from a real host,
and of its wait on short-lived processes of its own."""

import subprocess
import threading

import pytest

from tasks.agent import identity, logfiles, procfs, protocol, signals, sockets, state

# /proc/PID/stat of a runserver parent and child, captured on Debian 12.
PARENT_STAT = ("4725 (python) S 1 4725 4725 0 -1 4194304 8763 0 0 0 29 14 0 0 20 0 1 0 107838 52248576 "
               "11113 18446744073709551615 94761087176704 94761087177045 140728123577712 0 0 0 0 16781313 "
               "16386 1 0 0 17 0 0 0 0 0 0 94761087188400 94761087189016 94761113915392 140728123578517 "
               "140728123578610 140728123578610 140728123580369 0")
CHILD_STAT = ("4726 (python) S 4725 4725 4725 0 -1 4194304 9346 0 0 0 46 30 0 0 20 0 2 0 107885 205627392 "
              "11874 18446744073709551615 93885882642432 93885882642773 140731827927440 0 0 0 0 16781313 "
              "16386 0 0 0 17 0 0 0 0 0 0 93885882654128 93885882654744 93886104125440 140731827935342 "
              "140731827935424 140731827935424 140731827937244 0")
# /proc/net/tcp with our listener on 127.0.0.1:8000 (1F40) and TIME_WAIT sockets to it.
NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 10301 1 000000007dabc849 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1046 1 0000000080a26770 100 0 0 10 0
   2: 0100007F:A7DA 0100007F:1F40 06 00000000:00000000 03:00001764 00000000     0        0 0 3 00000000d7e02e74
"""
NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F41 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55321 1 0000000000000000 100 0 0 10 0
"""
PROJECT = "/home/u/site"
MANAGE = PROJECT + "/manage.py"
PARENT_ARGV = ["/home/u/site/.venv/bin/python", MANAGE, "runserver", "127.0.0.1:8000"]
CHILD_ARGV = ["/home/u/site/.venv/bin/python3.11", "-X", "utf8", "-Wignore", MANAGE, "runserver", "127.0.0.1:8000"]


def parse_listen_inodes(text, port):
    """Socket inodes listening on `port` in /proc/net/tcp or tcp6 text."""
    return sockets.listeners([text]).get(port, set())


def test_parse_stat_reads_fields_after_the_command_name():
    assert procfs.parse_stat(PARENT_STAT) == {"state": "S", "ppid": 1, "pgrp": 4725, "session": 4725,
                                             "starttime": 107838}
    child = procfs.parse_stat(CHILD_STAT)
    assert (child["ppid"], child["pgrp"], child["starttime"]) == (4725, 4725, 107885)


def test_parse_stat_survives_a_name_with_spaces_and_parentheses():
    text = "77 (a) b (c)) Z 5 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 0 0"
    assert procfs.parse_stat(text)["state"] == "Z"
    assert procfs.parse_stat(text)["starttime"] == 999


@pytest.mark.parametrize("text", ["", "\n", "0", "1", "-1", "-123", "abc", "12 34", "4194305", "1e3", "+5"])
def test_parse_pid_rejects_what_kill_must_never_see(text):
    with pytest.raises(ValueError):
        procfs.parse_pid(text, 4194304)


def test_parse_pid_accepts_a_plain_pid_with_newline():
    assert procfs.parse_pid("4725\n", 4194304) == 4725


def test_listen_inodes_only_listening_sockets_on_the_port():
    assert parse_listen_inodes(NET_TCP, 8000) == {"10301"}
    assert parse_listen_inodes(NET_TCP, 2024) == {"1046"}
    assert parse_listen_inodes(NET_TCP, 42970) == set()  # 0xA7DA is a TIME_WAIT client port
    assert parse_listen_inodes(NET_TCP6, 8001) == {"55321"}


@pytest.mark.parametrize("value,port", [("8000", 8000), ("0:8001", 8001), ("127.0.0.1:8002", 8002),
                                        ("[::1]:8003", 8003), ("[::1]", None), ("localhost", None)])
def test_addrport_port(value, port):
    assert identity.addrport_port(value) == port


@pytest.mark.parametrize("argv,expected", [
    (PARENT_ARGV, (MANAGE, 8000)),
    (CHILD_ARGV, (MANAGE, 8000)),
    (["python3", "manage.py", "runserver"], ("manage.py", 8000)),
    (["python", "manage.py", "runserver", "--settings", "x.y", "0:9000"], ("manage.py", 9000)),
    (["python", "manage.py", "runserver", "-v", "2", "--noreload", "9001"], ("manage.py", 9001)),
    (["/usr/bin/pypy3", "-u", "manage.py", "runserver", "9002"], ("manage.py", 9002)),
    (["vim", "manage.py", "runserver"], None),
    (["tail", "-f", "/home/u/site/manage.py", "runserver"], None),
    (["grep", "runserver"], None),
    (["sh", "-c", "python manage.py runserver 8000"], None),
    (["python", "-c", "import os; 'manage.py runserver'"], None),
    (["python", "manage.py", "migrate"], None),
    (["python", "manage.py", "runserver", "localhost"], None),
    ([], None),
])
def test_runserver_args(argv, expected):
    assert identity.runserver_args(argv) == expected


def proc(pid, argv, cwd=PROJECT, uid=1000, state="S", token=None):
    return {"pid": pid, "argv": argv, "cwd": cwd, "uid": uid, "state": state, "token": token}


def candidate(snapshot, token=None, excluded=(), port=8000):
    return identity.is_candidate(snapshot, MANAGE, port, 1000, token, set(excluded))


def test_candidates_are_this_projects_servers_on_this_port():
    assert candidate(proc(10, PARENT_ARGV))
    assert candidate(proc(11, CHILD_ARGV))
    assert candidate(proc(12, ["python", "manage.py", "runserver", "8000"]))  # relative, resolved via cwd
    assert candidate(proc(13, ["python", "./manage.py", "runserver"], cwd=PROJECT + "/"))


def test_decoys_are_not_candidates():
    assert not candidate(proc(20, ["vim", "manage.py", "runserver"]))
    assert not candidate(proc(21, ["tail", "-f", "manage.py", "runserver"]))
    assert not candidate(proc(22, PARENT_ARGV[:3] + ["127.0.0.1:8001"]))  # same project, other port
    assert not candidate(proc(23, ["python", "manage.py", "runserver"], cwd="/home/u/other"))  # other project
    assert not candidate(proc(24, PARENT_ARGV, uid=1001))  # another user
    assert not candidate(proc(25, PARENT_ARGV), excluded={25})  # ourselves or an ancestor
    assert not candidate(proc(26, PARENT_ARGV, state="Z"))  # a zombie runs nothing
    assert not candidate(proc(27, ["python", "manage.py", "runserver"], cwd=None))  # cwd unreadable


def test_the_instance_token_identifies_a_server_whatever_its_command_line():
    weird = proc(30, ["/usr/bin/python3", "-m", "django", "runserver"], token="abc")
    assert candidate(weird, token="abc")
    assert not candidate(weird, token="xyz")
    assert not candidate(proc(31, ["sleep", "1"], uid=1001, token="abc"), token="abc")


def test_instance_names_are_distinct_per_project_and_port():
    names = {state.instance_name(p, port) for p in ("/a/site", "/b/site", "/a/it's a site") for port in (8000, 8001)}
    assert len(names) == 6
    assert state.instance_name("/srv/my site!", 8000).startswith("my_site-8000-")
    assert state.instance_name("/", 8000).startswith("project-8000-")
    assert "/" not in state.instance_name("/x/..", 8000)


def test_urls_and_connect_hosts():
    assert protocol.server_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert protocol.server_url("::1", 8000) == "http://[::1]:8000/"
    assert protocol.connect_host("0.0.0.0") == "127.0.0.1"
    assert protocol.connect_host("::") == "::1"


def test_read_tail_reads_only_from_the_offset(tmp_path):
    log = tmp_path / "server.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100000)))
    with open(log, "rb") as handle:
        assert logfiles.read_tail(handle, 3) == ["line 99997", "line 99998", "line 99999"]
        size = log.stat().st_size
        assert logfiles.read_tail(handle, 5, start=size - len(b"line 99999\n")) == ["line 99999"]
        assert logfiles.read_tail(handle, 0) == []


@pytest.mark.parametrize("action,result,code", [
    ("status", {"ok": True, "state": "running", "error": None}, 0),
    ("status", {"ok": True, "state": "stopped", "error": None}, 3),
    ("status", {"ok": False, "state": "failed", "error": None}, 1),
    ("status", {"ok": False, "state": "failed", "error": "refusing pidfile"}, 1),
    ("stop", {"ok": True, "state": "stopped", "error": None}, 0),
    ("start", {"ok": False, "state": "failed", "error": "start failed"}, 1),
])
def test_exit_codes(action, result, code):
    assert protocol.exit_code(action, result) == code


def test_polls_start_fast_and_back_off_to_the_steady_interval():
    pauses = signals.pauses()
    first = [next(pauses) for _ in range(8)]
    assert first[0] == signals.FIRST_POLL
    assert first == sorted(first) and first[-1] == first[-2] == signals.POLL


def test_await_exit_returns_at_the_exit_not_at_the_end_of_the_pause():
    child = subprocess.Popen(["sleep", "0.2"])
    waiter = threading.Thread(target=signals.await_exit, args=([child.pid], 600), daemon=True)
    waiter.start()
    waiter.join(60)  # far below the 600 s pause: only the exit can have ended the wait
    try:
        assert not waiter.is_alive()
        assert child.poll() == 0
    finally:
        child.kill()
        child.wait()


def test_await_exit_of_a_process_already_gone_returns_at_once():
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its PID names nothing now
    waiter = threading.Thread(target=signals.await_exit, args=([child.pid], 600), daemon=True)
    waiter.start()
    waiter.join(60)
    assert not waiter.is_alive()
