"""`tunnel` over the real sshd to a real Django server: --run with the command's
exit status and output, 20 parallel requests through one tunnel, a local port in
use, SIGTERM to a holding tunnel, an instance that is not running, several
hosts, a connection lost under --run, --run's command ended with its whole
group (what it left in the background, on SIGHUP and SIGTERM), and the first
request sent to the check path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bed.accounts import ProjectMaker
from bed.net import free_port_between
from bed.procs import cmdline, parent, uid_processes
from helpers import REPO, alive, http_status, kill_pids, port_listening, wait_for, where

# Fetches $FABSERVE_URL (no proxy from the environment), prints what the tunnel
# task set, and exits 3.
FETCH = ("python3 -c 'import os, urllib.request as u; "
         "r = u.build_opener(u.ProxyHandler({})).open(os.environ[\"FABSERVE_URL\"]); "
         "print(\"status\", r.status, r.read().decode()); "
         "print(\"host\", os.environ[\"FABSERVE_HOST\"], \"port\", os.environ[\"FABSERVE_PORT\"])'; exit 3")
# 20 requests at once through the tunnel, each on its own connection, all opened
# before any is answered; exits 0 only if all 20 got the page.
PARALLEL = """python3 - <<'EOF'
import http.client, os, threading
port = int(os.environ["FABSERVE_PORT"])
ready = threading.Barrier(20)
answers = []
def fetch():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    ready.wait()
    conn.request("GET", "/")
    response = conn.getresponse()
    answers.append((response.status, response.read()))
    conn.close()
threads = [threading.Thread(target=fetch) for _ in range(20)]
[thread.start() for thread in threads]
[thread.join() for thread in threads]
print("ok", sum(1 for answer in answers if answer == (200, b"fine")))
raise SystemExit(0 if len(answers) == 20 and all(answer == (200, b"fine") for answer in answers) else 1)
EOF"""


@pytest.fixture(scope="module")
def served(target, as_user) -> Iterator[list[str]]:
    """One server for the whole module: the flags naming it."""
    maker = ProjectMaker(target, as_user)
    flags = where(maker.breakable(), port_16k())
    fab = fab_argv(target)
    started = subprocess.run([*fab, "start", *flags, "--json"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    yield flags
    subprocess.run([*fab, "stop", *flags], cwd=REPO, capture_output=True, timeout=120)
    maker.cleanup()


def port_16k() -> int:
    """A port in 16000-16999 (the range these tests pick from) that was free a moment ago."""
    return free_port_between(16000, 16999)


def fab_argv(target, hosts: str | None = None) -> list[str]:
    return [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config),
            "-H", hosts or target.alias]


def sshd_sessions(target) -> set[int]:
    """The test user's sshd session processes (one per SSH connection) under this
    session's own sshd: other test sessions may log in as the same user."""
    def under_ours(pid: int) -> bool:
        while pid and pid != target.sshd_pid:
            pid = parent(pid) or 0
        return pid == target.sshd_pid

    return {pid for pid in uid_processes([target.uid]) if cmdline(pid).startswith("sshd") and under_ours(pid)}


