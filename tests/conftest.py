"""Integration-test fixtures: a real sshd on 127.0.0.1 stands in for a remote host.

The test process runs as root; everything on the "remote" side runs as the
unprivileged user TEST_USER, exactly as fabserve would run on a real server.
Setup that concurrent pytest sessions share (the user, its authorized_keys,
the target venv) is serialised by a lock file, so two sessions can run at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    REPO,
    FabResult,
    Target,
    alive,
    free_port,
    kill_pids,
    pids_with_cwd_under,
    wait_for,
)

TEST_USER = "fabserve-test"
HOST_ALIAS = "fabserve-target"
STATE_DIR = Path("/var/tmp/fabserve-test")
SSHD = Path("/usr/sbin/sshd")
RUNUSER = Path("/usr/sbin/runuser")
SYSTEM_PYTHON = Path("/usr/bin/python3")
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
# Comment on each session's client key, followed by the session's PID, so that
# keys left behind by crashed sessions can be recognised and pruned.
KEY_TAG = "fabserve-test-session-"
TARGET_REQUIREMENTS = (REPO / "requirements.txt", REPO / "example" / "requirements.txt")
PRODUCT_FILES = ("fabfile.py", "tasks", "inventory", "fabric.yaml", "fabric.yml", "fabric.json")
PR_SET_PDEATHSIG = 1

Argv = Sequence[str | os.PathLike[str]]
RunAsUser = Callable[..., subprocess.CompletedProcess[str]]


# --- small utilities -------------------------------------------------------


def _run(cmd: Argv, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a setup command as root; fail the test with its output if it fails."""
    result = subprocess.run(
        [str(arg) for arg in cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result


def _run_in_group(
    cmd: Argv, *, timeout: float, input: str | None = None, check: bool = False, **popen_kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but a timeout kills the whole process group, not just its leader.

    Killing only runuser (or fab) would leave its children running as orphans.
    """
    argv = [str(arg) for arg in cmd]
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    with subprocess.Popen(argv, start_new_session=True, **popen_kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


def _require_environment() -> None:
    """Skip (locally) or fail (in CI) when this machine cannot host the target."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (to create the test user and run sshd)")
    problems += [f"{tool} (run bin/setup --test)" for tool in (SSHD, RUNUSER) if not tool.exists()]
    if not problems:
        return
    reason = "integration tests need " + ", ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _ensure_state_dir() -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    # The test user must traverse it to reach the venv and the product copy.
    STATE_DIR.chmod(0o755)


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Exclusive lock shared by all pytest sessions on this machine."""
    _ensure_state_dir()
    with open(STATE_DIR / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- the test user ---------------------------------------------------------


def _ensure_user() -> pwd.struct_passwd:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        _run(["useradd", "-m", "-s", "/bin/bash", TEST_USER])
    # sshd refuses a locked account ('!') when UsePAM is off; '*' only rules out passwords.
    _run(["usermod", "-p", "*", TEST_USER])
    user = pwd.getpwnam(TEST_USER)
    os.chmod(user.pw_dir, 0o755)
    return user


def _session_pid(key_line: str) -> int | None:
    comment = key_line.rsplit(" ", 1)[-1]
    suffix = comment.removeprefix(KEY_TAG)
    return int(suffix) if suffix != comment and suffix.isdigit() else None


def _is_live_key(key_line: str) -> bool:
    """False for keys of test sessions that no longer run."""
    pid = _session_pid(key_line)
    return pid is None or alive(pid)


def _authorized_keys(user: pwd.struct_passwd) -> Path:
    ssh_dir = Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    # StrictModes: ~/.ssh must belong to the user and be private.
    os.chown(ssh_dir, user.pw_uid, user.pw_gid)
    ssh_dir.chmod(0o700)
    return ssh_dir / "authorized_keys"


def _write_authorized_keys(user: pwd.struct_passwd, lines: list[str]) -> None:
    path = _authorized_keys(user)
    staging = path.with_name(path.name + ".new")
    staging.write_text("".join(f"{line}\n" for line in lines))
    os.chown(staging, user.pw_uid, user.pw_gid)
    staging.chmod(0o600)
    os.replace(staging, path)


def _read_authorized_keys(user: pwd.struct_passwd) -> list[str]:
    path = _authorized_keys(user)
    return path.read_text().splitlines() if path.exists() else []


def _authorize_key(user: pwd.struct_passwd, pubkey: str) -> None:
    """Add our key, keeping other live sessions' keys (they may be running now)."""
    kept = [line for line in _read_authorized_keys(user) if line.strip() and _is_live_key(line)]
    _write_authorized_keys(user, [*kept, pubkey])


def _revoke_key(user: pwd.struct_passwd, pubkey: str) -> None:
    _write_authorized_keys(user, [line for line in _read_authorized_keys(user) if line != pubkey])


def _locked_revoke(user: pwd.struct_passwd, pubkey: str) -> None:
    with _state_lock():
        _revoke_key(user, pubkey)


def _user_env(target: Target, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "HOME": str(target.home),
        "USER": target.user,
        "LOGNAME": target.user,
        "PATH": USER_PATH,
        "LANG": "C.UTF-8",
    }
    return env | (extra or {})


def _runuser(target: Target, args: Argv) -> list[str]:
    return [str(RUNUSER), "-u", target.user, "--", *(str(arg) for arg in args)]


# --- the target-side virtualenv -------------------------------------------


def _target_venv_path() -> Path:
    digest = hashlib.sha256()
    for requirements in TARGET_REQUIREMENTS:
        digest.update(requirements.read_bytes())
    return STATE_DIR / f"venv-{digest.hexdigest()[:12]}"


def _build_venv(venv: Path) -> None:
    """Build in place under the lock: a renamed venv would keep its old path in
    every script's shebang (bin/fab, bin/django-admin), so rename is no option."""
    if venv.exists():
        shutil.rmtree(venv)  # left half-built by an interrupted session
    # Debian's python, not pyenv's: the test user cannot enter /root.
    _run([SYSTEM_PYTHON, "-m", "venv", venv])
    requirement_args = [arg for path in TARGET_REQUIREMENTS for arg in ("-r", path)]
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
          *requirement_args])
    _run(["chmod", "-R", "a+rX", venv])
    (venv / ".complete").write_text("ok\n")


