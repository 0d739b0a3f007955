"""State the agent reads that is not a regular file (a FIFO, a directory, a
symlink to a FIFO planted as server.pid, server.json or instance.json) never
blocks a verb, and a call that blocks anyway gives itself up before its client
does. The agent's verbs run in processes of the test's own; no sshd."""

import io
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
from tasks import remote, settings
from tasks.agent import dispatch, protocol, state, verbs
from tasks.config import merged

PORT = 18766


def request(tmp_path, action, **extra):
    values = merged({}, {"project": str(tmp_path / "site"), "port": PORT,
                                 "state_dir": str(tmp_path / "state"), **extra})
    req = settings.request(action, values, [])
    if action == "list":
        req["all"] = True
    return req


# The agent's verbs in a process of their own, as the agent runs them: a call
# that blocks fails the test at the timeout instead of hanging it.
HANDLE = ("import json, sys; from tasks.agent import dispatch, protocol; req = json.load(sys.stdin); result = dispatch.handle(req); "
          "print(json.dumps(result)); sys.exit(protocol.exit_code(req['action'], result))")


def run_agent(req):
    """(exit code, result) of the verb `req` asks for."""
    done = subprocess.run([sys.executable, "-c", HANDLE], input=json.dumps(req), capture_output=True, text=True,
                          cwd=REPO, timeout=30)
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def instance(tmp_path):
    """A stopped instance as a start and stop leave it: instance.json and the log."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "manage.py").write_text("")
    req = request(tmp_path, "status")
    inst = state.Instance(state.Host(state.Request(req)), state.Request(req))
    for path in state.levels(inst.base, inst.dir):
        state.private_dir(path)
    verbs.remember(inst)
    state.write_atomic(inst.log, "a line\n")
    return inst


def plant(path, kind, tmp_path):
    if os.path.lexists(path):
        os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        os.mkdir(path, 0o700)
    else:
        os.mkfifo(tmp_path / "elsewhere", 0o600)
        os.symlink(tmp_path / "elsewhere", path)


KINDS = ("fifo", "directory", "symlink to a fifo")
REASONS = {"fifo": "a FIFO, not a regular file", "directory": "a directory, not a regular file",
           "symlink to a fifo": "it is a symlink"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_pidfile_that_is_no_regular_file_is_refused_by_status_and_noted_by_list(tmp_path, instance, kind):
    plant(instance.pidfile, kind, tmp_path)
    code, status = run_agent(request(tmp_path, "status"))
    assert code == 1 and status["state"] == protocol.FAILED, status
    assert status["error"] == f"refusing pidfile {instance.pidfile}: {REASONS[kind]}"
    code, listed = run_agent(request(tmp_path, "list"))
    assert code == 0 and [row["message"] for row in listed["rows"]] == [f"not running; {status['error']}"]


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_that_is_no_regular_file_is_corrupt_state(tmp_path, instance, kind):
    state.write_atomic(instance.pidfile, f"{os.getpid()}\n")  # the metadata is read once a pidfile is there
    plant(instance.meta_path, kind, tmp_path)
    code, status = run_agent(request(tmp_path, "status"))
    assert code == 3 and status["state"] == protocol.STOPPED, status
    assert status["message"] == (f"not running; ignored corrupt state: refusing metadata {instance.meta_path}: "
                                 f"{REASONS[kind]}")
    code, listed = run_agent(request(tmp_path, "list"))
    assert code == 0 and [row["port"] for row in listed["rows"]] == [PORT], listed


@pytest.mark.parametrize("kind", KINDS)
def test_an_instance_record_that_is_no_regular_file_is_no_record(tmp_path, instance, kind):
    plant(os.path.join(instance.dir, "instance.json"), kind, tmp_path)
    code, listed = run_agent(request(tmp_path, "list"))
    assert code == 0 and listed["rows"] == [], listed  # nothing names the project of that directory
    code, status = run_agent(request(tmp_path, "status"))
    assert code == 3 and status["state"] == protocol.STOPPED


def test_a_call_that_blocks_gives_itself_up_before_its_client(tmp_path, monkeypatch, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A read that blocks until a writer comes, as a FIFO read without O_NONBLOCK does.
    monkeypatch.setattr(verbs, "do_status", lambda inst: fifo.read_text())
    monkeypatch.setattr(dispatch, "GIVE_UP", 0)
    monkeypatch.setattr(protocol, "KILL_WAIT", 0)
    monkeypatch.setattr(protocol, "PORT_WAIT", 0)
    req = request(tmp_path, "status", start_timeout=0.5, stop_timeout=0.25)  # 1.5 s: it gives up at 2 s
    assert protocol.run_limit(req) + dispatch.GIVE_UP < remote.deadline_of(req)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(remote.request_line(req).encode())))
    assert dispatch.main() == 1
    result = remote.parse_result(capsys.readouterr().out)
    assert result["action"] == "status" and result["state"] == protocol.FAILED
    assert result["error"] == "gave up after 2s: something on the host blocked this call"
