"""sync's two halves without SSH: the client's listing, manifest and archive
(tasks/trees.py), and the agent's plan and apply (tasks/agent/shipping.py),
called in this process as dispatch calls them. A tree that would write
outside the project directory is refused whole: exit 2, nothing written."""

import hashlib
import json
import os
import subprocess

import pytest

from bed.trees import tree_of
from tasks import trees
from tasks.agent import dispatch, protocol, shipping
from tasks.config import merged
from tasks.settings import request


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def repo(tmp_path):
    """A git work tree: tracked, untracked, ignored, deleted-but-tracked files, odd names, links."""
    root = tmp_path / "repo"
    (root / "app" / "deep").mkdir(parents=True)
    (root / "manage.py").write_text("print('hi')\n")
    (root / "manage.py").chmod(0o755)
    (root / "app" / "deep" / "views.py").write_text("x = 1\n")
    (root / "with space.txt").write_text("space\n")
    (root / "new\nline.txt").write_text("newline\n")
    (root / "gone.txt").write_text("soon deleted\n")
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    os.symlink("app/deep/views.py", root / "views-link.py")
    os.symlink("app", root / "app-link")
    git(root, "init", "-q", "-b", "feature/x")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    (root / "gone.txt").unlink()
    (root / "untracked.py").write_text("u = 2\n")
    (root / "untracked.py").chmod(0o640)
    (root / "debug.log").write_text("ignored\n")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("ignored too\n")
    return root


def test_git_listing_ships_tracked_and_unignored_files_and_links_as_links(repo):
    assert trees.listing(repo) == sorted([".gitignore", "app-link", "app/deep/views.py", "manage.py",
                                          "new\nline.txt", "untracked.py", "views-link.py", "with space.txt"])
    files = trees.manifest(repo, trees.listing(repo))
    assert files["app-link"] == ["link", 0, "app", 0]
    assert files["views-link.py"] == ["link", 0, "app/deep/views.py", 0]
    mode, digest, size = files["manage.py"][1:]
    assert (mode, size) == (0o755, 12) and digest == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert files["untracked.py"][:2] == ["file", 0o640]


def test_git_facts_name_the_branch_and_commit(repo, tmp_path):
    branch, commit = trees.git_facts(repo)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], stdout=subprocess.PIPE, text=True).stdout
    assert branch == "feature/x" and commit == head.strip()
    assert trees.git_facts(repo / "app") == (branch, commit)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert trees.git_facts(plain) == (None, None)


