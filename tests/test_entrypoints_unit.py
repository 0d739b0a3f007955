"""What differs between `fab` in the checkout, the `fabserve` command and the
collection in a fabfile of a user's own: defaults, the executor guard, exit
codes under Fabric's own executor, the program's config and version."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fabric import Config, Connection
from invoke import Collection, Context
from invoke.exceptions import Exit

import tasks
from helpers import REPO, free_port
from tasks import __version__, collection, entrypoints, remote, report, settings, verbs
from tasks.config import CONFIGURED, CONNECT_TIMEOUT
from tasks.program import PROJECT_FILE, ProgramConfig, program


def fabfile_ns():
    spec = importlib.util.spec_from_file_location("checkout_fabfile", REPO / "fabfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ns


def test_only_the_checkouts_fabfile_uses_the_checkouts_defaults():
    checkout = Config(overrides=fabfile_ns().configuration())
    installed = Config(overrides=collection.configuration())
    assert entrypoints.inventory_path(checkout) == entrypoints.DEFAULT_INVENTORY
    assert entrypoints.local_project(checkout) == str(entrypoints.EXAMPLE_PROJECT)  # the bundled example
    assert (entrypoints.EXAMPLE_PROJECT / "manage.py").is_file()
    assert entrypoints.inventory_path(installed) == entrypoints.LOCAL_INVENTORY
    assert not entrypoints.inventory_path(installed).is_absolute()  # read from the current directory
    assert sorted(fabfile_ns().tasks) == sorted(collection.tasks) == sorted(settings.TASKS)


def test_installed_the_local_project_is_the_current_directory_with_manage_py(tmp_path, monkeypatch):
    config = Config(overrides=collection.configuration())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(settings.UsageError, match=f"^no --project given and {tmp_path} holds no manage.py; "
                                                 "pass --project DIR"):
        entrypoints.local_project(config)
    (tmp_path / "manage.py").write_text("")
    assert entrypoints.local_project(config) == str(tmp_path)


def connection(host, inventory=None):
    overrides = {"fabserve": {"inventory": str(inventory)}} if inventory else {}
    return Connection(host, config=Config(overrides={**collection.configuration(), **overrides}))


@pytest.mark.parametrize("name, kind", [("previews", "group"), ("web1", "host"), ("all", "group")])
def test_inventory_names_under_fabrics_executor_name_the_line_to_add(tmp_path, name, kind):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("previews:\n  hosts:\n    web1:\n      ansible_host: 10.9.9.9\n")
    with pytest.raises(settings.UsageError) as caught:
        entrypoints.require_executor(connection(name, inventory))
    assert str(caught.value) == (f"-H names an inventory {kind} ({inventory}), which only fabserve's executor "
                                 f"knows; add `{entrypoints.EXECUTOR_LINE}` to the fabric.yaml beside your fabfile")
    assert entrypoints.EXECUTOR_LINE == "tasks: {executor_class: tasks.executor.ConcurrentExecutor}"


def test_fabrics_executor_refuses_bare_names_and_passes_real_hosts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no inventory/hosts.yml here
    with pytest.raises(settings.UsageError, match="^unknown host or group 'staging' .*executor_class"):
        entrypoints.require_executor(connection("staging"))
    for host in ("web1.example.com", "deploy@web1", "web1:2222", "10.0.0.7", "localhost"):
        entrypoints.require_executor(connection(host))
    named = connection("previews")
    named._set(fabserve_name="previews")  # as fabserve's executor hands it over
    entrypoints.require_executor(named)
    entrypoints.require_executor(Context())  # local: no host to check


def test_fabrics_executor_gets_fabserves_exit_code_from_the_task():
    not_running = {"action": "status", "state": "stopped", "ok": True, "error": None}
    failed = {"action": "stop", "state": "failed", "ok": False, "error": "cannot connect"}
    for result, code in ((not_running, 3), (failed, 1)):
        with pytest.raises(Exit) as caught:
            entrypoints.end_task(Context(), result)
        assert caught.value.code == code
    entrypoints.end_task(Context(), {"action": "stop", "state": "stopped", "ok": True, "error": None})
    ours = Context()
    ours._set(fabserve_fanout=False)  # fabserve's executor sums the codes up itself
    entrypoints.end_task(ours, failed)


@pytest.mark.parametrize("argv, stop", [
    (["-H", "web1", "start", "--port", "8001"], "stop"),
    (["-S", "cfg", "serve.start", "--project", "/srv/a.start"], "serve.stop"),
    (["ops.serve.restart"], "ops.serve.stop"),
])
def test_the_stop_hint_names_stop_as_the_run_named_start(argv, stop):
    action = "restart" if "restart" in argv[-1] else "start"
    assert verbs.stop_task(argv, action) == stop


def test_the_programs_project_file_is_fabserve_yaml_of_the_current_directory(tmp_path):
    (tmp_path / "fabric.yaml").write_text("fabserve: {port: 9001}\n")
    (tmp_path / f"{PROJECT_FILE}.yaml").write_text("fabserve: {port: 9002}\n")
    config = ProgramConfig(lazy=True)
    config.set_project_location(str(tmp_path))
    config.load_project()
    assert config.fabserve.port == 9002
    assert config._project_path == str(tmp_path / "fabserve.yaml")
    assert config.file_prefix is None  # the user's and system files keep Fabric's names


def test_the_program_prints_every_version():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as caught:
        program.run(["fabserve", "--version"])
    assert caught.value.code == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"fabserve {__version__}"
    assert [line.split()[0] for line in lines[1:]] == ["Fabric", "Paramiko", "Invoke"]


def test_t_wins_over_fabserves_connect_timeout_on_every_hop():
    config = Config(overrides={**collection.configuration(), "connect_kwargs": {"timeout": 3}})
    gateway = Connection("jump.example.com", config=config)
    host = Connection("web1.example.com", config=config, gateway=gateway)
    assert host.connect_timeout == CONNECT_TIMEOUT  # Fabric would refuse to connect with both
    remote.one_connect_timeout(host)
    assert (host.connect_timeout, gateway.connect_timeout) == (None, None)
    assert host.connect_kwargs["timeout"] == 3
    untouched = Connection("web2.example.com", config=Config(overrides=collection.configuration()))
    remote.one_connect_timeout(untouched)
    assert untouched.connect_timeout == CONNECT_TIMEOUT


def test_a_parent_collections_config_reaches_the_collection_added_under_another_name():
    parent = Collection()
    parent.add_collection(collection, "serve")
    parent.configure(tasks.config(port=8123, project="/srv/site"))
    merged = parent.configuration("serve.start")
    assert (merged["fabserve"]["port"], merged["fabserve"]["project"]) == ("8123", "/srv/site")
    assert merged["fabserve"]["stop_timeout"] == CONFIGURED["stop_timeout"]
    assert merged["timeouts"]["connect"] == CONNECT_TIMEOUT  # as for `fab` in the checkout
    assert merged["runners"] == fabfile_ns().configuration()["runners"]
    assert merged[entrypoints.CHECKOUT] is False

    with pytest.raises(TypeError, match="^fabserve has no setting prot$"):
        tasks.config(prot=8123)


def test_a_broken_project_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "fabserve.yaml").write_text("fabserve: {port: [\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        program.run(["fabserve", "status"])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cannot read fabserve.* of the current directory: while parsing a flow node")
    assert len(error.splitlines()) == 1 and "Traceback" not in error


def test_list_as_json_lines_under_fabrics_executor_still_gets_fabserves_exit_code(monkeypatch, capsys):
    failed = report.failure("web1", "list", "cannot connect")
    monkeypatch.setattr(verbs, "operate", lambda c, action, flags: failed)
    with pytest.raises(Exit) as caught:
        verbs.list_servers.body(Context(config=Config()), json=True)
    assert caught.value.code == 1
    assert [json.loads(line)["error"] for line in capsys.readouterr().out.splitlines()] == ["cannot connect"]


#: The `fabserve` command as its console script runs it, from the checkout.
FABSERVE = "import sys; sys.argv[0] = 'fabserve'; from tasks.program import program; program.run()"


def run_fabserve(cwd: Path, *args: str, remove: bool = False) -> subprocess.CompletedProcess:
    """`fabserve ARGS` in `cwd`, which a shell removes first when `remove`."""
    script = 'cd "$1" && ' + ('rmdir "$1" && ' if remove else "") + 'shift && exec "$@"'
    return subprocess.run(["sh", "-c", script, "sh", str(cwd), sys.executable, "-c", FABSERVE, *args],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def test_the_program_runs_no_fabserve_py_of_the_current_directory(tmp_path):
    ran = tmp_path / "ran"
    (tmp_path / "fabserve.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    result = run_fabserve(tmp_path, "--list")
    assert result.returncode == 0, result.stderr
    assert not ran.exists()


def test_a_project_file_others_could_have_planted_is_ignored_with_a_line(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    (shared / "fabserve.yaml").write_text("fabserve: {port: [\n")  # would be exit 2 if read
    result = run_fabserve(shared, "--list")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"ignoring {shared}/fabserve.yaml: its directory is writable by others\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_project_file_of_another_user_is_ignored_with_a_line(tmp_path):
    planted = tmp_path / "fabserve.yml"
    planted.write_text("fabserve: {port: [\n")
    os.chown(planted, 65534, 65534)
    result = run_fabserve(tmp_path, "--list")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"ignoring {planted}: it is owned by uid 65534\n"


def test_a_deleted_current_directory_does_not_fail_a_remote_verb(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    host = f"nobody@127.0.0.1:{free_port()}"
    result = run_fabserve(gone, "-H", host, "status", "--project", "/srv/site", remove=True)
    assert not gone.exists()
    assert result.returncode == 1, result.stderr  # the host is down: failed, not a usage error
    assert result.stderr.strip() == f"{host}: status failed: cannot connect: Connection refused"
