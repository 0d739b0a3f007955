"""Fixtures of fabserve's tests. The bed they stand on is in tests/bed/ (plain
modules); this file only wraps it as fixtures and sorts tests into tiers.

Tiers, as markers applied from the fixtures a test uses (see pytest.ini):
bed_hosts -> hosts; target (directly or through another fixture) or root -> sshd;
an explicit bench mark stays; anything else -> unit.

The suite runs in pytest-xdist workers (pytest.ini: -n auto --dist loadgroup), each a
session of its own with its own test user (bed.target.TEST_USER), sshd and Django
projects; tests that share a costly fixture are grouped onto one worker. `-n 0` runs
everything in one process as before.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bed import hosts, procfiles, procs, wait_for
from bed.caddy import running_caddy
from bed.net import free_port
from bed.state import AccountClaim, account_claim
from bed.accounts import ProjectMaker, Spawner, UserRunner
from bed.ansible import Ansible
from bed.fab import FabResult, FabRunner
from bed.target import (OTHER_USER, ShellAccount, Target, local_target, other_account, pam_namespace_target,
                        product_copy, TEST_USER, shell_account as shell_account_of, tiny_tmpfs as tmpfs_of)
from helpers import bed_outcome, skip_or_fail

_TIERS = ("unit", "sshd", "hosts", "bench")
_TIER_OF_FIXTURE = (("bed_hosts", "hosts"), ("target", "sshd"), ("root", "sshd"))
#: Tests that share a costly fixture run in one pytest-xdist worker, which builds it
#: once (pytest.ini's --dist loadgroup): every test on the namespaced hosts in one,
#: and the tests of a module that has a module-scoped fixture in one per module; the
#: tests of a real Caddy in one, since its admin API has one address, localhost:2019.
_GROUP_OF_FIXTURE = (("bed_hosts", "hosts"), ("caddy_site", "caddy"))


#: pytest-xdist workers per CPU (pytest.ini's -n auto): a test mostly waits (sshd logins,
#: Django start-ups, TTLs running out), so two workers keep a CPU about as busy as it gets.
_WORKERS_PER_CPU = 2


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return _WORKERS_PER_CPU * len(os.sched_getaffinity(0))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if not any(item.get_closest_marker(tier) for tier in _TIERS):
            item.add_marker(next((tier for fixture, tier in _TIER_OF_FIXTURE if fixture in used), "unit"))
        group = next((group for fixture, group in _GROUP_OF_FIXTURE if fixture in used), None)
        if group is None and _uses_module_fixture(item):
            group = item.path.stem
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # The bench's smoke run is the longest test by far (minutes, on one worker): started
    # first, it runs beside everything else instead of after it.
    items.sort(key=lambda item: item.get_closest_marker("bench") is None)


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


@pytest.fixture(scope="session")
def sole_session() -> Iterator[AccountClaim]:
    """This session's claim on the test user (one per pytest-xdist worker): only while
    no other test session works as the user can its process set tell what this
    session left behind. Under CI=true another session is an error, so the check
    always runs there."""
    with account_claim(TEST_USER) as claim:
        if not claim.held:
            _another_session()
        yield claim


def _another_session() -> None:
    """Under CI=true, fail: the leftover check cannot run beside another session."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"another test session runs as {TEST_USER}; the leftover check needs the account to itself",
                    pytrace=False)


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that works as the test user leaves the user's process set as it
    found it, once its fixtures have cleaned up (autouse: torn down last). Checked
    only while this session has the user to itself, from before the test to after."""
    if "target" not in request.fixturenames:
        yield
        return
    claim: AccountClaim = request.getfixturevalue("sole_session")
    if not claim.sole():
        yield
        return
    uid = pwd.getpwnam(TEST_USER).pw_uid
    before = procs.process_set(uid)
    yield
    wait_for(lambda: not claim.sole() or not procs.process_set(uid) - before, timeout=10)
    left = sorted(procs.process_set(uid) - before)
    if not claim.sole():
        _another_session()
        return
    assert not left, f"left running as {TEST_USER}: " + "; ".join(
        f"pid {pid} ({procs.cmdline(pid)[:120]})" for pid, _ in left)


@pytest.fixture(scope="session")
def root() -> None:
    """For tests that need root but no sshd: skips elsewhere (fails under CI=true)."""
    if os.geteuid() != 0:
        skip_or_fail("this test needs root")


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A running sshd on 127.0.0.1 that lets the client key in as the test user."""
    # Under pytest-of-root, which pytest keeps private (0700): holds private keys.
    with bed_outcome(), local_target(tmp_path_factory.mktemp("target")) as local:
        yield local


@pytest.fixture(scope="session")
def product(target: Target) -> Iterator[Path]:
    """A copy of fabserve's code the test user can read, for `fab` in local mode."""
    with bed_outcome(), product_copy() as root:
        yield root


@pytest.fixture(scope="session")
def as_user(target: Target) -> UserRunner:
    """Run a command to completion as the test user, from their home directory
    (keywords: see bed.accounts.UserRunner)."""
    return UserRunner(target.user, target.home)


