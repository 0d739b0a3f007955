"""Unprivileged accounts to run fabserve as, and their authorized_keys.

Several test sessions may share one account at once, each with a key of its own
whose comment is a tag followed by the session's PID: adding a key prunes the
keys of sessions that no longer run and keeps every live one.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from pathlib import Path

from . import procs
from .run import run_checked

RUNUSER = Path("/usr/sbin/runuser")
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def ensure_user(name: str, shell: str = "/bin/bash", home_mode: int | None = 0o755) -> pwd.struct_passwd:
    """The account name (created with a home if missing), able to log in by key only;
    its home chmod-ed to home_mode unless that is None."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        run_checked(["useradd", "-m", "-s", shell, name])
    # sshd refuses a locked account ('!') when UsePAM is off; '*' only rules out passwords.
    run_checked(["usermod", "-p", "*", name])
    user = pwd.getpwnam(name)
    if home_mode is not None:
        os.chmod(user.pw_dir, home_mode)
    return user


def session_key_comment(tag: str, pid: int | None = None) -> str:
    """The comment of this session's client key: tag + PID."""
    return f"{tag}{os.getpid() if pid is None else pid}"


def _session_pid(key_line: str, tag: str) -> int | None:
    comment = key_line.rsplit(" ", 1)[-1]
    suffix = comment.removeprefix(tag)
    return int(suffix) if suffix != comment and suffix.isdigit() else None


def _is_live_key(key_line: str, tag: str) -> bool:
    """False for keys of test sessions that no longer run."""
    pid = _session_pid(key_line, tag)
    return pid is None or procs.alive(pid)


def authorized_keys_path(user: pwd.struct_passwd) -> Path:
    """~/.ssh/authorized_keys of user, with ~/.ssh made as StrictModes wants it."""
    ssh_dir = Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    # StrictModes: ~/.ssh must belong to the user and be private.
    os.chown(ssh_dir, user.pw_uid, user.pw_gid)
    ssh_dir.chmod(0o700)
    return ssh_dir / "authorized_keys"


def read_authorized_keys(user: pwd.struct_passwd) -> list[str]:
    path = authorized_keys_path(user)
    return path.read_text().splitlines() if path.exists() else []


def write_authorized_keys(user: pwd.struct_passwd, lines: Sequence[str]) -> None:
    """Replace the file atomically: sshd never reads half of it."""
    path = authorized_keys_path(user)
    staging = path.with_name(path.name + ".new")
    staging.write_text("".join(f"{line}\n" for line in lines))
    os.chown(staging, user.pw_uid, user.pw_gid)
    staging.chmod(0o600)
    os.replace(staging, path)


def authorize_key(user: pwd.struct_passwd, pubkey: str, tag: str) -> None:
    """Add pubkey, keeping other live sessions' keys (they may be running now) and
    dropping those whose comment names a session (tag + PID) that is gone."""
    kept = [line for line in read_authorized_keys(user) if line.strip() and _is_live_key(line, tag)]
    write_authorized_keys(user, [*kept, pubkey])


def revoke_key(user: pwd.struct_passwd, pubkey: str) -> None:
    write_authorized_keys(user, [line for line in read_authorized_keys(user) if line != pubkey])


def user_env(name: str, home: str | os.PathLike[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """The fixed environment commands run with as that user, plus extra."""
    env = {"HOME": str(home), "USER": name, "LOGNAME": name, "PATH": USER_PATH, "LANG": "C.UTF-8"}
    return env | (extra or {})


def runuser_argv(name: str, args: Sequence[str | os.PathLike[str]]) -> list[str]:
    """argv that runs args as user name (root only)."""
    return [str(RUNUSER), "-u", name, "--", *(str(arg) for arg in args)]
