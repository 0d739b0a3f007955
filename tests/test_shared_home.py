"""One home shared by several hosts (an NFS home on a cluster): each host keeps
its own state beside the others', and neither host's stop touches the other's
server or state. Two isolated hosts of tests/bed/hosts.py (their own PID,
network, mount and UTS namespaces, their own sshd and machine id) run one
project from the shared home, with fabserve's state in that home too, on the
same port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from helpers import REPO, where

PORT = 8000


@pytest.fixture
def shared(bed_hosts, target, site, as_user, tmp_path):
    """host1 and host2, a `fab` that reaches them, and a state_dir in the shared home."""
    state = target.home / f"shared-state-{uuid.uuid4().hex[:12]}"
    as_user(["mkdir", "-p", "-m", "0700", "--", str(state)], check=True)
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host 10.*\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n"
                          f"    IdentitiesOnly yes\n    IdentityFile {target.key}\n    User {target.user}\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "FABRIC_FABSERVE_STATE_DIR": str(state)}
    hosts = bed_hosts[:2]

    def fab(host, *args):
        result = subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(ssh_config),
                                 "-H", host.address, *args, *where(site, PORT), "--json"],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120)
        return result.returncode, json.loads(result.stdout.splitlines()[-1]) if result.stdout else {}

    yield hosts, fab, state
    for host in hosts:
        fab(host, "stop")
    shutil.rmtree(state)


def test_two_hosts_sharing_a_home_keep_separate_state_and_stop_only_their_own(shared):
    (one, two), fab, state = shared
    code, first = fab(one, "start")
    assert code == 0 and first["state"] == "running", first
    code, second = fab(two, "start")
    assert code == 0 and second["state"] == "running" and second["changed"] is True, second
    assert first["state_dir"] != second["state_dir"]
    assert first["state_dir"].startswith(f"{state}/") and second["state_dir"].startswith(f"{state}/")
    assert first["log"] != second["log"]
    # Each host's record names that host's own machine id (the bed gives each its own).
    assert one.machine_id != two.machine_id
    for host, started in ((one, first), (two, second)):
        with open(os.path.join(started["state_dir"], "server.json"), encoding="utf-8") as meta:
            recorded = json.load(meta)
        assert (recorded["machine_id"], recorded["hostname"]) == (host.machine_id, host.name), recorded
    assert os.path.exists(first["pidfile"]) and os.path.exists(second["pidfile"])
    assert one.http_status(PORT) == 200 and two.http_status(PORT) == 200

    code, stopped = fab(one, "stop")
    assert code == 0 and stopped["changed"] is True, stopped
    assert one.http_status(PORT) is None
    assert two.http_status(PORT) == 200
    assert os.path.exists(second["pidfile"]) and not os.path.exists(first["pidfile"])
    code, status = fab(two, "status")
    assert code == 0 and status["managed"] is True and sorted(status["pids"]) == sorted(second["pids"]), status
    assert "not started by fabserve" not in status["message"]
    with open(first["log"], "rb") as log:
        assert b"Starting development server" in log.read()
    code, again = fab(one, "stop")
    assert code == 0 and again["changed"] is False, again
    assert two.http_status(PORT) == 200 and os.path.exists(second["pidfile"])

    code, stopped = fab(two, "stop")
    assert code == 0 and stopped["changed"] is True and two.http_status(PORT) is None, stopped