def _target_venv() -> Path:
    """The shared target venv, built once per requirements content and reused."""
    venv = _target_venv_path()
    if not (venv / ".complete").exists():
        with _state_lock():
            if not (venv / ".complete").exists():
                _build_venv(venv)
    return venv


# --- sshd --------------------------------------------------------------------


def _keygen(path: Path, comment: str) -> Path:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
    return path


def _sshd_config(port: int, host_key: Path, user: str) -> str:
    options = [
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        "PidFile none",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        f"AllowUsers {user}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "StrictModes yes",
        "UseDNS no",
        "LogLevel VERBOSE",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp internal-sftp",
    ]
    return "\n".join(options) + "\n"


def _ssh_config(port: int, user: str, key: Path) -> str:
    options = [
        f"Host {HOST_ALIAS}",
        "    HostName 127.0.0.1",
        f"    Port {port}",
        f"    User {user}",
        f"    IdentityFile {key}",
        "    IdentitiesOnly yes",
        "    StrictHostKeyChecking no",
        "    UserKnownHostsFile /dev/null",
        "    LogLevel ERROR",
    ]
    return "\n".join(options) + "\n"


def _die_with_parent() -> None:
    """Runs in the forked child: a pytest killed outright must not leave sshd behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_sshd(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_for_sshd(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    wait_for(lambda: proc.poll() is not None or _accepts_connections(port), timeout=10)
    if proc.poll() is not None or not _accepts_connections(port):
        pytest.fail(f"sshd did not come up on 127.0.0.1:{port}:\n{_log_tail(log)}", pytrace=False)


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A running sshd on 127.0.0.1 that lets the client key in as TEST_USER."""
    _require_environment()
    # Under pytest-of-root, which pytest keeps private (0700): holds private keys.
    workdir = tmp_path_factory.mktemp("target")
    host_key = _keygen(workdir / "host_ed25519", "fabserve-test host")
    key = _keygen(workdir / "client_ed25519", f"{KEY_TAG}{os.getpid()}")
    pubkey = key.with_suffix(".pub").read_text().strip()
    with contextlib.ExitStack() as teardown:
        with _state_lock():
            user = _ensure_user()
            _authorize_key(user, pubkey)
        teardown.callback(_locked_revoke, user, pubkey)
        venv = _target_venv()

        port = free_port()
        sshd_config = workdir / "sshd_config"
        sshd_config.write_text(_sshd_config(port, host_key, TEST_USER))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        _run([SSHD, "-t", "-f", sshd_config])
        sshd_log = workdir / "sshd.log"
        sshd = _start_sshd(sshd_config, sshd_log)
        teardown.callback(_stop, sshd)
        _wait_for_sshd(sshd, port, sshd_log)

        ssh_config = workdir / "ssh_config"
        ssh_config.write_text(_ssh_config(port, TEST_USER, key))
        yield Target(
            user=TEST_USER,
            uid=user.pw_uid,
            home=Path(user.pw_dir),
            port=port,
            alias=HOST_ALIAS,
            ssh_config=ssh_config,
            key=key,
            venv=venv,
            python=venv / "bin" / "python",
            sshd_pid=sshd.pid,
            sshd_log=sshd_log,
        )


