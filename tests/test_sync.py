"""`sync` over the real sshd and locally, from a git work tree holding a real
Django project: the first sync writes what `rsync -a` of git's file list
writes, later ones send only what changed and delete only what an earlier
sync wrote, the app's own files survive, a tree reaching outside the project
is refused (exit 2, nothing written), and a tree outside git ships every file
but the excluded ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bed.fab import fab_on_hosts
from bed.trees import example_repo, git, tree_of
from helpers import REPO


@pytest.fixture
def src(make_project, mode, as_user, target):
    """A git work tree of fabserve's example project, owned by whoever runs fab in
    this mode (git reads no other user's repository): root over SSH, the test user locally."""
    root = make_project("src").parent / "src"
    shutil.rmtree(root)
    user = (target.uid, os.stat(target.home).st_gid)
    return example_repo(root, user, as_user, then=(0, 0) if mode == "ssh" else None)


@pytest.fixture
def dest(src):
    """Where the tree goes on the host: a directory that does not exist yet, the test user's to make."""
    return src.parent / "dest"


def as_runner(mode, as_user):
    """Run argv as whoever runs fab in this mode (git, writes to the source tree)."""
    return (lambda argv: subprocess.run(argv, capture_output=True, text=True)) if mode == "ssh" else as_user


def rsynced(src: Path, into: Path) -> dict[str, tuple]:
    """What `rsync -a` of git's own file list writes."""
    listed = subprocess.run(["git", "-c", f"safe.directory={src}", "-C", str(src), "ls-files", "-z", "--cached",
                             "--others", "--exclude-standard"], capture_output=True, check=True).stdout
    subprocess.run(["rsync", "-a", "--from0", "--files-from=-", f"{src}/", f"{into}/"], input=listed, check=True)
    return tree_of(into)


def test_first_sync_writes_what_rsync_writes_and_later_ones_only_changes(run, src, dest, mode, as_user, tmp_path):
    first = run("sync", "--src", str(src), "--project", str(dest))
    assert first.returncode == 0, first.stdout + first.stderr
    answer = first.json
    shipped = tree_of(dest)
    assert answer["ok"] and answer["changed"] and answer["files_sent"] == len(shipped) and answer["deleted"] == 0
    assert answer["action"] == "sync" and answer["state"] is None and answer["project"] == str(dest)
    assert shipped == rsynced(src, tmp_path / "rsync")
    assert shipped["static/current.css"] == ("link", "site name.css") and shipped["manage.py"][0] == 0o755

    again = run("sync", "--src", str(src), "--project", str(dest), json=False)
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout.startswith(f"{'local' if mode == 'local' else 'fabserve-target'}: up to date, in ")

    as_user(["sh", "-c", f"echo uploaded > '{dest}/media.txt'"])
    write = as_runner(mode, as_user)
    write(["sh", "-c", f"echo 'body {{ color: navy }}' > '{src}/static/site name.css'"])
    changed = run("sync", "--src", str(src), "--project", str(dest), json=False)
    assert changed.returncode == 0, changed.stderr
    assert " synced 1 file (21 B), deleted 0, in " in changed.stdout
    assert (dest / "static" / "site name.css").read_text() == "body { color: navy }\n"

    git(src, "rm", "-q", "static/current.css", runner=write)
    removed = run("sync", "--src", str(src), "--project", str(dest))
    assert (removed.json["files_sent"], removed.json["deleted"]) == (0, 1)
    assert not os.path.lexists(dest / "static" / "current.css")
    assert (dest / "media.txt").read_text() == "uploaded\n"


def test_a_tree_with_a_link_out_is_refused_and_writes_nothing(run, src, dest, mode, as_user):
    write = as_runner(mode, as_user)
    write(["ln", "-s", "/etc", f"{src}/etc"])
    write(["ln", "-s", "../../../../../..", f"{src}/static/up"])
    refused = run("sync", "--src", str(src), "--project", str(dest))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.json["refused"] is True and refused.json["error"].endswith("; nothing was written")
    assert "points outside the project directory" in refused.json["error"]
    assert not dest.exists()


def test_a_symlink_on_the_host_in_the_way_is_refused(run, src, dest, as_user):
    elsewhere = dest.parent / "elsewhere"
    as_user(["mkdir", "-p", str(dest), str(elsewhere)])
    as_user(["ln", "-s", str(elsewhere), f"{dest}/static"])
    refused = run("sync", "--src", str(src), "--project", str(dest), json=False)
    assert refused.returncode == 2
    assert "sync failed: refused: static on the host is a symlink" in refused.stderr
    assert os.listdir(elsewhere) == [] and os.listdir(dest) == ["static"]


def test_a_tree_outside_git_ships_all_but_the_excluded_names(fab, make_project, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(REPO / "example", plain, ignore=shutil.ignore_patterns(".venv"))
    for name in ("node_modules/x.js", "example/__pycache__/a.pyc", ".git/HEAD", ".venv/bin/python"):
        (plain / name).parent.mkdir(parents=True, exist_ok=True)
        (plain / name).write_text(name)
    dest = make_project("other").parent / f"plain-{uuid.uuid4().hex[:6]}"
    result = fab("sync", "--src", str(plain), "--project", str(dest), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = tree_of(dest)
    assert sorted(shipped) == sorted(name for name in tree_of(plain) if not name.startswith(
        ("node_modules", "example/__pycache__", ".git", ".venv")))
    assert result.json["files_sent"] == len(shipped)


def test_sync_needs_a_project_and_a_source_directory(fab, tmp_path):
    missing = fab("sync", "--src", str(tmp_path / "nowhere"), "--project", "/tmp/x")
    assert missing.returncode == 2 and "--src must be an existing local directory" in missing.stderr
    unnamed = fab("sync", "--src", str(tmp_path))
    assert unnamed.returncode == 2 and "sync needs --project" in unnamed.stderr


def test_sync_on_many_hosts_sends_each_its_tree_once(bed_hosts, tmp_path):
    """Every host of the bed (its own /tmp, its own state) gets the tree; a second
    sync finds each one up to date; one file changed is one file sent to each."""
    plain = tmp_path / "plain"
    shutil.copytree(REPO / "example", plain, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    dest = f"/tmp/sync-{uuid.uuid4().hex[:8]}/site"

    def sync() -> dict[str, dict]:
        return fab_on_hosts(bed_hosts, tmp_path, "sync", "--src", str(plain), "--project", dest)

    first = sync()
    count = len([path for path in plain.rglob("*") if path.is_file()])
    assert all(result["files_sent"] == count and result["project"] == dest for result in first.values())
    assert all(result["message"] == "up to date" for result in sync().values())
    (plain / "requirements.txt").write_text("Django>=4.2\n")
    assert all(result["files_sent"] == 1 for result in sync().values())


def test_a_sync_after_destroy_sends_everything_in_one_command(run, src, dest, target, mode):
    """destroy forgets, on this machine too, what was sent: the next sync is a first
    one, all in one command (over SSH counted in sshd's log, this worker's account alone)."""
    def commands() -> int:
        return target.sshd_log.read_text().count(f"Starting session: command for {target.user} from")

    first = run("sync", "--src", str(src), "--project", str(dest))
    assert first.returncode == 0, first.stdout + first.stderr
    assert run("destroy", "--project", str(dest)).json["removed"] is True
    before = commands()
    again = run("sync", "--src", str(src), "--project", str(dest))
    assert again.returncode == 0 and again.json["files_sent"] == first.json["files_sent"]
    assert commands() - before == (1 if mode == "ssh" else 0)
