"""fabserve as an installed package: a wheel built from the checkout, installed in
a fresh virtualenv, run from directories outside the checkout; the `fabserve`
command over the real sshd and locally, and the collection in a fabfile of a
user's own, with and without fabserve's executor."""

import email.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

from bed.fab import FabResult
from bed.package import build_wheel, install
from bed.run import run_in_group
from bed.state import ensure_dir
from helpers import REPO, alive, bed_outcome, free_port, port_listening, where

from tasks import __version__, settings

EXECUTOR_LINE = "tasks: {executor_class: fabserve.executor.ConcurrentExecutor}"


def pins(path=REPO / "requirements.txt"):
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def workdir(target):
    """A directory outside the checkout every account can read: the wheel, the
    virtualenv and the directories the commands run from."""
    path = Path(tempfile.mkdtemp(prefix="package-", dir=ensure_dir()))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(workdir):
    with bed_outcome():
        return build_wheel(workdir / "build")


@pytest.fixture(scope="module")
def installed(wheel, workdir):
    with bed_outcome():
        return install(wheel, workdir / "venv")


@pytest.fixture(scope="module")
def outside(workdir):
    """An empty directory outside the checkout (no inventory, no fabfile), for root's runs."""
    path = workdir / "elsewhere"
    path.mkdir(mode=0o755)
    return path


