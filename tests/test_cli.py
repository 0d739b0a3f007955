"""fab's own host syntax, connection failures and log following, end to end."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from helpers import REPO, alive, fab_plain, free_port, http_status, wait_for


# fab runs with a HOME of the test's own: under accept-new it records host keys.
pytestmark = pytest.mark.usefixtures("own_home")


def test_user_at_host_colon_port_with_identity_flag(target, make_project):
    site = make_project("site")
    port = str(free_port())
    host = f"{target.user}@127.0.0.1:{target.port}"
    start = fab_plain("-i", str(target.key), "-H", host, "start", "--project", str(site), "--port", port)
    assert start.returncode == 0, start.stderr
    assert start.stdout.startswith(f"{host}: started on http://127.0.0.1:{port}/")
    # fab's own -r and -i are repeated: the hint works as pasted.
    assert f"stop it with: fab -r {REPO} -i {target.key} -H {host} stop --project {site} --port {port}" in start.stdout
    assert http_status(f"http://127.0.0.1:{port}/") == 200
    stop = fab_plain("-i", str(target.key), "-H", host, "stop", "--project", str(site), "--port", port)
    assert stop.returncode == 0 and stop.stdout.startswith(f"{host}: stopped pids ")


def test_authentication_failure_is_one_line(target, tmp_path):
    wrong_key = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    host = f"{target.user}@127.0.0.1:{target.port}"
    result = fab_plain("-i", str(wrong_key), "-H", host, "status", "--project", "/srv/site")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{host}: status failed: authentication failed")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_dns_failure_is_one_line(root):
    # In a network namespace of its own, the lookup fails without a packet leaving the machine.
    result = fab_plain("-H", "no-such-host.invalid", "status", "--project", "/srv/site",
                       wrapper=["unshare", "--net"])
    assert result.returncode == 1
    assert result.stderr.startswith("no-such-host.invalid: status failed: cannot resolve host name")


def test_logs_follow_streams_new_lines_and_ends_with_the_caller(target, make_project, fab):
    site = make_project("site")
    port = str(free_port())
    where = ["--project", str(site), "--port", port]
    assert fab("start", *where).returncode == 0
    cmd = [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config), "-H", target.alias,
           "logs", *where, "--follow", "--lines", "3"]
    follower = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    try:
        assert wait_for(lambda: _follow_agents(target.uid), timeout=30), "the remote follower should start"
        agents = _follow_agents(target.uid)
        # The request is logged only after the follower is reading, so it must arrive through it.
        assert http_status(f"http://127.0.0.1:{port}/fabserve-follow-probe") == 404
        seen = []
        deadline = time.time() + 30
        while time.time() < deadline and not any("fabserve-follow-probe" in line for line in seen):
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        assert any("fabserve-follow-probe" in line for line in seen), seen
    finally:
        os.killpg(follower.pid, signal.SIGTERM)
        follower.wait(timeout=10)
    # The remote side notices that its SSH session is gone and exits.
    assert wait_for(lambda: not any(alive(pid) for pid in agents), timeout=10)
    assert fab("stop", *where).returncode == 0


def _follow_agents(uid):
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _is_follow_agent(int(pid), uid)]


def _is_follow_agent(pid, uid):
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid and b"fabserve-agent" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
