"""The integration-test infrastructure itself works: sshd, user, venv, fixtures, helpers."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from helpers import (
    REPO,
    Target,
    alive,
    free_port,
    group_members,
    http_status,
    port_listening,
    proc_state,
    wait_for,
)


def ssh(target: Target, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a command on the target through the OpenSSH client and the generated config."""
    return subprocess.run(
        ["ssh", "-F", str(target.ssh_config), "-o", "BatchMode=yes", target.alias, shlex.join(command)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pinned_django() -> str:
    pins = (REPO / "example" / "requirements.txt").read_text().split()
    return next(pin.split("==", 1)[1] for pin in pins if pin.lower().startswith("django=="))


def test_ssh_logs_in_as_the_unprivileged_user_with_the_key(target: Target) -> None:
    name = ssh(target, "id", "-un")
    uid = ssh(target, "id", "-u")

    assert (name.returncode, name.stdout.strip()) == (0, target.user), name.stderr
    assert uid.stdout.strip() == str(target.uid)
    assert target.uid != 0
    assert f"Accepted publickey for {target.user}" in target.sshd_log.read_text()


def test_shell_account_logs_in_through_its_own_alias_with_the_session_key(shell_account, target: Target) -> None:
    result = subprocess.run(
        ["ssh", "-F", str(shell_account.ssh_config), "-o", "BatchMode=yes", "fabserve-shell-target",
         "id -un; id -u; echo $HOME"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [shell_account.user, str(shell_account.uid), str(shell_account.home)]
    assert shell_account.user == "fabserve-shell" and shell_account.uid not in (0, target.uid)
    assert shell_account.home.stat().st_mode & 0o777 == 0o755
    assert f"Accepted publickey for {shell_account.user}" in target.sshd_log.read_text()


def test_target_venv_imports_django_as_the_user_over_ssh(target: Target) -> None:
    result = ssh(target, str(target.python), "-c", "import django; print(django.get_version())")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _pinned_django()


def test_make_project_creates_a_django_project_owned_by_the_user(
    make_project, as_user, target: Target
) -> None:
    name = "my site 'q' \"d\" $(touch pwned) `touch pwned`;x"
    project = make_project(name)

    assert project.name == name
    assert (project / "manage.py").stat().st_uid == target.uid
    assert not list(project.parent.rglob("pwned"))
    check = as_user([project / ".venv" / "bin" / "python", "manage.py", "check"], cwd=project)
    assert check.returncode == 0, check.stderr
    assert "no issues" in check.stdout


def test_make_project_cleanup_kills_processes_inside_and_removes_it(
    make_project, spawn_as_user, target: Target
) -> None:
    project = make_project()
    proc = spawn_as_user(["sleep", "600"], cwd=project)
    assert wait_for(lambda: len(group_members(proc.pid)) == 2)
    sleeper = max(group_members(proc.pid))

    make_project.cleanup()

    assert wait_for(lambda: not alive(sleeper))
    assert not project.exists()


def test_spawn_as_user_runs_as_the_user_and_cleanup_kills_the_group(
    spawn_as_user, target: Target
) -> None:
    proc = spawn_as_user(["sleep", "600"])
    assert wait_for(lambda: len(group_members(proc.pid)) == 2)
    sleeper = max(group_members(proc.pid))
    assert Path(f"/proc/{sleeper}").stat().st_uid == target.uid
    assert proc_state(sleeper) == "S"

    spawn_as_user.cleanup()

    assert proc.returncode is not None
    assert wait_for(lambda: not alive(sleeper))


def test_http_and_port_helpers_against_a_server_run_by_the_user(
    spawn_as_user, target: Target
) -> None:
    port = free_port()
    assert not port_listening(port)
    assert http_status(f"http://127.0.0.1:{port}/") is None

    spawn_as_user([target.python, "-m", "http.server", "--bind", "127.0.0.1", str(port)])
    assert wait_for(lambda: http_status(f"http://127.0.0.1:{port}/") == 200)
    assert port_listening(port)
    assert port_listening(port, "127.0.0.1")
    assert not port_listening(port, "127.0.0.2")
    assert http_status(f"http://127.0.0.1:{port}/no-such-file") == 404

    spawn_as_user.cleanup()
    assert wait_for(lambda: not port_listening(port))


def test_product_copy_is_readable_by_the_user(product: Path, as_user) -> None:
    expected = sorted(name for name in ("fabfile.py", "tasks") if (REPO / name).exists())

    listing = as_user(["ls", "-A", product])

    assert listing.returncode == 0, listing.stderr
    assert [name for name in listing.stdout.split() if name in ("fabfile.py", "tasks")] == expected


def test_fab_runs_in_remote_and_local_mode(fab) -> None:
    remote = fab("--version")
    local = fab("--version", local=True)

    for result in (remote, local):
        assert result.returncode == 0, result.stderr
        assert "Fabric 3.2.3" in result.stdout
    assert fab.remote_host == "fabserve-target"