def as_root(argv, cwd, timeout=120, env=None):
    """A command as root from cwd, without the caller's FABRIC_* variables but with `env`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FABRIC_")} | (env or {})
    result = run_in_group([str(arg) for arg in argv], cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return FabResult(result.returncode, result.stdout, result.stderr)


def as_test_user(as_user, argv, cwd):
    result = as_user([str(arg) for arg in argv], cwd=cwd)
    return FabResult(result.returncode, result.stdout, result.stderr)


def one_line(text):
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_the_wheel_installs_the_package_fabserve_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"fabserve", f"fabserve-{__version__}.dist-info"}
    modules = {name.split("/", 1)[1] for name in names if name.startswith("fabserve/")}
    assert modules == {str(path.relative_to(REPO / "tasks")) for path in (REPO / "tasks").glob("**/*.py")}
    assert {"agent/dispatch.py", "program.py", "settings.py", "config.py"} <= modules
    assert "module_spec.py" not in modules  # a build tool of the checkout's (tools/), needing yaml


def test_the_wheel_requires_exactly_the_pins_of_requirements_txt(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.parser.Parser().parsestr(archive.read(f"fabserve-{__version__}.dist-info/METADATA").decode())
        scripts = archive.read(f"fabserve-{__version__}.dist-info/entry_points.txt").decode()
    assert metadata.get_all("Requires-Dist") == pins()
    assert metadata["Name"] == "fabserve" and metadata["Version"] == __version__
    assert "fabserve = fabserve.program:program.run" in scripts


def test_version_and_list_as_the_test_user_outside_the_checkout(installed, as_user, target):
    version = as_test_user(as_user, [installed.fabserve, "--version"], target.home)
    assert version.returncode == 0, version.stderr
    pinned = dict(pin.split("==") for pin in pins())
    assert version.stdout.splitlines() == [f"fabserve {__version__}", f"Fabric {pinned['fabric']}",
                                           f"Paramiko {pinned['paramiko']}", f"Invoke {pinned['invoke']}"]
    listing = as_test_user(as_user, [installed.fabserve, "--list"], target.home)
    assert listing.returncode == 0, listing.stderr
    listed = re.findall(r"^  (\S+)", listing.stdout, re.MULTILINE)
    assert sorted(listed) == sorted(settings.TASKS)


def test_start_status_stop_over_ssh_leave_site_packages_as_installed(installed, outside, target, site):
    before = installed.files()
    port = free_port()
    command = [installed.fabserve, "-S", target.ssh_config, "-H", target.alias]
    start = as_root([*command, "start", *where(site, port)], outside)
    assert start.returncode == 0, start.stderr
    # The hint names the command that ran, and it works as pasted.
    hint = start.stdout.strip().splitlines()[-1].split("stop it with: ", 1)[1]
    assert hint == f"{installed.fabserve} -S {target.ssh_config} -H {target.alias} stop --project {site} --port {port}"
    # The instance named by ./fabserve.yaml, -t given (it wins over fabserve's default timeout).
    configured = outside.parent / "configured"
    configured.mkdir(mode=0o755)
    (configured / "fabserve.yaml").write_text(f"fabserve:\n  project: {site}\n  port: {port}\n")
    status = as_root([*command, "-t", "5", "status", "--json"], configured)
    assert status.returncode == 0 and (status.json["state"], status.json["port"]) == ("running", port), status.stderr
    stop = as_root(hint.split(), outside)
    assert stop.returncode == 0 and stop.stdout.startswith(f"{target.alias}: stopped pids "), stop.stderr
    assert not port_listening(port)
    # Run as root, which could write anywhere: nothing under site-packages changed.
    assert installed.files() == before


def test_companions_through_the_command_over_ssh(installed, outside, target, make_procfile_project):
    project = make_procfile_project()  # its Procfile: worker and watch
    port = free_port()
    configured = outside.parent / f"processes-{port}"
    configured.mkdir(mode=0o755)
    (configured / "fabserve.yaml").write_text(json.dumps({"fabserve": {"project": str(project), "port": port}}))
    command = [installed.fabserve, "-S", target.ssh_config, "-H", target.alias]
    start = as_root([*command, "start", "--json"], configured)
    assert start.returncode == 0, start.stdout + start.stderr
    assert [(row["name"], row["state"]) for row in start.json["processes"]] == [
        ("web", "running"), ("worker", "running"), ("watch", "running")], start.json
    status = as_root([*command, "status"], configured)
    assert status.returncode == 0 and len(status.stdout.splitlines()) == 4, status.stdout + status.stderr
    logs = as_root([*command, "logs", "--process", "watch", "--json"], configured)
    assert logs.returncode == 0 and logs.json["lines"][0].endswith("watch: .venv/bin/python watch.py"), logs.json
    every = {pid for row in start.json["processes"] for pid in row["pids"]}
    stop = as_root([*command, "stop", "--json"], configured)
    assert stop.returncode == 0 and every <= set(stop.json["pids"]), stop.stdout + stop.stderr
    assert not any(alive(pid) for pid in every) and not port_listening(port)


def test_sync_sends_the_current_directory_over_ssh(installed, workdir, target, site):
    tree = workdir / "tree"
    tree.mkdir(mode=0o755)
    (tree / "hello.txt").write_text("hello\n")
    dest = site.parent / "synced"
    sync = as_root([installed.fabserve, "-S", target.ssh_config, "-H", target.alias, "sync", "--project", dest], tree)
    assert sync.returncode == 0, sync.stderr
    assert one_line(sync.stdout).startswith(f"{target.alias}: synced 1 file (6 B), deleted 0, in ")
    assert (dest / "hello.txt").read_text() == "hello\n"


def test_a_fabfile_of_your_own_runs_the_collection_under_another_name(installed, workdir, target, site):
    port = free_port()
    mine = workdir / "mine"
    mine.mkdir(mode=0o755)
    (mine / "fabfile.py").write_text(
        "from invoke import Collection, task\n"
        "import fabserve\n\n\n"
        "@task\n"
        "def deploy(c):\n"
        "    \"\"\"The team's own task.\"\"\"\n\n\n"
        "ns = Collection(deploy)\n"
        "ns.add_collection(fabserve.collection, \"serve\")\n"
        f"ns.configure(fabserve.config(project={str(site)!r}))\n")
    command = [installed.fab, "-S", target.ssh_config, "-H", target.alias]
    listing = as_root([installed.fab, "--list"], mine)
    assert {f"serve.{verb}" for verb in settings.TASKS} | {"deploy"} <= set(listing.stdout.split())
    # The parent's fabserve section and a FABRIC_FABSERVE_* variable name the instance.
    port_env = {"FABRIC_FABSERVE_PORT": str(port)}
    start = as_root([*command, "serve.start"], mine, env=port_env)
    assert start.returncode == 0, start.stderr
    assert start.stdout.strip().splitlines()[-1].endswith(f" -H {target.alias} serve.stop --project {site} "
                                                          f"--port {port}")
    assert port_listening(port)
    status = as_root([*command, "serve.status", "--json"], mine, env=port_env)
    assert (status.returncode, status.json["port"], status.json["project"]) == (0, port, str(site))
    stop = as_root([*command, "serve.stop", "--json"], mine, env=port_env)
    assert stop.returncode == 0 and stop.json["state"] == "stopped", stop.stderr
    assert not port_listening(port)
    # Fabric's own executor still gives fabserve's exit codes: 3 for a server not running.
    again = as_root([*command, "serve.status", "--json"], mine, env=port_env)
    assert again.returncode == 3 and again.json["state"] == "stopped"


def test_a_group_needs_fabserves_executor_named_in_one_line(installed, workdir, target, site):
    mine = workdir / "grouped"
    (mine / "inventory").mkdir(parents=True)
    (mine / "fabfile.py").write_text("from invoke import Collection\nimport fabserve\n\n"
                                     "ns = Collection()\nns.add_collection(fabserve.collection, 'serve')\n")
    (mine / "inventory" / "hosts.yml").write_text(f"previews:\n  hosts:\n    {target.alias}:\n")
    command = [installed.fab, "-S", target.ssh_config, "-H", "previews", "serve.status", *where(site, free_port())]
    refused = as_root([*command, "--json"], mine)
    assert refused.returncode == 2 and refused.stdout == ""
    line = one_line(refused.stderr)
    assert line.startswith("previews: -H names an inventory group (inventory/hosts.yml)") and EXECUTOR_LINE in line
    # The line it names is the fix: the group expands to its host.
    (mine / "fabric.yaml").write_text(EXECUTOR_LINE + "\n")
    expanded = as_root([*command, "--json"], mine)
    assert expanded.returncode == 3, expanded.stderr
    assert (expanded.json["host"], expanded.json["state"]) == (target.alias, "stopped")


def test_local_mode_serves_the_current_directory_or_says_what_to_pass(installed, as_user, target, site):
    before = installed.files()
    port = free_port()
    start = as_test_user(as_user, [installed.fabserve, "start", "--port", port, "--json"], site)
    assert start.returncode == 0, start.stderr
    assert (start.json["state"], start.json["project"], start.json["host"]) == ("running", str(site), "local")
    stop = as_test_user(as_user, [installed.fabserve, "stop", "--port", port, "--json"], site)
    assert stop.returncode == 0 and stop.json["state"] == "stopped", stop.stderr
    assert not port_listening(port)
    # The compiled agent is kept in the user's cache, not beside the package.
    assert list((target.home / ".cache" / "fabserve").glob("agent-*"))
    assert installed.files() == before
    elsewhere = as_test_user(as_user, [installed.fabserve, "start", "--port", port], site.parent)
    assert elsewhere.returncode == 2 and elsewhere.stdout == ""
    assert one_line(elsewhere.stderr) == (f"local: no --project given and {site.parent} holds no manage.py; "
                                          f"pass --project DIR or run from the Django project's directory")


def test_the_installed_inventory_is_the_current_directorys(installed, outside, target):
    # The checkout's inventory (web1, web2 in group staging) is not the installed command's.
    refused = as_root([installed.fabserve, "-S", target.ssh_config, "-H", "staging", "status"], outside)
    assert refused.returncode == 2
    assert one_line(refused.stderr).startswith("unknown host or group 'staging' (no inventory file)")


def test_host_keys_are_checked_through_the_command_and_the_collection(installed, workdir, target):
    # The target's ssh_config accepts any key; fabserve.strict_host_keys still refuses it.
    mine = workdir / "strict"
    mine.mkdir(mode=0o755)
    (mine / "fabfile.py").write_text("from invoke import Collection\nimport fabserve\n\n"
                                     "ns = Collection()\nns.add_collection(fabserve.collection, 'serve')\n")
    strict = {"FABRIC_FABSERVE_STRICT_HOST_KEYS": "1"}
    for program, task in ((installed.fabserve, "status"), (installed.fab, "serve.status")):
        refused = as_root([program, "-S", target.ssh_config, "-H", target.alias, task, "--project", "/srv/site"],
                          mine, env=strict)
        assert refused.returncode == 1 and refused.stdout == "", refused.stderr
        assert one_line(refused.stderr).startswith(f"{target.alias}: status failed: unknown host key for "
                                                   f"[127.0.0.1]:{target.port} (")
        assert "refused by fabserve.strict_host_keys" in refused.stderr
