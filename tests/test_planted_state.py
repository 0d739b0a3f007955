"""A FIFO planted as a running server's pidfile, metadata or instance record, over
the real sshd and locally: `list` and `status` answer at once with the right
exit code (a FIFO opened for reading blocks until a writer comes, for ever), and
no agent is left waiting on the host."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from bed.procs import cmdline, uid_processes
from helpers import free_port, wait_for, where

BOUND = 60  # seconds a call may take here before the test gives it up: each answers in a few


def agents(uid: int, marker: str, sshd_port: int) -> list[int]:
    """The agents this test's calls ran, still running: over SSH, those that came
    through this session's sshd (reparented or not), locally those that inherited
    `marker` from the client's environment."""
    found = []
    for pid in uid_processes([uid]):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = marker.encode() in environ or any(
            entry.startswith(b"SSH_CONNECTION=") and entry.endswith(f" {sshd_port}".encode()) for entry in environ)
        if ours and "fabserve-agent" in cmdline(pid):
            found.append(pid)
    return found


def wake_and_remove(path: str, as_user) -> None:
    """Remove the FIFO, first waking any reader blocked in its open(): removed, it
    could never be opened again, and such a reader would wait for ever."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: nobody waits on it
        pass
    assert as_user(["rm", "-f", path]).returncode == 0


@pytest.mark.parametrize("name", ["server.pid", "server.json", "instance.json"])
def test_a_fifo_planted_as_state_blocks_neither_list_nor_status(run, site, target, as_user, name):
    port = free_port()
    # A state directory of the test's own: agents of other sessions of the same user
    # (a version without the fix, a test of another branch) never meet the FIFO.
    call = uuid.uuid4().hex
    marker = f"FABSERVE_TEST_CALL={call}"  # which local agents inherit from fab
    env = {"FABRIC_FABSERVE_STATE_DIR": str(site.parent / "state"), "FABSERVE_TEST_CALL": call}
    started = run("start", *where(site, port), env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    path = os.path.join(started.json["state_dir"], name)
    planted = as_user(["sh", "-c", 'rm -f "$1" && mkfifo -m 600 "$1"', "sh", path])
    assert planted.returncode == 0, planted.stderr
    refusal = f"{path}: a FIFO, not a regular file"
    try:
        status = run("status", *where(site, port), timeout=BOUND, env=env)
        listed = run("list", timeout=BOUND, env=env)
        assert wait_for(lambda: not agents(target.uid, marker, target.port), timeout=10), \
            "left running: " + "; ".join(map(str, agents(target.uid, marker, target.port)))
        assert listed.returncode == 0, listed.stdout + listed.stderr
        shown = listed.json  # one line per server: one object, or a list of them
        rows = [row for row in (shown if isinstance(shown, list) else [shown]) if row["port"] == port]
        if name == "server.pid":  # the instance's state is refused, as a symlinked pidfile is
            assert status.returncode == 1 and status.json["error"] == f"refusing pidfile {refusal}", status.stdout
            assert any(refusal in row["message"] for row in rows), rows  # and the server, not started by fabserve
        else:  # corrupt or missing metadata: the server is found by its processes
            assert status.returncode == 0 and status.json["state"] == "running", status.stdout
            assert (f"refusing metadata {refusal}" in status.json["message"]) == (name == "server.json")
            assert len(rows) == 1 and rows[0]["state"] == "running", rows
    finally:
        wake_and_remove(path, as_user)
        assert run("stop", *where(site, port), env=env).returncode == 0
