"""What fabserve.django.runserver's check and diff mode say of an instance with a
Procfile, from a status result alone: which processes a start or a stop would act
on (and the msg naming them), and the instance and its processes afterwards.
The module's functions, imported as Ansible imports them; tests/test_ansible_processes.py
runs the same through ansible-core."""

import importlib

import pytest

from tools import module_spec

REQ = {"port": 8000, "port_range": "8000-8999", "ttl": None}
WEB_PIDS = [101, 102]


@pytest.fixture
def runserver(monkeypatch):
    monkeypatch.syspath_prepend(str(module_spec.COLLECTION.parents[2]))  # the directory of ansible_collections
    return importlib.import_module("ansible_collections.fabserve.django.plugins.modules.runserver")


def status(state, **states):
    """A status result of an instance whose processes are in `states` (name -> state), web first."""
    rows = [{"name": name, "command": None, "port": 8000 + 100 * index, "state": each,
             "pids": (WEB_PIDS if name == "web" else [200 + index]) if each in ("running", "failed") else []}
            for index, (name, each) in enumerate(states.items())]
    web = rows[0]["pids"]
    return {"state": state, "port": 8000, "pids": web, "expires_in": None, "message": state, "processes": rows}


def plan_of(table, chosen=None):
    return list(table), list(chosen or table)


def test_a_start_of_a_degraded_instance_starts_the_exited_process_alone(runserver):
    probe = status("degraded", web="running", worker="exited", watch="running")
    plan = plan_of(["web", "worker", "watch"])
    result = runserver.predicted("start", REQ, probe, plan)
    assert result["changed"] is True and result["message"] == "would be started: worker"
    assert runserver.would_be("start", result, plan) == {
        "state": "running", "port": 8000, "pids": WEB_PIDS,
        "processes": {"web": "running", "worker": "running", "watch": "running"}}


def test_a_start_with_everything_running_changes_nothing_and_a_new_process_would_start(runserver):
    probe = status("running", web="running", worker="running")
    assert runserver.predicted("start", REQ, probe, plan_of(["web", "worker"]))["changed"] is False
    grown = plan_of(["web", "worker", "css"])  # the Procfile gained a line since the last start
    result = runserver.predicted("start", REQ, probe, grown)
    assert result["changed"] is True and result["message"] == "would be started: css"
    assert runserver.would_be("start", result, grown)["processes"] == {
        "web": "running", "worker": "running", "css": "running"}


def test_a_start_leaves_a_failed_web_failed_and_only_limits_it(runserver):
    # web alive but failing its check is not started again (start says "already started but ...").
    probe = status("failed", web="failed", worker="stopped")
    plan = plan_of(["web", "worker"])
    result = runserver.predicted("start", REQ, probe, plan)
    assert result["message"] == "would be started: worker"
    assert runserver.would_be("start", result, plan) == {
        "state": "failed", "port": 8000, "pids": WEB_PIDS, "processes": {"web": "failed", "worker": "running"}}
    probe = status("degraded", web="stopped", worker="running")
    assert runserver.predicted("start", REQ, probe, plan_of(["web", "worker"], ["worker"]))["changed"] is False
    result = runserver.predicted("stop", REQ, status("running", web="running", worker="running"),
                                 plan_of(["web", "worker"], ["web"]))
    assert runserver.would_be("stop", result, plan_of(["web", "worker"], ["web"])) == {  # nothing answers: degraded
        "state": "degraded", "port": 8000, "pids": [], "processes": {"web": "stopped", "worker": "running"}}


def test_a_stop_acts_on_running_processes_only(runserver):
    probe = status("degraded", web="running", worker="exited", watch="running")
    # An exited worker has nothing left to stop.
    assert runserver.predicted("stop", REQ, probe, plan_of(["web", "worker", "watch"], ["worker"]))["changed"] is False
    plan = plan_of(["web", "worker", "watch"], ["watch"])
    result = runserver.predicted("stop", REQ, probe, plan)
    assert result["changed"] is True and result["message"] == "would be stopped: watch"
    assert runserver.would_be("stop", result, plan) == {  # the worker's exit still shows
        "state": "degraded", "port": 8000, "pids": WEB_PIDS,
        "processes": {"web": "running", "worker": "exited", "watch": "stopped"}}
    everything = plan_of(["web", "worker", "watch"])
    result = runserver.predicted("stop", REQ, probe, everything)
    assert result["message"] == "would be stopped: web, watch"
    assert runserver.would_be("stop", result, everything) == {
        "state": "stopped", "port": 8000, "pids": [],
        "processes": {"web": "stopped", "worker": "stopped", "watch": "stopped"}}


def test_a_restart_runs_every_chosen_process_anew(runserver):
    probe = status("running", web="running", worker="running")
    plan = plan_of(["web", "worker"], ["web"])
    result = runserver.predicted("restart", REQ, probe, plan)
    assert result["changed"] is True and result["message"] == "would be restarted"
    assert runserver.would_be("restart", result, plan) == {
        "state": "running", "port": 8000, "pids": None, "processes": {"web": "running", "worker": "running"}}


def test_without_a_procfile_the_server_alone_as_before(runserver):
    probe = {"state": "stopped", "port": 8000, "pids": [], "expires_in": None, "message": "not running",
             "processes": None}
    result = runserver.predicted("start", REQ, probe, None)
    assert result["changed"] is True and result["message"] == "would be started"
    assert runserver.would_be("start", result, None) == {"state": "running", "port": 8000, "pids": None}
    assert runserver.predicted("stop", REQ, probe, None)["changed"] is False
