"""The local target: a real sshd on 127.0.0.1 standing in for a remote host.

Everything on the "remote" side runs as the unprivileged TEST_USER, exactly as
fabserve would run on a real server. Setup that concurrent test sessions share
(the accounts, their authorized_keys, the target venv) is serialised by
bed.state's lock, so two sessions can run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import BedUnavailable, procs
from .net import free_port
from .run import run_checked
from .sshd import SSHD, keygen, ssh_config, sshd_config, start_sshd, wait_for_sshd, write_sshd_config
from .state import STATE_DIR, ensure_dir, state_lock
from .users import RUNUSER, authorize_key, ensure_user, revoke_key, session_key_comment
from .venv import shared_venv

REPO: Path = Path(__file__).resolve().parents[2]

#: The pytest-xdist worker this process is (gw0, gw1, ...; pytest-xdist sets the
#: variable), "" in a run without workers and outside pytest (bench/).
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
#: The unprivileged account the tests work as: one per worker, since the leftover
#: check compares the account's whole process set before and after each test.
TEST_USER = f"fabserve-test-{WORKER}" if WORKER else "fabserve-test"
HOST_ALIAS = "fabserve-target"
# A second account on the same sshd whose login shell tests change.
SHELL_USER = "fabserve-shell"
SHELL_ALIAS = "fabserve-shell-target"
# An account that is never logged in as: fabserve must leave its processes alone.
OTHER_USER = "fabserve-other"
# Comment on each session's client key, followed by the session's PID, so that
# keys left behind by crashed sessions can be recognised and pruned.
KEY_TAG = "fabserve-test-session-"
TARGET_REQUIREMENTS = (REPO / "requirements.txt", REPO / "example" / "requirements.txt")
PRODUCT_FILES = ("fabfile.py", "tasks", "inventory", "fabric.yaml", "fabric.yml", "fabric.json")


@dataclass(frozen=True)
class Target:
    """The local sshd standing in for a remote host, and the account it serves."""

    user: str
    uid: int
    home: Path
    port: int
    alias: str
    ssh_config: Path
    key: Path
    venv: Path
    python: Path
    sshd_pid: int
    sshd_log: Path


@dataclass(frozen=True)
class ShellAccount:
    """SHELL_USER on the target's sshd, reached through the alias SHELL_ALIAS in ssh_config."""

    user: str
    uid: int
    home: Path
    ssh_config: Path


def missing_prerequisites() -> list[str]:
    """What this machine lacks to host the target ([] if nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (to create the test user and run sshd)")
    problems += [f"{tool} (run bin/setup --test)" for tool in (SSHD, RUNUSER) if not tool.exists()]
    return problems


def require_target_machine() -> None:
    """BedUnavailable unless this machine can host the target."""
    problems = missing_prerequisites()
    if problems:
        raise BedUnavailable("integration tests need " + ", ".join(problems))


def target_venv() -> Path:
    """The shared target venv, built once per requirements content and reused."""
    return shared_venv(TARGET_REQUIREMENTS)


def _authorized(user: pwd.struct_passwd, pubkey: str, teardown: contextlib.ExitStack) -> None:
    """Authorize pubkey for user now, revoke it when teardown closes."""
    with state_lock():
        authorize_key(user, pubkey, KEY_TAG)

    def revoke() -> None:
        with state_lock():
            revoke_key(user, pubkey)

    teardown.callback(revoke)


@contextlib.contextmanager
def local_target(workdir: Path) -> Iterator[Target]:
    """Start an sshd on 127.0.0.1 that lets a new client key in as TEST_USER (and
    SHELL_USER, once shell_account authorizes it); yield the Target; stop it and
    revoke the key. workdir must be private to root: it holds the private keys."""
    require_target_machine()
    host_key = keygen(workdir / "host_ed25519", "fabserve-test host")
    key = keygen(workdir / "client_ed25519", session_key_comment(KEY_TAG))
    pubkey = key.with_suffix(".pub").read_text().strip()
    with contextlib.ExitStack() as teardown:
        with state_lock():
            user = ensure_user(TEST_USER)
        _authorized(user, pubkey, teardown)
        venv = target_venv()

        port = free_port()
        config = write_sshd_config(workdir / "sshd_config", sshd_config(
            listen="127.0.0.1", port=port, host_key=host_key, users=[TEST_USER, SHELL_USER]))
        log = workdir / "sshd.log"
        sshd = start_sshd(config, log)
        teardown.callback(procs.terminate, sshd)
        wait_for_sshd(sshd, "127.0.0.1", port, log)

        client_config = workdir / "ssh_config"
        client_config.write_text(ssh_config(alias=HOST_ALIAS, hostname="127.0.0.1", port=port,
                                            user=TEST_USER, key=key))
        yield Target(
            user=TEST_USER,
            uid=user.pw_uid,
            home=Path(user.pw_dir),
            port=port,
            alias=HOST_ALIAS,
            ssh_config=client_config,
            key=key,
            venv=venv,
            python=venv / "bin" / "python",
            sshd_pid=sshd.pid,
            sshd_log=log,
        )


@contextlib.contextmanager
def shell_account(target: Target, workdir: Path) -> Iterator[ShellAccount]:
    """SHELL_USER (created like TEST_USER; its login shell left as it is), with the
    target's key authorized for this session, and an ssh_config in workdir naming it."""
    with contextlib.ExitStack() as teardown:
        with state_lock():
            user = ensure_user(SHELL_USER)
        _authorized(user, target.key.with_suffix(".pub").read_text().strip(), teardown)
        config = workdir / "ssh_config"
        config.write_text(ssh_config(alias=SHELL_ALIAS, hostname="127.0.0.1", port=target.port,
                                     user=SHELL_USER, key=target.key))
        yield ShellAccount(user=SHELL_USER, uid=user.pw_uid, home=Path(user.pw_dir), ssh_config=config)


