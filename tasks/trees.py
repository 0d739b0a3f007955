"""What sync ships: the list of a local tree's files, its manifest, the archive
of the files a host needs, and the tree's git branch and commit.

A re-sync reads again only the files whose size and times changed since the
last one (the digests are kept in the user's cache directory).

In a git work tree the list is what git would ship: tracked files that still
exist, and untracked files git does not ignore. Outside git it is every file
but those under EXCLUDED names. Symlinks are listed as links, never followed.
The archive's format is the agent's (agent/shipping.py's unpack): zlib of, per
file, the name's and the content's lengths, the name and the content, in base64.
"""

import base64
import hashlib
import json
import os
import stat
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .agent.protocol import ARCHIVE_HEAD
from .payload import CACHE_DIR, trusted, trusted_dir

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


#: A file whose status changed this close before its digest was kept is read again:
#: a write within the same (coarse) timestamp would leave its size and times as they were.
RACY_NS = 2 * 10 ** 9
#: The digests kept between syncs (see manifest); hosts of one run take turns.
DIGESTS_LOCK = threading.Lock()


def digests_file(src: Path) -> Path:
    """Where the digests of `src`'s files are kept between syncs: the user's cache directory."""
    return CACHE_DIR / f"tree-{hashlib.sha256(str(src).encode()).hexdigest()[:16]}.json"


def sent_file(host: str, project: str) -> Path:
    """Where what was last sent to `project` on `host` is kept: the user's cache directory."""
    key = hashlib.sha256("\0".join((host, project)).encode()).hexdigest()[:16]
    return CACHE_DIR / f"sent-{key}.json"


def changed_since(files: Manifest, sent: Dict[str, List[object]]) -> List[str]:
    """The names whose kind, mode or content differ from what was last sent (all, when nothing was)."""
    return [name for name, entry in files.items() if sent.get(name) != entry[:3]]


def remember_sent(path: Path, files: Manifest) -> None:
    write_digests(path, {name: entry[:3] for name, entry in files.items()})


def stamp(info: os.stat_result) -> List[int]:
    """What says a file is as it was: any write changes its ctime, and usually its size and mtime."""
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def manifest(src: Path, names: Iterable[str], kept: Optional[Path] = None) -> Manifest:
    """The manifest of `names` in `src` (those gone meanwhile left out). With `kept`
    (digests_file), a file whose stamp is the one kept there, older than RACY_NS at
    the time, is not read again: like rsync's quick check, a re-sync reads only what changed."""
    with DIGESTS_LOCK:
        known = read_digests(kept) if kept else {}
        found: Manifest = {}
        stamps: Dict[str, List[object]] = {}
        now = time.time_ns()
        for name in names:
            path = src / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            was = known.get(name)
            if stat.S_ISREG(info.st_mode) and isinstance(was, list) and was[:5] == stamp(info):
                found[name] = ["file", stat.S_IMODE(info.st_mode) & 0o777, was[5], info.st_size]
                stamps[name] = was
                continue
            entry, _ = read_entry(src, name)
            if entry is None:
                continue
            found[name] = entry
            if entry[0] == "file" and info.st_ctime_ns < now - RACY_NS:
                stamps[name] = [*stamp(info), entry[2]]
        if kept and stamps != known:
            write_digests(kept, stamps)
        return found


def read_digests(path: Path) -> Dict[str, List[object]]:
    """The kept digests, if the file is the user's own and no one else can write it, else none."""
    if not trusted_dir(path.parent):
        return {}
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not (stat.S_ISREG(info.st_mode) and trusted(info)):
                return {}
            kept = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


def write_digests(path: Path, stamps: Dict[str, List[object]]) -> None:
    """Keep `stamps` at `path`, replaced whole; nothing happens where it cannot be written."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not trusted_dir(path.parent):
            return
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(json.dumps(stamps))
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


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