def free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port and a server could bind it (as
    servers do, with SO_REUSEADDR: the tunnel's closed connections may linger in
    TIME_WAIT)."""
    if port_listening(port):
        return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_run_gets_the_url_and_exits_with_the_commands_status(fab, served):
    result = fab("tunnel", served[0], served[1], "--port", served[3], "--run", FETCH, "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    ready, *output = result.stdout.splitlines()
    line = json.loads(ready)
    assert set(line) == {"host", "url", "local_port", "port"}
    assert line["host"] == fab.remote_host and line["port"] == int(served[3])
    assert line["url"] == f"http://127.0.0.1:{line['local_port']}/"
    assert output == ["status 200 fine", f"host {fab.remote_host} port {line['local_port']}"]
    assert free(line["local_port"])


def test_twenty_parallel_requests_through_one_tunnel_all_succeed(fab, served):
    result = fab("tunnel", *served, "--run", PARALLEL)
    assert result.returncode == 0, result.stdout + result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith(f"{fab.remote_host}: tunnel http://127.0.0.1:")
    assert first.endswith(f" -> 127.0.0.1:{served[3]} on the host")
    assert rest == ["ok 20"]


def test_a_local_port_in_use_exits_2(fab, served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fab("tunnel", *served, "--local-port", str(port), "--run", "exit 0")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        assert result.stderr.strip() == (f"{fab.remote_host}: --local-port {port}: 127.0.0.1:{port} is in use")
        assert port_listening(port, "127.0.0.1")  # still the test's own listener


def test_sigterm_closes_a_holding_tunnel_with_exit_0_and_nothing_left(target, served):
    port = port_16k()
    before = sshd_sessions(target)
    holder = subprocess.Popen([*fab_argv(target), "tunnel", *served, "--local-port", str(port), "--json"],
                              cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        first = holder.stdout.readline()
        assert first, holder.communicate(timeout=30)
        ready = json.loads(first)
        assert ready["local_port"] == port and ready["url"] == f"http://127.0.0.1:{port}/"
        assert http_status(ready["url"]) == 200
        assert len(sshd_sessions(target) - before) == 1  # the status call and every channel: one connection
        holder.send_signal(signal.SIGTERM)
        out, err = holder.communicate(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == 0, err
    assert out == "" and err == ""
    assert free(port)
    assert wait_for(lambda: not sshd_sessions(target) - before, timeout=10)


def test_an_instance_not_running_exits_1_without_opening_a_port(fab, served):
    port = port_16k()
    result = fab("tunnel", served[0], served[1], "--port", str(port_16k()), "--local-port", str(port),
                 "--run", "touch /nonexistent-dir/never")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"{fab.remote_host}: tunnel failed: the server is not running"
    assert free(port)


def test_several_hosts_exit_2_before_connecting(target, served):
    before = sshd_sessions(target)
    result = subprocess.run([*fab_argv(target, f"{target.alias},{target.user}@{target.alias}"), "tunnel",
                             *served], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "tunnel works on exactly one host; -H named several" in result.stderr
    assert not sshd_sessions(target) - before


def test_a_lost_connection_ends_the_command_and_exits_1(target, served, tmp_path):
    before = sshd_sessions(target)
    pidfile = tmp_path / "cmd.pid"
    runner = subprocess.Popen([*fab_argv(target), "tunnel", *served, "--run", f"echo $$ > {pidfile}; exec sleep 60"],
                              cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=60)
        command = int(pidfile.read_text())
        assert alive(command)
        session, = sshd_sessions(target) - before
        os.kill(session, signal.SIGKILL)  # the server side of this tunnel's own connection
        out, err = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 1, out + err
    assert err.strip().endswith(f"{target.alias}: tunnel failed: the SSH connection was lost; the command was ended")
    assert wait_for(lambda: not alive(command), timeout=10)


@pytest.mark.parametrize("value", ["70000", "-1", "x"])
def test_a_bad_local_port_is_refused_before_connecting(fab, target, served, value):
    before = sshd_sessions(target)
    result = fab("tunnel", *served, f"--local-port={value}")
    assert result.returncode == 2 and result.stdout == ""
    assert "--local-port must be a number from 0 (one the OS chooses) to 65535" in result.stderr
    assert not sshd_sessions(target) - before


def test_without_a_host_tunnel_is_a_usage_error(fab, served):
    result = fab("tunnel", *served, local=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "tunnel needs a host (-H): a server here answers on its own URL"


def leftovers(*pids: int) -> None:
    """End what an old fabserve left running of a test's command, by PID."""
    kill_pids([pid for pid in pids if alive(pid) and "sleep 1234" in cmdline(pid)])


def test_run_ends_what_the_command_left_in_its_group(fab, served, tmp_path):
    background = tmp_path / "background.pid"
    # Its output elsewhere: a child left holding fab's stdout would keep the test waiting.
    result = fab("tunnel", *served, "--run", f"sleep 1234 > /dev/null 2>&1 & echo $! > {background}")
    child = int(background.read_text())
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert not alive(child)
    finally:
        leftovers(child)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_ends_the_commands_whole_group(target, served, tmp_path, sig):
    """SIGHUP (a closed terminal) as SIGTERM: the command and a child of it that ignores
    TERM (KILL after the grace) are gone when fab exits with the command's status."""
    shell_pid, background = tmp_path / "shell.pid", tmp_path / "background.pid"
    command = (f"exec > /dev/null 2>&1; echo $$ > {shell_pid}; (trap '' TERM; exec sleep 1234) & "
               f"echo $! > {background}; wait")
    runner = subprocess.Popen([*fab_argv(target), "tunnel", *served, "--run", command], cwd=REPO,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    pids: list[int] = []
    try:
        assert wait_for(lambda: background.exists() and background.read_text().strip(), timeout=60)
        pids = [int(shell_pid.read_text()), int(background.read_text())]
        assert all(alive(pid) for pid in pids)
        runner.send_signal(sig)
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 128 + signal.SIGTERM, out + err
        assert not any(alive(pid) for pid in pids), [cmdline(pid) for pid in pids]
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        leftovers(*pids)
        kill_pids([pid for pid in pids[:1] if alive(pid) and str(shell_pid) in cmdline(pid)])


# `/` answers after 30 s, longer than the tunnel's first request may take; /healthz at once.
SLOW_HOME_URLS = """\
import time

from django.http import HttpResponse
from django.urls import path


def home(request):
    time.sleep(30)
    return HttpResponse("late")


def healthz(request):
    return HttpResponse("ok")


urlpatterns = [path("", home), path("healthz", healthz)]
"""


def test_the_first_request_goes_to_the_check_path(fab, target, make_project):
    project = make_project()
    urls = project / "mysite" / "urls.py"
    urls.write_text(SLOW_HOME_URLS)
    os.chown(urls, target.uid, -1)
    checked, unchecked = where(project, port_16k()), where(project, port_16k())
    assert fab("start", *checked, "--check", "/healthz", "--json").returncode == 0
    try:
        assert fab("start", *unchecked, "--json").returncode == 0
        # The path the instance was started with, or the one given to tunnel.
        recorded = fab("tunnel", *checked, "--run", "exit 0")
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        given = fab("tunnel", *unchecked, "--check", "/healthz", "--run", "exit 0")
        assert given.returncode == 0, given.stdout + given.stderr
        assert fab("status", *unchecked, "--json").json["check"] is None
        assert fab("status", *checked, "--json").json["check"] == "/healthz"
    finally:
        assert fab("stop", *unchecked).returncode == 0
        assert fab("stop", *checked).returncode == 0
