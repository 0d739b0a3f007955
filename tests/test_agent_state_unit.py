"""Unit tests of where the agent keeps an instance's state and how it names one:
per host, by the project path as given, the listeners that keep a port busy,
and state another host recorded or a previous version left, run in-process
on files and short-lived processes of the test's own."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tasks import settings
from tasks.agent import dispatch, identity, procfs, protocol, sockets, state
from tasks.config import merged

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 10301 1 0 100 0 0 10 0
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 10302 1 0 100 0 0 10 0
   2: 0200007F:1F40 0100007F:A7DA 01 00000000:00000000 00:00000000 00000000     0        0 10303 1 0 100 0 0 10 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55321 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000200007F:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55322 1 0 100 0 0 10 0
"""


def request(tmp_path, project, action="status", **extra):
    req = {"action": action, "project": str(project), "port": 18765, "addr": None, "python": None,
           "settings": None, "env": {}, "noreload": False, "start_timeout": 5.0, "stop_timeout": 2.0,
           "lines": 10, "follow": False, "state_dir": str(tmp_path / "state")}
    req.update(extra)
    return req


def instance(req):
    return state.Instance(state.Host(state.Request(req)), state.Request(req))


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "releases" / "v1"
    path.mkdir(parents=True)
    (path / "manage.py").write_text("")
    (tmp_path / "current").symlink_to("releases/v1")
    return path


# ------------------------------------------------------------------ naming


def test_the_given_path_keeps_symlinks_and_drops_only_what_changes_nothing(tmp_path, project):
    current = tmp_path / "current"
    assert identity.given_path(f"{current}/./") == str(current)
    assert identity.given_path(f"{tmp_path}//current") == str(current)
    assert identity.given_path("current", cwd=str(tmp_path)) == str(current)
    home = os.path.expanduser("~")
    assert identity.given_path("~/site") == os.path.join(home, "site")


def test_dotdot_is_resolved_as_the_kernel_resolves_it(tmp_path, project):
    # current/.. is releases/, not tmp_path: the kernel follows `current` first.
    (tmp_path / "releases" / "v2").mkdir()
    assert os.path.normpath(f"{tmp_path}/current/../v2") == str(tmp_path / "v2")
    assert identity.given_path(f"{tmp_path}/current/../v2") == str(tmp_path / "releases" / "v2")
    assert identity.given_path(f"{tmp_path}/current/../v2/../../current") == str(tmp_path / "current")


def test_a_script_path_is_compared_lexically_only_without_dotdot():
    assert identity.lexical_script("/home/u", "/srv/app/current/manage.py") == "/srv/app/current/manage.py"
    assert identity.lexical_script("/srv/app/current", "./manage.py") == "/srv/app/current/manage.py"
    assert identity.lexical_script("/srv/app", "link/../current/manage.py") is None


def test_a_runserver_named_through_the_release_link_is_a_candidate_after_the_link_moved():
    proc = {"pid": 10, "uid": 1000, "state": "S", "token": None, "cwd": "/home/u",
            "argv": ["/srv/app/releases/v1/.venv/bin/python", "/srv/app/current/manage.py", "runserver", "8000"]}
    now = "/srv/app/releases/v2/manage.py"  # what current/manage.py resolves to now
    assert identity.is_candidate(proc, now, 8000, 1000, None, set(), "/srv/app/current/manage.py")
    assert not identity.is_candidate(proc, now, 8000, 1000, None, set(), "/srv/app/other/manage.py")
    assert not identity.is_candidate(proc, now, 8001, 1000, None, set(), "/srv/app/current/manage.py")
    dotdot = dict(proc, argv=proc["argv"][:1] + ["/srv/app/x/../current/manage.py", "runserver", "8000"])
    assert not identity.is_candidate(dotdot, now, 8000, 1000, None, set(), "/srv/app/current/manage.py")


def test_state_is_per_host_and_per_given_path(tmp_path, project):
    inst = instance(request(tmp_path, tmp_path / "current"))
    base = str(tmp_path / "state")
    assert inst.given == str(tmp_path / "current") and inst.project == str(project)
    assert inst.dir == os.path.join(base, "hosts", state.host_key(inst.machine_id, inst.hostname),
                                    state.instance_name(inst.given, 18765))
    assert inst.manage_py == str(project / "manage.py")
    assert inst.legacy_dir == os.path.join(base, state.instance_name(str(project), 18765))
    direct = instance(request(tmp_path, project))
    assert direct.dir != inst.dir and direct.host_dir == inst.host_dir


def test_the_host_key_differs_by_machine_id_and_by_hostname():
    keys = {state.host_key("a" * 32, "web1"), state.host_key("b" * 32, "web1"), state.host_key("a" * 32, "web2")}
    assert len(keys) == 3
    assert state.host_key("a" * 32, "web1") == state.host_key("a" * 32, "web1")
    assert state.host_key("", "web 1/..").startswith("web_1-")


def test_metadata_names_another_host_by_its_machine_id_or_hostname():
    assert state.other_host({"machine_id": "m1", "hostname": "web1"}, "m1", "web1") is None
    assert state.other_host({}, "m1", "web1") is None
    assert state.other_host({"machine_id": "m2", "hostname": "web2"}, "m1", "web1") == "web2"
    assert state.other_host({"machine_id": "m1", "hostname": "clone"}, "m1", "web1") == "clone"


