"""setup's decisions on a temporary directory: which lines include other
requirements files, the hash over them and the interpreter, which .venv is
fabserve's, and the layout (a new venv beside the old, .venv switched only once
its install succeeded, older venvs pruned). tests/test_setup.py runs the verb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.agent import environment
from tasks.agent.environment import VENVS, current_venv, included, requirements_digest
from tasks.agent.protocol import AgentError

INTERPRETER = ("venv", "/usr/bin/python3", "3.11.2")


def venvs_in(project: Path) -> list[str]:
    """The venvs in the project's VENVS (its lock file left out)."""
    return sorted(name for name in os.listdir(project / VENVS) if not name.startswith("."))


@pytest.mark.parametrize("line,named", [
    ("-r base.txt", "base.txt"), ("-rbase.txt", "base.txt"), ("--requirement base.txt", "base.txt"),
    ("--requirement=base.txt", "base.txt"), ("-c pins.txt", "pins.txt"), ("--constraint=pins.txt", "pins.txt"),
    ("  -r base.txt  # the shared part", "base.txt"), ("Django==5.2.8", None), ("--find-links /wheels", None),
    ("--config-settings x=1", None), ("# -r commented.txt", None), ("", None), ("-r", None),
])
def test_included_names_the_file_of_an_r_or_c_line(line, named):
    assert included(line) == named


def digest_of(requirements: Path, interpreter=INTERPRETER) -> str:
    return requirements_digest(str(requirements), requirements.name, interpreter)


def test_the_hash_covers_nested_includes_relative_to_the_file_naming_them(tmp_path):
    (tmp_path / "reqs").mkdir()
    top = tmp_path / "requirements.txt"
    top.write_text("-r reqs/base.txt\nDjango==5.2.8\n")
    (tmp_path / "reqs" / "base.txt").write_text("--constraint pins.txt\nasgiref\n")
    pins = tmp_path / "reqs" / "pins.txt"  # relative to base.txt, which names it
    pins.write_text("asgiref==3.8.1\n")
    (tmp_path / "pins.txt").write_text("unrelated\n")  # where it would be relative to the top file
    first = digest_of(top)
    assert digest_of(top) == first
    (tmp_path / "pins.txt").write_text("still unrelated\n")
    assert digest_of(top) == first
    pins.write_text("asgiref==3.9.0\n")
    assert digest_of(top) != first


def test_the_hash_covers_the_interpreter(tmp_path):
    top = tmp_path / "requirements.txt"
    top.write_text("Django==5.2.8\n")
    hashes = {digest_of(top, INTERPRETER), digest_of(top, ("venv", "/usr/bin/python3", "3.12.1")),
              digest_of(top, ("venv", "/opt/python/bin/python3", "3.11.2")),
              digest_of(top, ("python", "/usr/bin/python3", "3.11.2"))}
    assert len(hashes) == 4


def test_a_file_that_includes_itself_or_a_url_is_hashed_once_as_written(tmp_path):
    top = tmp_path / "requirements.txt"
    top.write_text("-r requirements.txt\n-r https://example.invalid/reqs.txt\nDjango==5.2.8\n")
    first = digest_of(top)
    top.write_text("-r requirements.txt\n-r https://example.invalid/other.txt\nDjango==5.2.8\n")
    assert digest_of(top) != first


def test_a_line_continued_with_a_backslash_is_read_as_one(tmp_path):
    top = tmp_path / "requirements.txt"
    top.write_text("-r \\\nbase.txt\n")
    base = tmp_path / "base.txt"
    base.write_text("asgiref\n")
    first = digest_of(top)
    base.write_text("asgiref==3.8.1\n")
    assert digest_of(top) != first


def test_a_missing_included_file_is_one_line_naming_who_names_it(tmp_path):
    top = tmp_path / "requirements.txt"
    top.write_text("-r base.txt\n")
    with pytest.raises(AgentError) as raised:
        digest_of(top)
    assert str(raised.value) == "requirements file base.txt (named in requirements.txt): No such file or directory"


def test_current_venv_is_the_name_fabserves_link_names(tmp_path):
    assert current_venv(str(tmp_path)) is None
    (tmp_path / ".venv").symlink_to(f"{VENVS}/0123456789ab")
    assert current_venv(str(tmp_path)) == "0123456789ab"


@pytest.mark.parametrize("kind", ["directory", "symlink elsewhere", "symlink to a name not ours", "file"])
def test_a_venv_fabserve_did_not_make_is_refused_and_left_alone(tmp_path, kind):
    link = tmp_path / ".venv"
    if kind == "directory":
        link.mkdir()
        (link / "pyvenv.cfg").write_text("home = /usr/bin\n")
    elif kind == "symlink elsewhere":
        link.symlink_to("/opt/venv")
    elif kind == "symlink to a name not ours":
        link.symlink_to(f"{VENVS}/mine")
    else:
        link.write_text("")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(AgentError) as raised:
        current_venv(str(tmp_path))
    assert str(raised.value).startswith(f"{link} is not fabserve's (")
    assert str(raised.value).endswith("remove it, or name the interpreter to install into with --python")
    assert sorted(os.listdir(tmp_path)) == before and (link.is_dir() or link.is_symlink() or link.is_file())


def test_switch_points_the_link_at_the_new_venv_and_leaves_no_temporary(tmp_path):
    environment.switch(str(tmp_path), "aaaaaaaaaaaa")
    environment.switch(str(tmp_path), "bbbbbbbbbbbb")
    assert os.readlink(tmp_path / ".venv") == f"{VENVS}/bbbbbbbbbbbb"
    assert os.listdir(tmp_path) == [".venv"]