@pytest.fixture(scope="session")
def product(target: Target) -> Iterator[Path]:
    """A copy of fabserve's code the test user can read, for `fab` in local mode."""
    _ensure_state_dir()
    root = Path(tempfile.mkdtemp(prefix="product-", dir=STATE_DIR))
    try:
        for name in PRODUCT_FILES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.is_file():
                shutil.copy2(source, root / name)
        _run(["chmod", "-R", "a+rX", root])
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def as_user(target: Target) -> RunAsUser:
    """Run a command to completion as the test user, from their home directory.

    Keywords: cwd, env (added to the fixed user environment), timeout (120 s),
    input, check; anything else goes to subprocess.Popen.
    """

    def run(
        args: Argv,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        options: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "text": True,
        }
        return _run_in_group(
            _runuser(target, args),
            cwd=cwd or target.home,
            env=_user_env(target, env),
            timeout=timeout,
            **(options | kwargs),
        )

    return run


class Spawner:
    """Starts long-running processes as the test user and kills them afterwards."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(
        self,
        args: Argv,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            _runuser(self._target, args),
            cwd=cwd or self._target.home,
            env=_user_env(self._target, env),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        """Kill each spawned process group (runuser leads it; its child stays in it)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()


@pytest.fixture
def spawn_as_user(target: Target) -> Iterator[Spawner]:
    spawner = Spawner(target)
    yield spawner
    spawner.cleanup()


class ProjectMaker:
    """Creates Django projects (startproject) owned by the test user, each with a
    .venv linked to the target venv."""

    def __init__(self, target: Target, as_user: RunAsUser) -> None:
        self._target = target
        self._as_user = as_user
        self.roots: list[Path] = []

    def __call__(self, name: str = "site") -> Path:
        # The name is only ever an argv element, never shell text, so spaces,
        # quotes, $, backticks and even "/" (nested directories) are fine; it
        # just must not lead out of the per-project directory.
        if not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
            raise ValueError(f"project name must be a relative path without '..': {name!r}")
        root = self._target.home / "projects" / uuid.uuid4().hex[:12]
        self.roots.append(root)
        project = root / name
        venv = self._target.venv
        for command in (
            ["mkdir", "-p", "--", project],
            [venv / "bin" / "django-admin", "startproject", "mysite", project],
            # fabserve's default interpreter is <project>/.venv/bin/python; a link
            # to the shared target venv is instant and Python follows it to pyvenv.cfg.
            ["ln", "-s", "--", venv, project / ".venv"],
        ):
            result = self._as_user(command)
            if result.returncode != 0:
                pytest.fail(f"{command} failed:\n{result.stdout}{result.stderr}", pytrace=False)
        return project

    def cleanup(self) -> None:
        """Kill the user's processes working inside the projects, then delete them."""
        for root in self.roots:
            pids = pids_with_cwd_under(root, self._target.uid)
            kill_pids(pids)
            wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)
            shutil.rmtree(root, ignore_errors=True)
        self.roots.clear()


