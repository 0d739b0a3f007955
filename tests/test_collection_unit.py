"""The Ansible collection's single sources: the agent and the settings are the
repo's own files, the module's options and return values are generated from
SETTINGS and the result fields, and the Ansible pins agree."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import settings
from tools import module_spec

REPO = Path(__file__).resolve().parent.parent
UTILS = module_spec.COLLECTION / "plugins" / "module_utils"


def test_the_generated_files_are_what_the_settings_give_now():
    # When a setting or a result field changes, run bin/build-collection (or
    # `.venv/bin/python -m tools.module_spec write`) and commit what it rewrote.
    assert module_spec.stale() == []


def test_module_utils_are_the_repo_agent_and_settings_themselves():
    for name in ("agent.py", "settings.py"):
        link = UTILS / name
        assert link.is_symlink(), name
        assert link.resolve() == REPO / "tasks" / name
    # The client's config layering (tasks/config.py) stays on the client.
    assert sorted(path.name for path in UTILS.iterdir()) == ["agent.py", "settings.py", "spec.py"]


def test_what_travels_with_the_module_imports_only_the_standard_library():
    # Only module_utils travel to the target: the standard library, and each other.
    for name in ("agent.py", "settings.py"):
        tree = ast.parse((REPO / "tasks" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{node.module}.py" in ("agent.py", "settings.py"), (name, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in sys.stdlib_module_names, (name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in sys.stdlib_module_names, (name, alias.name)


def test_options_are_the_per_host_request_settings_of_the_modules_verbs():
    spec = module_spec.argument_spec()
    names = {setting.name for setting in module_spec.module_settings()}
    assert {"project", "port", "addr", "env", "start_timeout", "stop_timeout", "state_dir"} <= names
    assert "agent_python" not in names and "json" not in names and "lines" not in names
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
    assert set(module_spec.STATES.values()) <= set(settings.VERBS)


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


def test_the_readme_lists_every_option_of_the_modules_argument_spec():
    text = (REPO / "README.md").read_text()
    block = text[text.index(module_spec.README_START):text.index(module_spec.README_END)]
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


#: Where pyenv keeps this machine's CPythons: root's home, which other users cannot read.
PYENV_VERSIONS = Path("/root/.pyenv/versions")


def target_interpreters(versions: Path = PYENV_VERSIONS) -> dict[str, str]:
    """/usr/bin/python3 and every pyenv CPython 3.8 or newer on this machine that
    whoever runs the tests can execute: the interpreters the module's target side
    must run under. Called at collection: a directory it cannot read (root's home,
    mode 0700, for any other user) holds no parameters, and is no error."""
    found = {"system": "/usr/bin/python3"}
    try:
        names = os.listdir(versions)
    except OSError:
        return found
    for version in sorted(names):
        python = versions / version / "bin" / "python3"
        if re.fullmatch(r"3\.(\d+)\.\d+", version) and int(version.split(".")[1]) >= 8 \
                and os.access(python, os.X_OK):
            found[version] = str(python)
    return found


def test_interpreters_are_the_executable_pythons_3_8_and_later(tmp_path):
    for version in ("3.7.16", "3.8.18", "3.13.0", "2.7.18", "3.12-dev", "3.9.18"):
        (tmp_path / version / "bin").mkdir(parents=True)
        if version != "3.9.18":  # a version whose python was never built
            (tmp_path / version / "bin" / "python3").touch(mode=0o755)
    assert target_interpreters(tmp_path) == {
        "system": "/usr/bin/python3", "3.8.18": f"{tmp_path}/3.8.18/bin/python3",
        "3.13.0": f"{tmp_path}/3.13.0/bin/python3"}


def test_interpreters_in_a_directory_no_one_may_read_are_no_parameters_and_no_error(monkeypatch):
    # What a non-root user meets in root's home (mode 0700), whoever runs this test.
    def denied(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(f"{PYENV_VERSIONS}"):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return call

    for name in ("stat", "lstat", "scandir", "listdir", "access"):
        monkeypatch.setattr(os, name, denied(getattr(os, name)))
    assert target_interpreters() == {"system": "/usr/bin/python3"}


@pytest.mark.parametrize("version", sorted(target_interpreters()))
def test_the_modules_target_side_runs_under_python_3_8_and_later(version):
    python = target_interpreters()[version]
    script = (
        "import json, os, sys; sys.path.insert(0, os.path.dirname(sys.argv[1])); "
        "from module_utils import settings, agent, spec; "
        "compile(open(sys.argv[2]).read(), sys.argv[2], 'exec'); "
        "values = settings.Values(settings.DEFAULTS); values.give('port', 70000, ('port', '')); "
        "values.give('project', '/srv/x', ('project', '')); "
        "print(json.dumps(sorted(spec.ARGUMENT_SPEC)))\n"
        "try:\n    settings.request('start', values, None)\n"
        "except settings.UsageError as exc:\n    print(exc)\n")
    done = subprocess.run([python, "-I", "-B", "-c", script, str(UTILS), str(module_spec.MODULE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names, error = done.stdout.splitlines()
    assert json.loads(names) == sorted(module_spec.argument_spec())
    assert error == "port must be a number from 1 to 65535, not 70000"
