"""destroy's decisions on a project's record, run by the agent in-process
against a temporary state directory: the directory goes only where the record
says sync created it, --keep-files keeps it, and destroying nothing changes nothing."""

import os

from tasks import settings
from tasks.agent import dispatch, protocol
from tasks.agent.projects import Project
from tasks.agent.state import Host, Request
from tasks.config import merged


def destroy(tmp_path, project, **flags):
    req = settings.request("destroy", merged({}, {"project": str(project), "state_dir": str(tmp_path / "state"),
                                                   **flags}), [])
    return dispatch.handle(req)


def record(tmp_path, project, **fields):
    """Save a project record as sync would, and return the Project."""
    req = Request({"project": str(project), "state_dir": str(tmp_path / "state")})
    known = Project(Host(req), req)
    os.close(known.lock())
    known.save(fields)
    return known


def site(tmp_path):
    project = tmp_path / "site"
    (project / "media").mkdir(parents=True)
    (project / "manage.py").write_text("")
    (project / "media" / "upload.png").write_bytes(b"\x89PNG")
    return project


def test_a_directory_sync_created_is_removed_with_the_record(tmp_path):
    project = site(tmp_path)
    known = record(tmp_path, project, created=True, branch="main", commit="abc")
    result = destroy(tmp_path, project)
    assert result["ok"] and result["changed"] and result["removed"] is True, result
    assert not project.exists() and not os.path.exists(known.state_dir)
    assert result["message"] == f"no server was running; forgot 0 instances; removed {project}"
    assert protocol.exit_code("destroy", result) == 0


def test_keep_files_keeps_a_directory_sync_created_and_says_so(tmp_path):
    project = site(tmp_path)
    known = record(tmp_path, project, created=True)
    result = destroy(tmp_path, project, keep_files=True)
    assert result["ok"] and result["removed"] is False
    assert (project / "media" / "upload.png").read_bytes() == b"\x89PNG"
    assert result["message"].endswith(f"kept {project} (--keep-files)")
    assert not os.path.exists(known.record_path)


def test_a_directory_sync_did_not_create_is_kept_whatever_else_the_record_holds(tmp_path):
    project = site(tmp_path)
    record(tmp_path, project, created=False, files={"manage.py": ["file", 420, "x", 0]})
    result = destroy(tmp_path, project)
    assert result["ok"] and result["changed"] and result["removed"] is False
    assert (project / "manage.py").exists() and (project / "media" / "upload.png").exists()
    assert result["message"].endswith(f"kept {project}: fabserve's sync did not create it")


def test_destroying_what_does_not_exist_changes_nothing(tmp_path):
    project = site(tmp_path)
    for _ in range(2):
        result = destroy(tmp_path, project)
        assert result["ok"] is True and result["changed"] is False and result["error"] is None
        assert result["message"] == f"nothing to destroy for {project}"
    assert (project / "manage.py").exists()
    missing = destroy(tmp_path, tmp_path / "never-made")
    assert missing["ok"] and not missing["changed"] and protocol.exit_code("destroy", missing) == 0


def test_a_symlink_where_the_created_directory_was_is_not_followed(tmp_path):
    project = site(tmp_path)
    record(tmp_path, project, created=True)
    elsewhere = tmp_path / "elsewhere"
    project.rename(elsewhere)
    project.symlink_to(elsewhere)
    result = destroy(tmp_path, project)
    # The record is of the directory the path resolved to when sync made it; the path now
    # resolves elsewhere, to a directory no record names.
    assert (elsewhere / "manage.py").exists() and project.is_symlink()
    assert result["ok"] and result["removed"] is False and result["message"] == f"nothing to destroy for {elsewhere}"
