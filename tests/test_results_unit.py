"""The result fields: docs/output.md's "JSON output" names exactly the declared ones,
and the results the agent and the client build carry them."""

import importlib
import re
from pathlib import Path

from tasks import agent, report, settings
from tasks.agent import dispatch, protocol
from tasks.config import merged

OUTPUT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "output.md"
ALWAYS = [name for name, _ in protocol.ALWAYS]
ANSWERED = [name for name, _ in protocol.ANSWERED]
DECLARED = set(ALWAYS) | set(ANSWERED) | {name for name, _, _ in protocol.EXTRAS}


def json_section() -> str:
    text = OUTPUT_PAGE.read_text()
    section = text[text.index("## JSON output\n"):]
    return section.split("\n#", 1)[0]


def test_the_output_page_names_every_declared_field_and_no_other():
    named = set(re.findall(r"`([a-z_]+)`", json_section()))
    assert named - {protocol.RUNNING, protocol.STOPPED, protocol.FAILED, protocol.DEGRADED} == DECLARED


def test_every_field_is_declared_once_with_a_description():
    entries = list(protocol.ALWAYS) + list(protocol.ANSWERED) + [(name, text) for name, _, text in protocol.EXTRAS]
    assert len(entries) == len(DECLARED)
    assert all(text for _, text in entries)
    for _, verbs, _ in protocol.EXTRAS:  # an agent verb's, or up's, which the client puts together
        assert set(verbs) <= set(dispatch.HANDLERS) | {"up"}


def test_a_client_failure_carries_every_always_present_field():
    result = report.failure("web1", "stop", "cannot connect: Connection refused")
    assert list(result) == ALWAYS
    assert result["state"] == protocol.FAILED and result["pids"] == [] and result["ok"] is False
    assert result["message"] == result["error"] == "cannot connect: Connection refused"


def agent_answer(tmp_path, action, project):
    req = settings.request(action, merged({}, {"project": str(project),
                                               "state_dir": str(tmp_path / "state")}), [])
    return dispatch.handle(req)


def test_agent_answers_carry_the_answered_fields_and_only_declared_ones(tmp_path):
    project = tmp_path / "site"
    project.mkdir()
    (project / "manage.py").write_text("")
    for action in ("status", "stop"):
        result = agent_answer(tmp_path, action, project)
        assert result["action"] == action and result["state"] == protocol.STOPPED and result["error"] is None
        assert set(ALWAYS) | set(ANSWERED) <= set(result) <= DECLARED
    failed = agent_answer(tmp_path, "logs", project)  # no log yet
    assert failed["state"] == protocol.FAILED and failed["error"].startswith("no log yet")
    assert set(ALWAYS) | set(ANSWERED) <= set(failed) <= DECLARED
    assert protocol.exit_code("status", agent_answer(tmp_path, "status", project)) == 3


def test_the_verbs_that_change_a_server_hold_its_lock():
    assert {name: locks for name, (_, _, locks) in dispatch.HANDLERS.items()} == {
        "start": True, "stop": True, "restart": True, "extend": True, "status": False, "logs": False, "list": False,
        "manage": False, "destroy": False, "sync": False, "setup": False, "prune": False}
    assert sorted(dispatch.HANDLERS) == sorted(protocol.VERBS)


def test_each_verb_names_a_function_of_a_module_of_the_package_imported_for_it_alone():
    for action, (module, function, _) in dispatch.HANDLERS.items():
        assert module in agent.MODULES, action
        run, _ = dispatch.handler(action)
        assert run is getattr(importlib.import_module(f"tasks.agent.{module}"), function), action
