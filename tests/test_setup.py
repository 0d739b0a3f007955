"""`setup` over the real sshd and locally, as the unprivileged test user, with
no network: requirements from local wheelhouses (a tiny hand-made package,
fabserve_probe 1.0 and 2.0, and Django's wheels fetched once and cached). The
first setup makes the venv, the same requirements again do nothing, changed
ones install into a new venv and switch .venv; a failed install exits 1 with
pip's last lines and leaves the previous venv serving; a user's own .venv is
refused untouched; --python installs into an existing interpreter; uv is used
when the host has it; --timeout ends the install's whole group."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bed.state import ensure_dir
from bed.wheels import PROBE, django_wheelhouse, probe_wheel
from helpers import REPO, free_port, http_status, where

VENVS = ".fabserve-venvs"
DJANGO_PIN = (REPO / "example" / "requirements.txt").read_text().strip()


def venvs_in(project: Path) -> list[str]:
    """The venvs in the project's VENVS (its lock file left out)."""
    return sorted(name for name in os.listdir(project / VENVS) if not name.startswith("."))


@pytest.fixture
def probes() -> Iterator[Path]:
    """A wheelhouse every account can read holding PROBE 1.0 and 2.0 (never 3.0); not
    under /tmp, which each of the namespaced hosts mounts a tmpfs of its own over."""
    directory = Path(tempfile.mkdtemp(prefix="probes-", dir=ensure_dir()))
    directory.chmod(0o755)
    for version in ("1.0", "2.0"):
        probe_wheel(directory, version)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def django_wheels() -> Path:
    return django_wheelhouse(DJANGO_PIN)


def requirements(project: Path, target, *lines: str, name: str = "requirements.txt") -> None:
    """Write the project's requirements file (owned by the test user) with `lines`."""
    path = project / name
    path.write_text("".join(f"{line}\n" for line in lines))
    os.chown(path, target.uid, -1)


def offline(probes: Path, *pins: str) -> tuple[str, ...]:
    return ("--no-index", f"--find-links {probes}", *pins)


@pytest.fixture
def bare(site: Path) -> Path:
    """The test site without the .venv link make_project gives it (to the shared target venv)."""
    (site / ".venv").unlink()
    return site


def probe_version(as_user, python: Path | str) -> str:
    result = as_user([str(python), "-c", f"import {PROBE}; print({PROBE}.VERSION)"])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_setup_installs_then_does_nothing_then_installs_what_changed(run, bare, target, probes, as_user, mode):
    requirements(bare, target, *offline(probes, f"{PROBE}==1.0"))
    first = run("setup", "--project", str(bare))
    assert first.returncode == 0, first.stdout + first.stderr
    answer = first.json
    assert answer["ok"] is True and answer["changed"] is True and answer["installer"] == "pip", answer
    assert re.fullmatch(rf"{VENVS}/[0-9a-f]{{12}}", answer["venv"]) and answer["python"] == f"{bare}/.venv/bin/python"
    assert os.readlink(bare / ".venv") == answer["venv"]
    assert probe_version(as_user, bare / ".venv" / "bin" / "python") == "1.0"

    again = run("setup", "--project", str(bare), json=False)
    host = "local" if mode == "local" else target.alias
    assert (again.returncode, again.stdout, again.stderr) == (0, f"{host}: setup: requirements unchanged\n", "")

    requirements(bare, target, *offline(probes, f"{PROBE}==2.0"))
    changed = run("setup", "--project", str(bare), json=False)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    line = re.fullmatch(rf"{host}: setup: installed requirements.txt with pip into ({VENVS}/[0-9a-f]{{12}}) "
                        r"in [0-9]+\.[0-9]s\n", changed.stdout)
    assert line, changed.stdout
    assert os.readlink(bare / ".venv") == line.group(1) != answer["venv"]
    assert probe_version(as_user, bare / ".venv" / "bin" / "python") == "2.0"
    # the venv it replaced is kept: a server started on it may still load from it
    assert venvs_in(bare) == sorted([answer["venv"][-12:], line.group(1)[-12:]])


def test_an_included_file_that_changed_installs_again(fab, bare, target, probes):
    requirements(bare, target, "-r requirements/base.txt")
    (bare / "requirements").mkdir()
    os.chown(bare / "requirements", target.uid, -1)
    requirements(bare, target, *offline(probes, f"{PROBE}==1.0"), name="requirements/base.txt")
    assert fab("setup", "--project", str(bare), "--json").json["changed"] is True
    assert fab("setup", "--project", str(bare), "--json").json["changed"] is False
    requirements(bare, target, *offline(probes, f"{PROBE}==2.0"), name="requirements/base.txt")
    assert fab("setup", "--project", str(bare), "--json").json["changed"] is True