@pytest.fixture
def make_project(target: Target, as_user: RunAsUser) -> Iterator[ProjectMaker]:
    maker = ProjectMaker(target, as_user)
    yield maker
    maker.cleanup()


class FabRunner:
    """Runs `fab`: remote mode over SSH to the target, or local mode as the test user."""

    def __init__(self, target: Target, product: Path) -> None:
        self._target = target
        self._product = product
        self.remote_host = target.alias

    def __call__(
        self,
        *args: str,
        local: bool = False,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> FabResult:
        if local:
            cmd = _runuser(self._target, [self._target.venv / "bin" / "fab", "-r", self._product, *args])
            cwd, full_env = self._target.home, _user_env(self._target, env)
        else:
            cmd = [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(self._target.ssh_config),
                   "-H", self._target.alias, *args]
            cwd, full_env = REPO, os.environ | (env or {})
        result = _run_in_group(
            cmd,
            cwd=cwd,
            env=full_env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return FabResult(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def fab(target: Target, product: Path) -> FabRunner:
    return FabRunner(target, product)


@pytest.fixture(params=["ssh", "local"])
def mode(request: pytest.FixtureRequest) -> str:
    """Over the real sshd, or without -H as the test user: the same scenarios in both."""
    return request.param


@pytest.fixture
def run(fab: FabRunner, mode: str) -> Callable[..., FabResult]:
    """fab in the mode under test; --json unless told otherwise."""
    def call(*args: str, json: bool = True, **kw: Any) -> FabResult:
        return fab(*args, *(["--json"] if json else []), local=mode == "local", **kw)
    return call


@pytest.fixture
def site(make_project: ProjectMaker) -> Path:
    return make_project("site")


# --- a second user and a full filesystem, for the hardening tests -------------

OTHER_USER = "fabserve-other"


@pytest.fixture(scope="session")
def other_user(target: Target) -> pwd.struct_passwd:
    """Another unprivileged user: fabserve must never touch their processes."""
    with _state_lock():
        try:
            pwd.getpwnam(OTHER_USER)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", OTHER_USER])
    return pwd.getpwnam(OTHER_USER)


@pytest.fixture
def spawn_as_other(other_user: pwd.struct_passwd) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: Argv, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(RUNUSER), "-u", OTHER_USER, "--", *(str(arg) for arg in args)],
            cwd=other_user.pw_dir,
            env={"HOME": other_user.pw_dir, "PATH": USER_PATH, "LANG": "C.UTF-8"} | (env or {}),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def tiny_tmpfs(target: Target) -> Iterator[Path]:
    """A 64 KiB tmpfs owned by the test user, to fill up."""
    _ensure_state_dir()
    mountpoint = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=STATE_DIR))
    mountpoint.chmod(0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o",
         f"size=64k,mode=0700,uid={target.uid},gid={pwd.getpwnam(target.user).pw_gid}",
         "fabserve-test", str(mountpoint)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield mountpoint
    finally:
        _run(["umount", mountpoint])
        mountpoint.rmdir()


# --- BEGIN fleet_hosts (owned by tests/fleet_bed.py; append-only block) --------------


@pytest.fixture(scope="session")
def fleet_hosts(target: Target) -> Iterator[Any]:
    """fleet_bed.FLEET_SIZE isolated hosts (network, PID, mount and UTS namespaces), each
    with its own sshd on <address>:22 that lets target.key in as TEST_USER. Yields a
    fleet_bed.Fleet (a list of fleet_bed.FleetHost, fleet1 first). See tests/fleet_bed.py."""
    import fleet_bed  # imported here: fleet_bed itself imports this module's helpers

    with fleet_bed.fleet_for_pytest(target) as bed:
        yield bed.hosts


# --- END fleet_hosts -------------------------------------------------------------------