def test_outside_git_every_file_but_the_excluded_names_at_any_depth(tmp_path):
    root = tmp_path / "plain"
    for name in ("a.py", "pkg/b.py", "pkg/__pycache__/b.pyc", ".venv/bin/python", "web/node_modules/x.js",
                 "sub/.git/HEAD", ".git/config", "web/app.js"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    os.symlink("/etc", root / "etc-link")
    assert trees.listing(root) == ["a.py", "etc-link", "pkg/b.py", "web/app.js"]


def test_the_archive_round_trips_and_carries_only_needed_files(repo):
    files = trees.manifest(repo, trees.listing(repo))
    archive = trees.pack(repo, files, ["manage.py", "new\nline.txt", "app-link"])
    assert shipping.unpack(archive) == {"manage.py": b"print('hi')\n", "new\nline.txt": b"newline\n"}
    assert shipping.unpack(trees.pack(repo, files, [])) == {}


def test_a_corrupt_archive_is_one_line():
    with pytest.raises(protocol.AgentError, match="corrupt"):
        shipping.unpack("not base64 at all!")


def agent(tmp_path, project, files, archive=None, branch=None, commit=None):
    req = request("sync", merged({}, {"project": str(project), "state_dir": str(tmp_path / "state")}), [])
    return dispatch.handle(dict(req, manifest=files, archive=archive, branch=branch, commit=commit))


def synced(tmp_path, src, project):
    """The client's calls, in this process, as from a client that remembers nothing
    sent: the manifest alone, then, when the host needs files, those files."""
    files = trees.manifest(src, trees.listing(src))
    first = agent(tmp_path, project, files)
    assert first["ok"], first["error"]
    if not first.get("needed"):
        return first
    return agent(tmp_path, project, files, trees.pack(src, files, first["needed"]))


def test_first_sync_writes_the_tree_later_ones_only_changes_and_never_the_apps_files(tmp_path, repo):
    project = tmp_path / "host" / "site"
    first = synced(tmp_path, repo, project)
    assert first["ok"] and first["changed"] and first["files_sent"] == 8 and first["deleted"] == 0
    assert protocol.exit_code("sync", first) == 0
    shipped = tree_of(project)
    assert {name: value for name, value in tree_of(repo).items() if name in shipped} == shipped
    assert sorted(shipped) == trees.listing(repo)
    assert shipped["manage.py"][0] == 0o755

    (project / "media.jpg").write_bytes(b"uploaded by the app")
    assert synced(tmp_path, repo, project)["message"] == "up to date"
    (repo / "untracked.py").write_text("u = 3\n")
    (repo / "with space.txt").unlink()
    second = synced(tmp_path, repo, project)
    assert (second["files_sent"], second["bytes_sent"], second["deleted"]) == (1, 6, 1)
    assert (project / "untracked.py").read_text() == "u = 3\n" and not (project / "with space.txt").exists()
    assert (project / "media.jpg").read_bytes() == b"uploaded by the app"


def test_a_changed_mode_or_size_is_sent_again_and_a_recorded_size_and_mtime_skip_rereading(tmp_path, repo):
    project = tmp_path / "site"
    synced(tmp_path, repo, project)
    (project / "manage.py").chmod(0o644)
    view = project / "app" / "deep" / "views.py"
    info = view.stat()
    view.write_text("y = 9\n")
    os.utime(view, ns=(info.st_atime_ns, info.st_mtime_ns))  # same size and mtime as recorded: not reread
    fixed = synced(tmp_path, repo, project)
    assert fixed["files_sent"] == 1  # manage.py's mode; views.py's record matches, so it is not reread
    (project / "app" / "deep" / "views.py").write_text("y = 99\n")
    assert synced(tmp_path, repo, project)["files_sent"] == 1
    assert view.read_text() == "x = 1\n" and (project / "manage.py").stat().st_mode & 0o777 == 0o755


def test_dirs_sync_created_go_when_emptied_and_the_record_says_it_created_the_project(tmp_path):
    src, project = tmp_path / "src", tmp_path / "site"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "c.txt").write_text("c")
    synced(tmp_path, src, project)
    (src / "a" / "b" / "c.txt").unlink()
    (src / "top.txt").write_text("t")
    result = synced(tmp_path, src, project)
    assert result["deleted"] == 1 and not (project / "a").exists() and (project / "top.txt").exists()
    records = list((tmp_path / "state").rglob("project.json"))
    record = json.loads(records[0].read_text())
    assert record["created"] is True and record["dirs"] == [] and sorted(record["files"]) == ["top.txt"]

    existing = tmp_path / "existing"
    existing.mkdir()
    synced(tmp_path, src, existing)
    created = [json.loads(path.read_text())["created"] for path in (tmp_path / "state").rglob("project.json")]
    assert sorted(created) == [False, True]


