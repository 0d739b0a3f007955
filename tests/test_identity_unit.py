"""Unit tests of how the agent tells its own servers from look-alikes: resolved
script paths, the interpreter behind /proc/PID/exe, namespaces and the token,
on made-up snapshots, and verify() on short-lived processes of the test's own."""

import os
import subprocess
import sys

import pytest

from tasks.agent import identity, locate, procfs

HOST_NS = {"pid": "pid:[4026531836]", "net": "net:[4026531840]"}
ARGV = ["/home/u/site/.venv/bin/python", "manage.py", "runserver", "127.0.0.1:8000"]


def proc(pid=10, argv=ARGV, cwd="/home/u/site", exe="/usr/bin/python3.11", ns=HOST_NS, token=None):
    return {"pid": pid, "argv": argv, "cwd": cwd, "uid": 1000, "state": "S", "token": token, "exe": exe,
            "ns": None if ns is None else dict(ns)}


def ours(snapshot, token=None, own=HOST_NS, manage_py="/home/u/site/manage.py"):
    """Both stages of the search, as search() applies them."""
    return (identity.is_candidate(snapshot, manage_py, 8000, 1000, token, set())
            and identity.is_ours(snapshot, token, own))


def test_a_python_runserver_of_this_project_in_our_namespaces_is_ours():
    assert ours(proc())
    assert ours(proc(exe="/home/u/.pyenv/versions/3.6.15/bin/python3.6m"))
    assert ours(proc(exe="/opt/pypy/bin/pypy3.9"))
    assert ours(proc(exe="/usr/bin/python3.13t"))


def test_an_upgraded_interpreter_still_counts():
    assert ours(proc(exe="/usr/bin/python3.11 (deleted)"))


@pytest.mark.parametrize("exe", ["/usr/bin/tail", "/usr/bin/vim.basic", "/bin/bash", "/usr/bin/python-config",
                                 "/usr/bin/pythonista", "/tmp/python3/tail", None, ""])
def test_an_argv_naming_python_is_not_enough(exe):
    """`exec -a python3 tail -f manage.py runserver 8000` passes the argv check;
    its executable gives it away, and an unreadable one is not ours."""
    assert identity.is_candidate(proc(exe=exe), "/home/u/site/manage.py", 8000, 1000, None, set())
    assert not ours(proc(exe=exe))


@pytest.mark.parametrize("kind", ["pid", "net"])
def test_a_twin_in_another_namespace_is_not_ours(kind):
    other = dict(HOST_NS, **{kind: f"{kind}:[4026532999]"})
    assert not ours(proc(ns=other))
    assert not ours(proc(ns=other, token="abc"), token="abc")  # not even with the token


def test_unreadable_namespaces_are_not_ours():
    assert not ours(proc(ns=None))
    assert not ours(proc(ns={"pid": HOST_NS["pid"]}))
    assert not ours(proc(), own=None)


def test_the_token_confirms_a_server_whatever_its_executable():
    """A process the server spawned inherits the token: it is the server's."""
    shell = proc(argv=["sh", "-c", "sleep 60"], exe="/bin/dash", token="abc")
    assert ours(shell, token="abc")
    assert not ours(shell, token="xyz")
    assert not ours(shell)


def test_a_script_path_through_a_symlink_and_dotdot_resolves_as_the_kernel_does(tmp_path):
    """`sub/../site/manage.py` with `sub` a symlink elsewhere names the other
    project's manage.py, though it reads lexically as this one's."""
    ours_dir = tmp_path / "mine" / "site"
    theirs = tmp_path / "theirs" / "x" / "site"
    for project in (ours_dir, theirs):
        project.mkdir(parents=True)
        (project / "manage.py").write_text("")
    (tmp_path / "mine" / "sub").symlink_to(theirs)
    argv = ["python", "sub/../site/manage.py", "runserver", "8000"]
    snapshot = proc(argv=argv, cwd=str(tmp_path / "mine"))
    assert os.path.normpath(os.path.join(snapshot["cwd"], argv[1])) == str(ours_dir / "manage.py")
    assert not ours(snapshot, manage_py=str(ours_dir / "manage.py"))
    assert ours(snapshot, manage_py=str(theirs / "manage.py"))


def test_a_cwd_reached_through_a_symlink_is_this_project(tmp_path):
    project = tmp_path / "site"
    project.mkdir()
    (project / "manage.py").write_text("")
    (tmp_path / "alias").symlink_to(project)
    snapshot = proc(argv=["python", "manage.py", "runserver", "8000"], cwd=str(tmp_path / "alias"))
    assert ours(snapshot, manage_py=str(project / "manage.py"))


def test_the_agents_own_namespaces_are_read_from_proc():
    own = procfs.own_namespaces()
    # Not the mount namespace: pam_namespace gives every SSH session its own.
    assert sorted(own) == ["net", "pid"]
    assert own["net"].startswith("net:[")
    assert procfs.namespaces(os.getpid()) == own
    assert procfs.namespaces(2 ** 31) is None  # no such process


def test_identify_reads_the_executable_behind_argv():
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        snapshot = identity.identify({"pid": child.pid})
        assert os.path.basename(snapshot["exe"]) == "sleep"
        assert snapshot["ns"] == procfs.own_namespaces()
        assert not identity.is_interpreter(snapshot["exe"])
        assert identity.is_interpreter(identity.identify({"pid": os.getpid()})["exe"])  # this test's python
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def leader():
    """A process of ours leading its own group, with FABSERVE_TOKEN=right."""
    env = dict(os.environ, FABSERVE_TOKEN="right")
    child = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)"], env=env,
                             stdout=subprocess.PIPE, start_new_session=True)
    # Popen returns once exec has replaced the memory, before the new environment
    # is in it (/proc/PID/environ is empty a moment): the first line comes after.
    child.stdout.readline()
    yield child.pid
    child.stdout.close()
    child.kill()
    child.wait()


def recorded(pid, **changes):
    meta = {"pid": pid, "starttime": procfs.proc_stat(pid)["starttime"], "boot_id": procfs.boot_id(),
            "token": "right"}
    meta.update(changes)
    return {key: value for key, value in meta.items() if value is not None}


def test_verify_trusts_a_recorded_leader_with_its_token(leader):
    assert locate.verify(leader, recorded(leader)) is None


@pytest.mark.parametrize("token", [None, "", 7])
def test_verify_refuses_metadata_without_a_token(leader, token):
    assert locate.verify(leader, recorded(leader, token=token)) == f"the metadata records no token for PID {leader}"


def test_verify_refuses_a_process_with_another_token_or_none():
    for env in (dict(os.environ, FABSERVE_TOKEN="other"), {k: v for k, v in os.environ.items()
                                                             if k != "FABSERVE_TOKEN"}):
        child = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
        try:
            assert locate.verify(child.pid, recorded(child.pid)) == f"PID {child.pid} now belongs to another process"
        finally:
            child.kill()
            child.wait()