def test_the_recorded_address_is_used_only_when_it_is_one():
    assert state.recorded_addr({"addr": "127.0.0.2"}) == "127.0.0.2"
    assert state.recorded_addr({"addr": "::1"}) == "::1"
    assert state.recorded_addr({"addr": "127.0.0.1; id"}) is None
    assert state.recorded_addr({}) is None


# --------------------------------------------------------------- listeners


def test_listeners_that_keep_the_port_from_our_address():
    listeners = sockets.parse_listeners(TCP, 8000)
    assert listeners == [("10301", bytes([127, 0, 0, 1]))]  # the established socket is no listener
    ours, other = sockets.packed("127.0.0.1"), sockets.packed("127.0.0.2")
    assert sockets.conflicts(listeners[0][1], ours)
    assert not sockets.conflicts(listeners[0][1], other)
    assert sockets.conflicts(listeners[0][1], sockets.packed("0.0.0.0"))
    wildcard = sockets.parse_listeners(TCP, 8001)[0][1]
    assert sockets.conflicts(wildcard, other)
    six = dict(sockets.parse_listeners(TCP6, 8000))
    assert sockets.conflicts(six["55321"], sockets.packed("::1"))
    assert not sockets.conflicts(six["55321"], ours)
    assert sockets.conflicts(six["55322"], other)  # ::ffff:127.0.0.2
    assert not sockets.conflicts(six["55322"], ours)


# ------------------------------------------------- another host's, an old version's


def write_state(directory, pid, **meta):
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, "server.json"), "w") as handle:
        json.dump(dict(pid=pid, **meta), handle)
    with open(os.path.join(directory, "server.pid"), "w") as handle:
        handle.write(f"{pid}\n")


@pytest.mark.parametrize("action", ["status", "stop", "start"])
def test_a_pidfile_another_host_recorded_is_neither_replaced_nor_removed(tmp_path, project, action):
    inst = instance(request(tmp_path, project, action))
    write_state(inst.dir, os.getpid(), machine_id="f" * 32, hostname="elsewhere", token="t" * 32,
                boot_id="another-boot", starttime=1)
    before = {name: open(os.path.join(inst.dir, name)).read() for name in ("server.pid", "server.json")}
    result = dispatch.handle(request(tmp_path, project, action))
    assert "started on host elsewhere" in (result["error"] or result["message"]), result
    if action == "start":
        assert result["ok"] is False and "not replaced" in result["error"]
    else:
        assert result["state"] == protocol.STOPPED and result["pids"] == []
    assert {name: open(os.path.join(inst.dir, name)).read() for name in before} == before


@pytest.fixture
def leader():
    """A process of the test's own that leads its group and carries a token, as a server would."""
    token = os.urandom(16).hex()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                            env=dict(os.environ, FABSERVE_TOKEN=token))
    deadline = time.time() + 10
    while procfs.environ_token(proc.pid) != token and time.time() < deadline:
        time.sleep(0.01)
    yield proc, token
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_server_the_previous_version_recorded_is_found_and_its_state_removed_at_stop(tmp_path, project, leader):
    proc, token = leader
    inst = instance(request(tmp_path, project))
    write_state(inst.legacy_dir, proc.pid, starttime=procfs.proc_stat(proc.pid)["starttime"],
                boot_id=procfs.boot_id(), token=token, project=str(project), addr="127.0.0.1")
    status = dispatch.handle(request(tmp_path, project))
    assert status["managed"] is True and status["pid"] == proc.pid, status
    stop = dispatch.handle(request(tmp_path, project, "stop"))
    assert stop["ok"] is True and stop["pids"] == [proc.pid], stop
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert not os.path.exists(os.path.join(inst.legacy_dir, "server.pid"))


def test_a_stale_pidfile_of_the_previous_version_is_left_in_place(tmp_path, project):
    """It records no host: it may be another host's sharing this home."""
    inst = instance(request(tmp_path, project))
    write_state(inst.legacy_dir, os.getpid(), starttime=1, boot_id="another-boot", token="t" * 32)
    result = dispatch.handle(request(tmp_path, project, "stop"))
    assert result["ok"] is True and "stale pidfile of the previous state layout" in result["message"], result
    assert os.path.exists(os.path.join(inst.legacy_dir, "server.pid"))


def test_a_request_names_every_field_the_client_or_the_ansible_module_sends():
    # A field left out of Request.FIELDS would be dropped without a word: the agent
    # would act as if it had not been given.
    for verb in protocol.VERBS:
        sent = settings.request(verb, merged({}, {"project": "/srv/site"}), None)
        assert set(sent) <= set(state.Request.FIELDS), (verb, set(sent) - set(state.Request.FIELDS))
    # What the client adds for logs, and Ansible's check mode for its status probe.
    assert {"stream", "look_only"} <= set(state.Request.FIELDS)
    req = state.Request({"action": "status", "port": 8001})
    assert (req.action, req.port, req.follow, req.lines) == ("status", 8001, False, 50)
    derived = req.but(port=8002)
    assert (derived.port, req.port) == (8002, 8001) and derived.fields() == dict(req.fields(), port=8002)
