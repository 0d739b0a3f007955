"""Local source trees for sync and up: git work trees of the example project,
owned by whoever runs fab (git reads no other user's repository)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from .target import REPO

Runner = Callable[[list[str]], subprocess.CompletedProcess]


def git(repo: Path, *args: str, runner: Runner | None = None) -> None:
    argv = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    done = runner(argv) if runner else subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def owned_by(tree: Path, uid: int, gid: int) -> None:
    for path in [tree, *tree.rglob("*")]:
        os.lchown(path, uid, gid)


def example_repo(root: Path, owner: tuple[int, int], as_owner: Runner, then: tuple[int, int] | None = None) -> Path:
    """A git work tree at `root` (branch main, one commit) of fabserve's example
    project and what `extra` adds; made by `owner` through `as_owner` (git commits
    as them), then handed to `then` (the user who runs fab) when given."""
    shutil.copytree(REPO / "example", root, symlinks=True, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    (root / ".gitignore").write_text(".venv\n.fabserve-venvs\n*.sqlite3\n__pycache__/\n")
    (root / "static").mkdir()
    (root / "static" / "site name.css").write_text("body { color: teal }\n")
    os.symlink("site name.css", root / "static" / "current.css")
    owned_by(root, *owner)
    git(root, "init", "-q", "-b", "main", runner=as_owner)
    git(root, "add", "-A", runner=as_owner)
    git(root, "commit", "-q", "-m", "first", runner=as_owner)
    if then is not None:
        owned_by(root, *then)
    return root


def tree_of(root: Path) -> dict[str, tuple]:
    """{name: ("link", target) or (mode, content)} of every file and link under `root`, links not followed."""
    found = {}
    for where, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(where) / name
            if path.is_symlink():
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif path.is_file():
                found[str(path.relative_to(root))] = (path.stat().st_mode & 0o7777, path.read_bytes())
    return found