def test_a_failed_install_keeps_the_previous_venv_serving(fab, bare, target, probes, django_wheels):
    requirements(bare, target, "--no-index", f"--find-links {django_wheels}", f"--find-links {probes}",
                 DJANGO_PIN, f"{PROBE}==1.0")
    made = fab("setup", "--project", str(bare), "--json", timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    port = free_port()
    started = fab("start", *where(bare, port), "--check", "/", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        requirements(bare, target, "--no-index", f"--find-links {django_wheels}", f"--find-links {probes}",
                     DJANGO_PIN, f"{PROBE}==3.0")
        failed = fab("setup", "--project", str(bare), timeout=600)
        assert failed.returncode == 1 and failed.stdout == ""
        lines = failed.stderr.splitlines()
        assert lines[0] == (f"{target.alias}: setup failed: installing requirements.txt with pip exited with "
                            f"status 1; .venv left as it was"), failed.stderr
        assert lines[1] == f"{target.alias}: the install's last lines:"
        assert any(f"No matching distribution found for {PROBE}==3.0" in line for line in lines[2:]), lines
        assert os.readlink(bare / ".venv") == made.json["venv"]
        assert venvs_in(bare) == [made.json["venv"][-12:]]
        assert http_status(started.json["url"]) == 200
        status = fab("status", *where(bare, port), "--check", "/", "--json")
        assert status.returncode == 0 and status.json["http_status"] == 200, status.json
        assert status.json["pids"] == started.json["pids"]
    finally:
        assert fab("stop", *where(bare, port), "--json").returncode == 0


def test_the_json_of_a_failed_install_has_pips_last_lines(run, bare, target, probes):
    requirements(bare, target, *offline(probes, f"{PROBE}==3.0"))
    failed = run("setup", "--project", str(bare))
    assert failed.returncode == 1
    answer = failed.json
    assert answer["ok"] is False and answer["changed"] is False and answer["state"] == "failed"
    assert answer["output_tail"][-1] == f"ERROR: No matching distribution found for {PROBE}==3.0", answer
    assert not (bare / ".venv").exists() and venvs_in(bare) == []


def test_a_venv_of_the_users_own_is_refused_and_left_alone(run, site, target, probes, mode):
    requirements(site, target, *offline(probes, f"{PROBE}==1.0"))
    before = os.readlink(site / ".venv")
    refused = run("setup", "--project", str(site), json=False)
    host = "local" if mode == "local" else target.alias
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"{host}: setup failed: {site}/.venv is not fabserve's (a symlink to {before}): "
                              f"remove it, or name the interpreter to install into with --python\n")
    assert os.readlink(site / ".venv") == before and not (site / VENVS).exists()


def test_a_missing_requirements_file_is_one_line(fab, bare):
    missing = fab("setup", "--project", str(bare), "--requirements", "nope.txt")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == (f"{fab.remote_host}: setup failed: requirements file nope.txt not found "
                              f"in {bare}\n")


def test_python_installs_into_an_existing_interpreter_in_place(fab, site, target, probes, as_user):
    made = as_user(["/usr/bin/python3", "-m", "venv", str(site / "env")])
    assert made.returncode == 0, made.stderr
    requirements(site, target, *offline(probes, f"{PROBE}==1.0"))
    link = os.readlink(site / ".venv")
    first = fab("setup", "--project", str(site), "--python", "env/bin/python", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.json["changed"] is True and first.json["venv"] is None
    assert first.json["python"] == f"{site}/env/bin/python"
    assert probe_version(as_user, site / "env" / "bin" / "python") == "1.0"
    assert os.readlink(site / ".venv") == link and not (site / VENVS).exists()
    again = fab("setup", "--project", str(site), "--python", "env/bin/python", "--json")
    assert (again.json["changed"], again.json["message"]) == (False, "requirements unchanged")


def test_uv_makes_and_fills_the_venv_when_the_host_has_it(run, bare, target, probes, as_user, uv_on_host):
    requirements(bare, target, *offline(probes, f"{PROBE}==1.0"))
    made = run("setup", "--project", str(bare))
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.json["installer"] == "uv" and "with uv into" in made.json["message"], made.json
    assert probe_version(as_user, bare / ".venv" / "bin" / "python") == "1.0"
    assert run("setup", "--project", str(bare)).json["installer"] == "uv"

    requirements(bare, target, *offline(probes, f"{PROBE}==3.0"))
    failed = run("setup", "--project", str(bare))
    assert failed.returncode == 1
    assert failed.json["error"] == "installing requirements.txt with uv exited with status 1; .venv left as it was"
    assert any("No solution found" in line for line in failed.json["output_tail"]), failed.json
    assert os.readlink(bare / ".venv") == made.json["venv"]


def test_timeout_ends_the_install_and_what_it_started(fab, bare, target, probes, uv_on_host):
    # An installer that never finishes and leaves a child behind in its group.
    uv_on_host.write_text("#!/bin/sh\nsleep 300 &\nexec sleep 301\n")
    requirements(bare, target, *offline(probes, f"{PROBE}==1.0"))
    ended = fab("setup", "--project", str(bare), "--timeout", "2", "--json")
    assert ended.returncode == 1
    assert ended.json["error"] == "uv venv did not end within 2s; it was ended; .venv left as it was", ended.json
    assert not (bare / ".venv").exists() and venvs_in(bare) == []
    # the autouse check finds neither sleep left


def test_the_fabserve_command_runs_setup(target, bare, probes):
    requirements(bare, target, *offline(probes, f"{PROBE}==1.0"))
    command = [sys.executable, "-c", "import sys; sys.argv[0] = 'fabserve'; from tasks.program import program; "
               "program.run()", "-S", str(target.ssh_config), "-H", target.alias, "setup", "--project", str(bare)]
    for expected in ("installed requirements.txt with pip into ", "requirements unchanged"):
        result = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"{target.alias}: setup: {expected}"), result.stdout