#: pam_namespace's configuration for the test accounts (TEST_USER of each session
#: that uses it): a /tmp of its own in every PAM session that loads the module,
#: which only PAM_SERVICE's does. Shared by the sessions that use it, removed by
#: the last (PAM_USERS counts them).
NAMESPACE_CONF = Path("/etc/security/namespace.d/fabserve-test.conf")
POLY_PARENT = Path("/tmp/fabserve-test-inst")
PAM_USERS = STATE_DIR / "pam-namespace.users"
#: OpenSSH names its PAM service after the program (argv[0]): an sshd started
#: through a link of this name opens sessions through /etc/pam.d/PAM_SERVICE-<pid>,
#: and the machine's own /etc/pam.d/sshd stays untouched.
PAM_SERVICE = "fabserve-test-pamns"
PAM_STACK = (
    "# fabserve's tests: the key is the only way in (auth never runs), every session gets its own /tmp.\n"
    "auth required pam_deny.so\n"
    "account required pam_permit.so\n"
    "session required pam_namespace.so\n"
)


def _polyinstantiated() -> list[str]:
    """The accounts NAMESPACE_CONF gives a /tmp of their own (its line's last field)."""
    try:
        line = NAMESPACE_CONF.read_text().strip()
    except FileNotFoundError:
        return []
    return line.rpartition(" ~")[2].split(",") if line else []


@contextlib.contextmanager
def _namespace_conf() -> Iterator[None]:
    """pam_namespace's /tmp for TEST_USER while this session needs it, beside the
    accounts of the other sessions that use it now."""
    ensure_dir()
    with open(PAM_USERS, "a") as users:
        with state_lock():
            accounts = ",".join(sorted({*_polyinstantiated(), TEST_USER}))
            staging = NAMESPACE_CONF.with_name(NAMESPACE_CONF.name + ".new")
            staging.write_text(f"/tmp {POLY_PARENT}/ user ~{accounts}\n")
            # pam_namespace reads the file at each login: never half of it.
            os.replace(staging, NAMESPACE_CONF)
            POLY_PARENT.mkdir(exist_ok=True)
            POLY_PARENT.chmod(0)  # pam_namespace wants the instances' parent closed to all
            fcntl.flock(users, fcntl.LOCK_SH)
        try:
            yield
        finally:
            with state_lock():
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another session still uses it
                NAMESPACE_CONF.unlink(missing_ok=True)
                shutil.rmtree(POLY_PARENT, ignore_errors=True)


@contextlib.contextmanager
def pam_namespace_target(target: Target, workdir: Path) -> Iterator[Target]:
    """A second sshd for target's user with UsePAM yes and pam_namespace in its
    session stack: every SSH session runs in a mount namespace of its own, with
    a /tmp of the user's own. Yields target as reached through it."""
    if not glob.glob("/lib/*/security/pam_namespace.so") + glob.glob("/usr/lib/*/security/pam_namespace.so"):
        raise BedUnavailable("pam_namespace.so (libpam-modules) is missing")
    service = f"{PAM_SERVICE}-{os.getpid()}"
    link, stack = ensure_dir() / service, Path("/etc/pam.d") / service
    with contextlib.ExitStack() as teardown:
        teardown.enter_context(_namespace_conf())
        link.unlink(missing_ok=True)
        link.symlink_to(SSHD)
        teardown.callback(link.unlink, missing_ok=True)
        stack.write_text(PAM_STACK)
        teardown.callback(stack.unlink, missing_ok=True)
        port = free_port()
        text = sshd_config(listen="127.0.0.1", port=port, host_key=keygen(workdir / "host_ed25519", "pam host"),
                           users=[target.user])
        config = write_sshd_config(workdir / "sshd_config", text.replace("UsePAM no", "UsePAM yes"))
        log = workdir / "sshd.log"
        sshd = start_sshd(config, log, program=link)
        teardown.callback(procs.terminate, sshd)
        wait_for_sshd(sshd, "127.0.0.1", port, log)
        alias = "fabserve-pamns-target"
        client_config = workdir / "ssh_config"
        client_config.write_text(ssh_config(alias=alias, hostname="127.0.0.1", port=port, user=target.user,
                                            key=target.key))
        yield dataclasses.replace(target, port=port, alias=alias, ssh_config=client_config, sshd_pid=sshd.pid,
                                  sshd_log=log)


def other_account() -> pwd.struct_passwd:
    """OTHER_USER, created if missing."""
    with state_lock():
        return ensure_user(OTHER_USER, home_mode=None)


@contextlib.contextmanager
def product_copy() -> Iterator[Path]:
    """A copy of fabserve's code every account can read, for `fab` in local mode."""
    ensure_dir()
    root = Path(tempfile.mkdtemp(prefix="product-", dir=STATE_DIR))
    try:
        for name in PRODUCT_FILES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.is_file():
                shutil.copy2(source, root / name)
        run_checked(["chmod", "-R", "a+rX", root])
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tiny_tmpfs(target: Target, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of size owned by the target's user (mode 0700), to fill up."""
    ensure_dir()
    mountpoint = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=STATE_DIR))
    mountpoint.chmod(0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o",
         f"size={size},mode=0700,uid={target.uid},gid={pwd.getpwnam(target.user).pw_gid}",
         "fabserve-test", str(mountpoint)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        raise BedUnavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        run_checked(["umount", mountpoint])
        mountpoint.rmdir()