@pytest.mark.parametrize("files", [
    {"/etc/passwd": ["file", 0o644, "0" * 64, 1]},
    {"../outside": ["file", 0o644, "0" * 64, 1]},
    {"a/../../outside": ["file", 0o644, "0" * 64, 1]},
    {"a//b": ["file", 0o644, "0" * 64, 1]},
    {"nul\0name": ["file", 0o644, "0" * 64, 1]},
    {"etc": ["link", 0, "/etc", 0], "etc/cron.d/x": ["file", 0o644, "0" * 64, 1]},
    {"etc": ["link", 0, "../../../../etc", 0]},
    {"up": ["link", 0, "/etc", 0]},
    {"a/b": ["link", 0, "..", 0], "sneaky": ["link", 0, "a/b/../..", 0]},
    {"loop1": ["link", 0, "loop2/x", 0], "loop2": ["link", 0, "loop1/x", 0]},
], ids=["absolute", "dotdot", "inner-dotdot", "empty-component", "nul", "file-under-link", "link-up",
        "link-absolute", "link-through-link", "link-loop"])
def test_a_tree_reaching_outside_is_refused_whole_with_nothing_written(tmp_path, files):
    project = tmp_path / "site"
    files = dict(files, **{"fine.txt": ["file", 0o644, "0" * 64, 1]})
    for archive in (None, trees.pack(tmp_path, {}, [])):
        result = agent(tmp_path, project, files, archive)
        assert result["refused"] is True and result["ok"] is False, result
        assert result["error"].startswith("refused: ") and result["error"].endswith("; nothing was written")
        assert "\n" not in result["error"] and protocol.exit_code("sync", result) == 2
    assert not project.exists()


def test_a_symlink_on_the_host_in_a_destinations_path_is_refused(tmp_path):
    src, project, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    (src / "static").mkdir(parents=True)
    (src / "static" / "app.css").write_text("body {}")
    (src / "top.txt").write_text("t")
    project.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, project / "static")
    files = trees.manifest(src, trees.listing(src))
    result = agent(tmp_path, project, files, trees.pack(src, files, sorted(files)))
    assert result["refused"] is True and "static on the host is a symlink" in result["error"]
    assert list(elsewhere.iterdir()) == [] and sorted(os.listdir(project)) == ["static"]


def test_an_archive_that_disagrees_with_the_manifest_writes_nothing(tmp_path, repo):
    project = tmp_path / "site"
    files = trees.manifest(repo, trees.listing(repo))
    archive = trees.pack(repo, files, ["manage.py"])
    files["manage.py"][2] = "0" * 64
    result = agent(tmp_path, project, files, archive)
    assert result["ok"] is False and "run sync again" in result["error"] and not project.exists()


def test_a_resync_reads_only_files_whose_stamp_changed(tmp_path, monkeypatch):
    src, kept = tmp_path / "src", tmp_path / "cache" / "tree.json"
    src.mkdir()
    (src / "same.py").write_text("same\n")
    (src / "edited.py").write_text("before\n")
    monkeypatch.setattr(trees, "RACY_NS", 0)  # every file counts as settled at once
    first = trees.manifest(src, ["edited.py", "same.py"], kept)
    assert oct(kept.parent.stat().st_mode & 0o777) == "0o700" and sorted(json.loads(kept.read_text())) == [
        "edited.py", "same.py"]
    info = (src / "edited.py").stat()
    (src / "edited.py").write_text("after!\n")  # same size and mtime, a new ctime
    os.utime(src / "edited.py", ns=(info.st_atime_ns, info.st_mtime_ns))
    read = []
    real = trees.read_entry
    monkeypatch.setattr(trees, "read_entry", lambda src, name: read.append(name) or real(src, name))
    second = trees.manifest(src, ["edited.py", "same.py"], kept)
    assert read == ["edited.py"] and second["same.py"] == first["same.py"]
    assert second["edited.py"][2] == hashlib.sha256(b"after!\n").hexdigest()


def test_files_changed_just_before_their_digest_was_kept_are_read_again(tmp_path):
    src, kept = tmp_path / "src", tmp_path / "cache" / "tree.json"
    src.mkdir()
    (src / "new.py").write_text("new\n")
    trees.manifest(src, ["new.py"], kept)
    assert trees.read_digests(kept) == {}  # written within RACY_NS: its stamp proves nothing yet
