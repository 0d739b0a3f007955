"""What sync ships: the list of a local tree's files, its manifest, the archive
of the files a host needs, and the tree's git branch and commit.

In a git work tree the list is what git would ship: tracked files that still
exist, and untracked files git does not ignore. Outside git it is every file
but those under EXCLUDED names. Symlinks are listed as links, never followed.
The archive's format is the agent's (agent/shipping.py's unpack): zlib of, per
file, the name's and the content's lengths, the name and the content, in base64.
"""

import base64
import hashlib
import os
import stat
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .agent.protocol import ARCHIVE_HEAD

HEAD = struct.Struct(ARCHIVE_HEAD)
#: Names never shipped from a tree outside git, at any depth.
EXCLUDED = frozenset((".git", ".venv", "__pycache__", "node_modules"))
#: A manifest: relative name -> [kind ("file" or "link"), permission bits, SHA-256 or link target, size].
Manifest = Dict[str, List[object]]


class TreeError(Exception):
    """The tree cannot be listed or read (one line)."""


def git(src: Path, *args: str) -> Optional[bytes]:
    """`git -C SRC ARGS`'s output; None when git says SRC is not in a work tree (or has no
    answer); FileNotFoundError when git is missing.
    A repository git refuses to read (another user's: safe.directory) is a TreeError, never
    taken for a tree outside git, which would ship its ignored files."""
    done = subprocess.run(["git", "-C", str(src), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if b"safe.directory" in done.stderr:
        raise TreeError(f"git refuses to read {src}: it belongs to another user (see git's safe.directory)")
    return done.stdout if done.returncode == 0 else None


def in_git(src: Path) -> bool:
    """Whether `src` is in a git work tree; TreeError when it looks like one but git is missing."""
    try:
        return git(src, "rev-parse", "--is-inside-work-tree") == b"true\n"
    except FileNotFoundError:
        if any((parent / ".git").exists() for parent in (src, *src.parents)):
            raise TreeError(f"{src} is in a git work tree, but git is not installed here") from None
        return False


def git_facts(src: Path) -> Tuple[Optional[str], Optional[str]]:
    """(the current branch, the commit) of the work tree holding `src`; None for
    what it lacks: outside git, a detached head's branch, a repository without commits."""
    if not in_git(src):
        return None, None
    branch = git(src, "symbolic-ref", "--quiet", "--short", "HEAD")
    commit = git(src, "rev-parse", "--verify", "--quiet", "HEAD")
    return (branch.decode().strip() if branch else None), (commit.decode().strip() if commit else None)


def name_of(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TreeError(f"file name {raw!r} is not UTF-8; sync sends only UTF-8 names") from None


def listing(src: Path) -> List[str]:
    """The relative names of the files and links the tree ships, sorted."""
    if in_git(src):
        out = git(src, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        if out is None:
            raise TreeError(f"git ls-files failed in {src}")
        names = {name_of(raw) for raw in out.split(b"\0") if raw}
        # --cached still lists tracked files deleted from the work tree; a submodule is a directory.
        return sorted(name for name in names if shippable(src / name))
    return sorted(walk(src, ""))


def shippable(path: Path) -> bool:
    """Whether `path` exists as a regular file or a link (never followed)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def walk(root: Path, prefix: str) -> Iterable[str]:
    """Every file and link under `root`/`prefix` but EXCLUDED names, without following links."""
    with os.scandir(root / prefix if prefix else root) as entries:
        for entry in entries:
            if entry.name in EXCLUDED:
                continue
            name = name_of(os.fsencode(f"{prefix}{entry.name}"))
            if entry.is_dir(follow_symlinks=False):
                yield from walk(root, f"{name}/")
            elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                yield name


def read_entry(src: Path, name: str) -> Tuple[Optional[List[object]], bytes]:
    """`name`'s manifest entry and content (a link has none); None when it is
    gone (or no longer a file or a link)."""
    path = src / name
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            return ["link", 0, name_of(os.fsencode(os.readlink(path))), 0], b""
        if not stat.S_ISREG(info.st_mode):
            return None, b""
        content = path.read_bytes()
    except FileNotFoundError:
        return None, b""
    except OSError as exc:
        raise TreeError(f"cannot read {path}: {exc.strerror}") from None
    return ["file", stat.S_IMODE(info.st_mode) & 0o777, hashlib.sha256(content).hexdigest(), len(content)], content


def manifest(src: Path, names: Iterable[str]) -> Manifest:
    """The manifest of `names` in `src` (those gone meanwhile left out)."""
    found: Manifest = {}
    for name in names:
        entry, _ = read_entry(src, name)
        if entry is not None:
            found[name] = entry
    return found


def pack(src: Path, files: Manifest, needed: Iterable[str]) -> str:
    """The archive of the `needed` files' contents. A file changed since the
    manifest was made is sent as it is now, and `files` updated to say so."""
    chunks: List[bytes] = []
    for name in needed:
        if files[name][0] != "file":
            continue
        entry, content = read_entry(src, name)
        if entry is None or entry[0] != "file":
            raise TreeError(f"{src / name} changed while syncing; run sync again")
        files[name] = entry
        encoded = name.encode("utf-8")
        chunks += [HEAD.pack(len(encoded), len(content)), encoded, content]
    return base64.b64encode(zlib.compress(b"".join(chunks), 1)).decode("ascii")
