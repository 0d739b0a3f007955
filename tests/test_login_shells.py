"""Every verb over a real sshd for a user whose login shell is bash, dash, zsh, fish or tcsh.

sshd runs the agent's command through the login shell, so the command must pass
through each of them unchanged. The account is conftest's shell_account, not
the target's user: other sessions use that one at the same time, and its shell
must not change under them. A lock lets one session at a time switch this one's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bed import procs, state, users
from bed.run import run_checked, run_in_group
from bed.target import ShellAccount
from helpers import (REPO, FabResult, Target, alive, free_port, group_members, http_status, port_listening,
                     wait_for, where)

ALIAS = "fabserve-shell-target"  # conftest's shell_account names its host so
SHELLS = ("bash", "dash", "zsh", "fish", "tcsh")


@dataclass(frozen=True)
class ShellHost:
    """conftest's shell account on the target's sshd, and a Django project of its own."""

    user: pwd.struct_passwd
    ssh_config: Path
    project: Path


def as_shell_user(user: pwd.struct_passwd, *args: str | os.PathLike[str]) -> None:
    run_checked(users.runuser_argv(user.pw_name, args), cwd=user.pw_dir, env=users.user_env(user.pw_name, user.pw_dir))


def make_project(user: pwd.struct_passwd, venv: Path) -> Path:
    project = Path(user.pw_dir) / "projects" / uuid.uuid4().hex[:12] / "site"
    as_shell_user(user, "mkdir", "-p", "--", project)
    as_shell_user(user, venv / "bin" / "django-admin", "startproject", "mysite", project)
    as_shell_user(user, "ln", "-s", "--", venv, project / ".venv")
    return project


@pytest.fixture(scope="module")
def shell_host(target: Target, shell_account: ShellAccount) -> Iterator[ShellHost]:
    user = pwd.getpwnam(shell_account.user)
    with contextlib.ExitStack() as teardown:
        teardown.enter_context(state.locked(state.STATE_DIR / ".login-shells.lock"))
        teardown.callback(run_checked, ["usermod", "-s", "/bin/bash", user.pw_name])
        project = make_project(user, target.venv)
        teardown.callback(shutil.rmtree, project.parent, ignore_errors=True)
        # Only this module uses the account, under the lock: all its processes are ours.
        teardown.callback(procs.kill_uid_processes, [user.pw_uid])
        yield ShellHost(user, shell_account.ssh_config, project)


@pytest.fixture(params=SHELLS)
def login_shell(request: pytest.FixtureRequest, shell_host: ShellHost) -> str:
    path = shutil.which(request.param)
    if path is None:
        reason = f"{request.param} is not installed (bin/setup --test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    run_checked(["usermod", "-s", path, shell_host.user.pw_name])
    assert pwd.getpwnam(shell_host.user.pw_name).pw_shell == path
    return path


def fab_argv(host: ShellHost, *args: str) -> list[str]:
    return [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(host.ssh_config), "-H", ALIAS, *args]


def fab(host: ShellHost, *args: str) -> FabResult:
    done = run_in_group(fab_argv(host, *args, "--json"), timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return FabResult(done.returncode, done.stdout, done.stderr)


def agents_of(uid: int) -> list[int]:
    return [pid for pid in procs.all_pids()
            if procs.real_uid(pid) == uid and "fabserve-agent" in procs.cmdline(pid)]


def follow_until(host: ShellHost, flags: list[str], text: str) -> list[str]:
    """Run `logs --follow` until a line holds text (or 30 s pass), then end it; the lines seen."""
    follower = subprocess.Popen(fab_argv(host, "logs", *flags, "--follow", "--lines", "20"), cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        while not any(text in line for line in seen):
            seen.append(lines.get(timeout=30))
    except queue.Empty:
        pass
    finally:
        os.killpg(follower.pid, signal.SIGTERM)
        follower.wait(timeout=10)
    return seen


def test_every_verb_works_under_the_login_shell(login_shell: str, shell_host: ShellHost) -> None:
    port = free_port()
    flags = where(shell_host.project, port)
    uid = shell_host.user.pw_uid

    start = fab(shell_host, "start", *flags)
    assert start.returncode == 0, start.stderr + start.stdout
    data = start.json
    assert data["host"] == ALIAS and data["ok"] and data["changed"]
    assert data["state"] == "running" and len(data["pids"]) == 2
    assert all(procs.real_uid(pid) == uid for pid in data["pids"])
    assert http_status(data["url"]) == 200

    status = fab(shell_host, "status", *flags)
    assert status.returncode == 0, status.stderr
    assert status.json["state"] == "running" and status.json["pids"] == data["pids"]

    banner = f"Starting development server at http://127.0.0.1:{port}/"
    logs = fab(shell_host, "logs", *flags, "--lines", "50")
    assert logs.returncode == 0, logs.stderr
    assert any(banner in line for line in logs.json["lines"]), logs.json
    earlier = set(agents_of(uid))
    seen = follow_until(shell_host, flags, banner)
    assert any(banner in line for line in seen), seen
    # The remote follower ends once its SSH session is gone, with no new log line:
    # where the shell exec'd it (bash, zsh) its parent changes; where the shell stays
    # its parent (dash, fish, tcsh), it finds that nothing reads its output any more.
    assert wait_for(lambda: not set(agents_of(uid)) - earlier, timeout=10), agents_of(uid)

    restart = fab(shell_host, "restart", *flags)
    assert restart.returncode == 0, restart.stderr
    again = restart.json
    assert again["changed"] and again["state"] == "running" and len(again["pids"]) == 2
    assert not set(again["pids"]) & set(data["pids"])
    assert not any(alive(pid) for pid in data["pids"])
    assert http_status(again["url"]) == 200

    stop = fab(shell_host, "stop", *flags)
    assert stop.returncode == 0, stop.stderr
    assert stop.json["changed"] and stop.json["state"] == "stopped"
    assert sorted(stop.json["pids"]) == sorted(again["pids"])
    assert not any(alive(pid) for pid in again["pids"])
    assert group_members(again["pid"]) == []
    assert not port_listening(port)

    after = fab(shell_host, "status", *flags)
    assert after.returncode == 3 and after.json["state"] == "stopped"
