"""The Ansible collection's single sources: the agent and the settings are the
repo's own files, the module's options and return values are generated from
SETTINGS and the result fields, and the Ansible pins agree."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bed.interpreters import OLDEST, target_interpreters
from tasks import agent, settings
from tasks.agent import protocol
from tools import module_spec

REPO = Path(__file__).resolve().parent.parent
UTILS = module_spec.COLLECTION / "plugins" / "module_utils"
#: What travels to the target as the module's module_utils: fabserve's own files (the rest is generated).
SHIPPED = ("settings.py", *(f"agent/{name}.py" for name in agent.MODULES))


def test_the_generated_files_are_what_the_settings_give_now():
    # When a setting or a result field changes, run bin/build-collection (or
    # `.venv/bin/python -m tools.module_spec write`) and commit what it rewrote.
    assert module_spec.stale() == []


def test_module_utils_are_the_repo_agent_and_settings_themselves():
    for name in SHIPPED:
        link = UTILS / name
        assert link.is_symlink(), name
        assert link.resolve() == REPO / "tasks" / name
    # ansible-galaxy copies a file symlink as the file, but skips a directory symlink
    # pointing outside the collection: the agent is a real directory of file symlinks.
    assert (UTILS / "agent").is_dir() and not (UTILS / "agent").is_symlink()
    assert sorted(f"agent/{path.name}" for path in (UTILS / "agent").iterdir()) == \
        sorted(name for name in SHIPPED if name.startswith("agent/"))
    # The client's config layering (tasks/config.py) stays on the client.
    assert sorted(path.name for path in UTILS.iterdir()) == ["agent", "settings.py", "spec.py"]


@pytest.mark.parametrize("name", SHIPPED)
def test_what_travels_with_the_module_is_python_3_6_importing_only_the_standard_library(name):
    # Only module_utils travel to the target: the standard library, and each other
    # (settings imports the agent's protocol; the agent's modules import each other).
    source = REPO / "tasks" / name
    siblings = {path.stem for path in source.parent.iterdir()}  # modules and packages beside it
    tree = ast.parse(source.read_text(), feature_version=OLDEST)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and (node.module or "").split(".")[0] in siblings | {""}, (name, node.module)
        elif isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in sys.stdlib_module_names, (name, node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in sys.stdlib_module_names, (name, alias.name)


def test_options_are_the_request_settings_of_the_modules_verbs_per_host_or_per_call():
    spec = module_spec.argument_spec()
    names = {setting.name for setting in module_spec.module_settings()}
    assert {"project", "port", "addr", "env", "start_timeout", "stop_timeout", "state_dir"} <= names
    assert "agent_python" not in names and "json" not in names and "lines" not in names
    assert "process" not in names and "follow" not in names  # logs' flags: no state runs logs
    # A Procfile's options, typed as their parsers take them: `only` also as `web,worker`.
    assert spec["processes"] == {"type": "dict", "default": {}} and spec["env_file"] == {"type": "str"}
    assert spec["only"] == {"type": "list", "elements": "str"}
    assert settings.SETTING["only"].parse(["web", "worker"]) == settings.SETTING["only"].parse("web,worker")
    assert set(spec) == names | {"timeout"}
    assert spec["project"]["required"] is True
    for setting in module_spec.module_settings():
        if "default" in spec[setting.name]:
            # The documented default is one the setting's own parser takes.
            assert setting.parse(spec[setting.name]["default"]) == setting.parse(setting.default), setting.name
    assert spec["port"] == {"type": "raw"} and spec["start_timeout"]["type"] == "float"  # a number or auto
    assert spec["env"]["type"] == "dict" and spec["noreload"]["type"] == "bool"


def test_states_run_agent_verbs():
    assert module_spec.STATES == {"started": "start", "stopped": "stop", "restarted": "restart", "status": "status"}
    assert set(module_spec.STATES.values()) <= set(protocol.VERBS)


def test_return_values_are_the_result_fields():
    fields = module_spec.return_fields()
    assert "host" not in fields
    assert {"action", "ok", "changed", "state", "pid", "pids", "url", "log", "message", "error",
            "log_tail", "killed", "port_free"} <= set(fields)
    assert "lines" not in fields  # logs is fab's only
    # Every field is in every result (null where it does not apply), so a task may read any of them.
    assert {field["returned"] for field in fields.values()} == {"always"}
    assert fields["log_tail"]["description"].endswith("Null unless state=started or restarted.")
    assert fields["ambiguous"]["description"].endswith("(exit 2).")  # every state may give it


def test_the_module_fills_in_every_result_field_and_takes_its_own_options():
    spec = ast.literal_eval(module_spec.spec_text().split("RESULTS = ", 1)[1].splitlines()[0])
    assert spec == tuple(module_spec.return_fields())
    assert "http_status" in spec and "killed" in spec and "host" not in spec
    own = module_spec.own_spec()
    assert own["fail_if_not_running"] == {"type": "bool", "default": False}
    assert own["state"]["choices"] == list(module_spec.STATES) and own["state"]["default"] == "started"
    assert not set(own) & set(module_spec.argument_spec())  # no own option is sent to the agent as a setting


def test_the_ansible_page_lists_every_option_of_the_modules_argument_spec():
    text = module_spec.ANSIBLE_PAGE.read_text()
    block = text[text.index(module_spec.TABLE_START):text.index(module_spec.TABLE_END)]
    listed = re.findall(r"^\| `(\w+)` \|", block, re.MULTILINE)
    assert listed == list({**module_spec.own_spec(), **module_spec.argument_spec()})
    assert {"check", "ttl", "log_keep", "log_max", "port_range", "fail_if_not_running", "state"} <= set(listed)


def requirement(path, name):
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip().startswith(f"{name}==")]
    assert len(lines) == 1, path
    return lines[0]


def test_the_tests_and_the_benchmark_pin_the_same_ansible_core():
    for name in ("ansible-core", "cryptography"):
        assert requirement(REPO / "requirements-test.txt", name) == \
            requirement(REPO / "bench" / "requirements.txt", name), name
    assert "ansible" not in (REPO / "requirements.txt").read_text().lower()


@pytest.mark.parametrize("version", sorted(target_interpreters()))
def test_the_modules_settings_and_agent_run_under_python_3_6_and_later(version):
    # The module itself needs 3.8 (ansible-core 2.19's own module code refuses
    # older targets); what fabserve ships with it keeps to the agent's 3.6.
    python = target_interpreters()[version]
    script = (
        "import json, os, sys; sys.path.insert(0, os.path.dirname(sys.argv[1])); "
        "from module_utils import settings, spec; from module_utils.agent import dispatch; "
        "compile(open(sys.argv[2]).read(), sys.argv[2], 'exec'); "
        "values = settings.Values(settings.DEFAULTS); values.give('port', 70000, ('port', '')); "
        "values.give('project', '/srv/x', ('project', '')); "
        "print(json.dumps(sorted(spec.ARGUMENT_SPEC)))\n"
        "try:\n    settings.request('start', values, None)\n"
        "except settings.UsageError as exc:\n    print(exc)\n"
        "for name, value in (('port', ' 8001 '), ('ttl', '2h'), ('log_max', '1m'), ('start_timeout', '1.5')):\n"
        "    values.give(name, value, (name, ''))\n"
        "req = settings.request('start', values, None)\n"
        "print(json.dumps([req[name] for name in ('port', 'ttl', 'log_max', 'start_timeout')]))\n")
    done = subprocess.run([python, "-I", "-B", "-c", script, str(UTILS), str(module_spec.MODULE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names, error, parsed = done.stdout.splitlines()
    assert json.loads(names) == sorted(module_spec.argument_spec())
    assert error == "port must be a number from 1 to 65535, not 70000"
    assert json.loads(parsed) == [8001, 7200, 1 << 20, 1.5]
