"""The test bed's own logic: subnet picking, fab's JSON lines, reading listeners from
/proc/net, the refusal to signal what must never be signalled, the interpreters
a target may have. No root, no sshd."""

import ipaddress
import os
import re
import socket

import pytest

from bed import BedError, procs
from bed.hosts import free_slots
from bed.interpreters import PYENV_VERSIONS, target_interpreters
from bed.net import port_listening
from bed.procfiles import COMPANIONS, WEB, procfile_text
from bed.unprivileged import verdict
from helpers import FabResult


def test_busy_subnets_are_skipped() -> None:
    busy = ["10.213.1.0/30", "10.213.3.7/32", "10.213.4.128/25", "10.0.0.0/8", "192.0.2.0/24"]
    networks = [ipaddress.ip_network(net) for net in busy]
    # A /8 route does not block a slot (our /30s are more specific); anything inside a
    # slot's /24 does.
    assert free_slots(4, networks) == [2, 5, 6, 7]
    with pytest.raises(BedError, match="free"):
        free_slots(300, networks)


def test_fab_result_json_parses_json_lines() -> None:
    assert FabResult(0, '{"host": "a"}\n', "").json == {"host": "a"}
    assert FabResult(0, '{"host": "a"}\n\n{"host": "b"}\n', "").json == [{"host": "a"}, {"host": "b"}]


def test_port_listening_reads_the_tables_under_the_proc_root_it_is_given(tmp_path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    # 127.0.0.1:8000 listening (0A), 10.0.0.2:8001 connected (01), [::1]:8002 listening.
    (net / "tcp").write_text(header
                             + "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n"
                             + "   1: 0200000A:1F41 0100000A:D431 01 00000000:00000000 00:00000000 00000000  1000\n")
    (net / "tcp6").write_text(header + "   0: 00000000000000000000000001000000:1F42 "
                              "00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  0\n")
    assert port_listening(8000, proc_root=tmp_path)
    assert port_listening(8000, "127.0.0.1", proc_root=tmp_path)
    assert not port_listening(8000, "127.0.0.2", proc_root=tmp_path)
    assert not port_listening(8001, proc_root=tmp_path)
    assert port_listening(8002, "::1", proc_root=tmp_path)
    assert not port_listening(8000, proc_root=tmp_path / "missing")


def test_port_listening_sees_a_real_listener_through_our_own_proc_entry() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert not port_listening(port, proc_root=f"/proc/{os.getpid()}")
        server.listen()
        assert port_listening(port, "127.0.0.1", proc_root=f"/proc/{os.getpid()}")
        assert port_listening(port)
    assert not port_listening(port)


@pytest.mark.parametrize("pid", [0, 1, -1, -123])
def test_kill_pids_refuses_groups_and_init(pid) -> None:
    with pytest.raises(ValueError, match=f"refusing to signal pid {pid}"):
        procs.kill_pids([pid])


def test_kill_pids_refuses_our_own_pid_and_ignores_gone_ones() -> None:
    with pytest.raises(ValueError, match="refusing"):
        procs.kill_pids([os.getpid()])
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    procs.kill_pids([gone])
    assert not procs.alive(gone)


@pytest.mark.parametrize("status, output, why", [
    (0, "....\n4 passed, 3 deselected in 0.51s\n", None),
    (1, "F...\n1 failed, 3 passed in 0.51s\n", "pytest exited 1, 3 tests passed"),
    (2, "E\n!!! Interrupted: 1 error during collection !!!\n267 deselected, 1 error in 1.56s\n",
     "pytest exited 2, no tests passed"),
    (5, "\n291 deselected in 0.40s\n", "pytest exited 5, no tests passed"),
    (0, "12 passed earlier\n0 passed in 0.1s\n", "pytest exited 0, 0 tests passed"),
])
def test_the_unprivileged_unit_tier_fails_ci_unless_tests_ran_and_passed(status, output, why) -> None:
    assert verdict(status, output) == (None if why is None else f"unit tier as nobody: {why}")


def test_interpreters_are_the_executable_pythons_3_6_and_later(tmp_path) -> None:
    for version in ("3.5.10", "3.6.15", "3.7.16", "3.13.0", "2.7.18", "3.12-dev", "3.9.18"):
        (tmp_path / version / "bin").mkdir(parents=True)
        if version != "3.9.18":  # a version whose python was never built
            (tmp_path / version / "bin" / "python3").touch(mode=0o755)
    assert target_interpreters(tmp_path) == {
        "system": "/usr/bin/python3", "3.6.15": f"{tmp_path}/3.6.15/bin/python3",
        "3.7.16": f"{tmp_path}/3.7.16/bin/python3", "3.13.0": f"{tmp_path}/3.13.0/bin/python3"}


def test_interpreters_in_a_directory_no_one_may_read_are_none_and_no_error(monkeypatch) -> None:
    # What a non-root user meets in root's home (mode 0700), whoever runs this test.
    def denied(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(f"{PYENV_VERSIONS}"):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return call

    for name in ("stat", "lstat", "scandir", "listdir", "access"):
        monkeypatch.setattr(os, name, denied(getattr(os, name)))
    assert target_interpreters() == {"system": "/usr/bin/python3"}


def test_the_beds_procfile_reads_back_as_foreman_and_honcho_read_it() -> None:
    processes = {**COMPANIONS, "web": WEB}
    lines = [line for line in procfile_text(processes).splitlines() if line and not line.startswith("#")]
    read = [re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line) for line in lines]
    assert {match[1]: match[2] for match in read} == processes and list(processes) == [match[1] for match in read]


def test_environ_reads_a_process_environment_by_pid() -> None:
    assert procs.environ(os.getpid())["PATH"] == os.environ["PATH"]
    assert procs.environ(2**22 + 1) == {}  # above the kernel's pid_max: never a process