def test_prune_keeps_the_named_venvs_and_what_setup_did_not_name(tmp_path):
    for name in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "notes"):
        (tmp_path / name).mkdir()
    environment.prune(str(tmp_path), {"bbbbbbbbbbbb", "cccccccccccc", None})
    assert sorted(os.listdir(tmp_path)) == ["bbbbbbbbbbbb", "cccccccccccc", "notes"]


class FakeSteps:
    """Steps that make a venv's bin/python and install by writing a file, or fail."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.uv = None
        self.made: list[str] = []

    def venv(self, base: str, target: str) -> None:
        os.makedirs(os.path.join(target, "bin"))
        python = os.path.join(target, "bin", "python")
        Path(python).write_text("")
        os.chmod(python, 0o755)
        self.made.append(target)

    def install(self, python: str, requirements: str, shown: str) -> None:
        if self.fail:
            raise AgentError(f"installing {shown} with pip exited with status 1", output_tail=["ERROR: no"])
        Path(python).with_name("installed").write_text(Path(requirements).read_text())


def project_with(tmp_path: Path, requirements: str) -> Path:
    project = tmp_path / "site"
    project.mkdir(exist_ok=True)
    (project / "requirements.txt").write_text(requirements)
    return project


def in_venv(project: Path, steps: FakeSteps):
    return environment.in_venv(steps, str(project), str(project / "requirements.txt"), "requirements.txt")


def test_a_new_venv_is_made_beside_the_old_and_the_one_before_it_is_pruned(tmp_path):
    project = project_with(tmp_path, "probe==1.0\n")
    _, first, _, changed = in_venv(project, FakeSteps())
    assert changed and os.readlink(project / ".venv") == first
    _, again, _, changed = in_venv(project, FakeSteps())
    assert (again, changed) == (first, False)
    project_with(tmp_path, "probe==2.0\n")
    _, second, _, changed = in_venv(project, FakeSteps())
    assert changed and os.readlink(project / ".venv") == second
    assert (project / ".venv" / "bin" / "installed").read_text() == "probe==2.0\n"
    project_with(tmp_path, "probe==3.0\n")
    _, third, _, _ = in_venv(project, FakeSteps())
    # the current one and the one it replaced are kept; the one before them goes
    assert venvs_in(project) == sorted(name.split("/")[1] for name in (second, third))


def test_a_failed_install_removes_the_new_venv_and_leaves_the_link(tmp_path):
    project = project_with(tmp_path, "probe==1.0\n")
    _, first, _, _ = in_venv(project, FakeSteps())
    project_with(tmp_path, "probe==3.0\n")
    failing = FakeSteps(fail=True)
    with pytest.raises(AgentError) as raised:
        in_venv(project, failing)
    assert str(raised.value) == "installing requirements.txt with pip exited with status 1; .venv left as it was"
    assert raised.value.extra == {"output_tail": ["ERROR: no"]}
    assert os.readlink(project / ".venv") == first
    assert failing.made and not os.path.lexists(failing.made[0])
    assert venvs_in(project) == [first.split("/")[1]]


def test_a_current_venv_without_its_interpreter_is_made_again(tmp_path):
    project = project_with(tmp_path, "probe==1.0\n")
    _, first, _, _ = in_venv(project, FakeSteps())
    os.unlink(project / ".venv" / "bin" / "python")
    _, again, _, changed = in_venv(project, FakeSteps())
    assert (again, changed) == (first, True)
    assert os.access(project / ".venv" / "bin" / "python", os.X_OK)


def test_a_venvs_directory_that_is_not_a_directory_is_refused(tmp_path):
    project = project_with(tmp_path, "probe==1.0\n")
    (project / VENVS).symlink_to(tmp_path)
    with pytest.raises(AgentError) as raised:
        in_venv(project, FakeSteps())
    assert str(raised.value) == f"refusing {project / VENVS}: not a directory of this user"
    assert not (project / ".venv").exists()


def test_a_python_without_ensurepip_is_one_line_naming_python3_venv(tmp_path):
    # What Debian's python says from `-m venv` without python3-venv, the venv half made.
    said = ("The virtual environment was not created successfully because ensurepip is not\\n"
            "available.  On Debian/Ubuntu systems, you need to install the python3-venv\\n")
    steps = environment.Steps(str(tmp_path), 30)
    with pytest.raises(AgentError) as raised:
        steps.run(["/bin/sh", "-c", f"printf '{said}'; exit 1"], "python3 -m venv")
    assert str(raised.value) == ("/bin/sh cannot make a virtualenv: ensurepip is not available; install Debian's "
                                 "python3-venv package (or put uv on the host)")
    assert raised.value.extra["output_tail"][-1].endswith("install the python3-venv")


def test_a_step_that_fails_or_runs_too_long_says_so_with_its_last_lines(tmp_path):
    steps = environment.Steps(str(tmp_path), 1)
    with pytest.raises(AgentError) as failed:
        steps.run(["/bin/sh", "-c", "echo one; echo ERROR: two; exit 3"], "installing requirements.txt with pip")
    assert str(failed.value) == "installing requirements.txt with pip exited with status 3"
    assert failed.value.extra == {"output_tail": ["one", "ERROR: two"]}
    with pytest.raises(AgentError) as late:
        steps.run(["/bin/sh", "-c", "echo started; exec sleep 30"], "uv venv")
    assert str(late.value) == "uv venv did not end within 1s; it was ended"
    assert late.value.extra == {"output_tail": ["started"]}


def test_a_setups_bound_is_its_timeout_and_the_ending_of_what_it_ran():
    from tasks.agent.protocol import ESCAPE_ROUNDS, KILL_WAIT, SETUP_GRACE, run_limit
    assert run_limit({"action": "setup", "setup_timeout": 60.0}) == 60.0 + ESCAPE_ROUNDS * (SETUP_GRACE + KILL_WAIT)