@pytest.fixture
def spawn_as_user(target: Target) -> Iterator[Spawner]:
    spawner = Spawner(target.user, target.home)
    yield spawner
    spawner.cleanup()


@pytest.fixture
def make_project(target: Target, as_user: UserRunner) -> Iterator[ProjectMaker]:
    maker = ProjectMaker(target, as_user)
    yield maker
    maker.cleanup()


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


@pytest.fixture
def ansible(target: Target, tmp_path: Path) -> Ansible:
    """Ansible with the target as its only host, reached through the target's ssh_config:
    one per test, as it costs only its inventory, so the tests spread over the workers."""
    with bed_outcome():
        return Ansible(tmp_path / "ansible", {target.alias: {}}, common_args=f"-F {target.ssh_config}")


@pytest.fixture
def make_procfile_project(make_project: ProjectMaker, target: Target) -> Callable[..., Path]:
    """Makes Django projects with companion processes (bed.procfiles): worker.py, watch.py
    and a Procfile of the processes given (name -> command), by default the worker and
    the watcher without a `web` line."""
    owner = (target.uid, pwd.getpwnam(target.user).pw_gid)

    def make(processes: Mapping[str, str] = procfiles.COMPANIONS) -> Path:
        return procfiles.procfile_project(make_project("site"), owner, processes)
    return make


@pytest.fixture(scope="session")
def pam_target(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The target's user through a second sshd whose PAM sessions load pam_namespace:
    each SSH session its own mount namespace and /tmp (see bed.target)."""
    with bed_outcome(), pam_namespace_target(target, tmp_path_factory.mktemp("pam")) as reached:
        yield reached


@pytest.fixture(scope="session")
def shell_account(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShellAccount]:
    """A second account on the target's sshd whose login shell a test may change
    (usermod -s); .ssh_config names it as host fabserve-shell-target."""
    with bed_outcome(), shell_account_of(target, tmp_path_factory.mktemp("shell")) as account:
        yield account


@pytest.fixture(scope="session")
def other_user(target: Target) -> pwd.struct_passwd:
    """Another unprivileged user: fabserve must never touch their processes."""
    with bed_outcome():
        return other_account()


@pytest.fixture
def spawn_as_other(other_user: pwd.struct_passwd) -> Iterator[Spawner]:
    spawner = Spawner(OTHER_USER, Path(other_user.pw_dir))
    yield spawner
    spawner.cleanup()


@pytest.fixture
def tiny_tmpfs(target: Target) -> Iterator[Path]:
    """A 64 KiB tmpfs owned by the test user, to fill up."""
    with bed_outcome(), tmpfs_of(target) as mountpoint:
        yield mountpoint


@pytest.fixture
def caddy_site(tmp_path: Path, root: None) -> Iterator[int]:
    """A real Caddy (bed/caddy.py) serving its own site on the port it yields, its
    admin API on localhost:2019; ended with the test."""
    port = free_port()
    with running_caddy(tmp_path / "caddy", port):
        yield port


@pytest.fixture(scope="session")
def bed_hosts(target: Target) -> Iterator[hosts.Hosts]:
    """hosts.BED_SIZE isolated hosts (network, PID, mount and UTS namespaces), each with
    its own sshd on <address>:22 that lets target.key in as the test user; host1 first.
    See tests/bed/hosts.py."""
    with bed_outcome(), hosts.host_bed(target) as bed:
        yield bed.hosts


@pytest.fixture
def own_state_dir(target: Target, as_user: UserRunner) -> Iterator[Path]:
    """A state directory of the test's own in the test user's home: `list` and
    `prune` then see the test's instances alone, not every instance other
    sessions of the test user keep."""
    state = target.home / f"own-state-{uuid.uuid4().hex[:12]}"
    as_user(["mkdir", "-m", "0700", "--", str(state)], check=True)
    yield state
    shutil.rmtree(state)


@pytest.fixture
def own_state(own_state_dir: Path) -> dict[str, str]:
    """The settings (environment) that give fab own_state_dir."""
    return {"FABRIC_FABSERVE_STATE_DIR": str(own_state_dir)}


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME of the test's own for fab: under accept-new it records host keys in
    ~/.ssh/known_hosts, which must not be root's real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def uv_on_host(target) -> Iterator[Path]:
    """uv (requirements-test.txt's) in the test user's ~/.local/bin, removed afterwards with its cache."""
    local_bin = target.home / ".local" / "bin"
    made = [path for path in (target.home / ".local", local_bin) if not path.exists()]
    for path in made:
        path.mkdir()
        os.chown(path, target.uid, -1)
    uv = local_bin / "uv"
    shutil.copy(Path(sys.executable).parent / "uv", uv)
    os.chown(uv, target.uid, -1)
    yield uv
    uv.unlink()
    for path in reversed(made):
        path.rmdir()
    shutil.rmtree(target.home / ".cache" / "uv", ignore_errors=True)
