"""The handler of sync: a tree sent by the client written into the project
directory, in two calls. `plan` compares the client's manifest with the disk
and names the files it needs; `apply` carries those files' contents (an
archive) and writes them, deletes what an earlier sync wrote that the tree no
longer holds, and records what it wrote (projects.Project's record).

Every name and link of the manifest, and the directories on the host that
the writes go through, are checked before anything is written: a tree that
would reach outside the project directory is refused as a whole.
"""

import base64
import errno
import os
import stat
import struct
import time
import zlib

from .protocol import ARCHIVE_HEAD, AgentError, join, result_of
from .state import sha256

KINDS = ("file", "link")
LINK_HOPS = 40  # links followed resolving one target before it counts as a loop (the kernel's own limit)
HEAD = struct.Struct(ARCHIVE_HEAD)  # an archive entry's name length and content length


class Refused(AgentError):
    """A tree that would write outside the project directory: nothing is written, exit 2."""

    def __init__(self, message):
        AgentError.__init__(self, f"refused: {message}; nothing was written", refused=True)


def shown(path):
    return repr(path) if any(char in path for char in "\n\r\t") else path


def check_name(path):
    """`path` must be a relative name inside the tree: components only, none empty, `.` or `..`."""
    if not isinstance(path, str) or not path:
        raise Refused("an empty file name")
    if "\0" in path:
        raise Refused(f"the name {path!r} holds a NUL byte")
    if path.startswith("/"):
        raise Refused(f"the absolute name {shown(path)}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise Refused(f"the name {shown(path)} has an empty, '.' or '..' component")


def check_entry(path, entry):
    """One manifest entry: [kind, mode, content digest or link target, size]."""
    if not (isinstance(entry, list) and len(entry) == 4 and entry[0] in KINDS):
        raise AgentError(f"malformed manifest entry for {shown(path)}")
    kind, mode, digest, size = entry
    if not (isinstance(mode, int) and 0 <= mode <= 0o777 and isinstance(size, int) and size >= 0
            and isinstance(digest, str) and digest):
        raise AgentError(f"malformed manifest entry for {shown(path)}")
    if kind == "link" and "\0" in digest:
        raise Refused(f"the link {shown(path)} has a target holding a NUL byte")


def leaves_tree(links, path, target):
    """Whether the link `path` -> `target`, followed through the tree's own
    `links` (name -> target) as the kernel would follow them, leads out of the
    tree. Followed, not only normalised: `a/b -> ..` makes `a/b/../..` leave."""
    if target.startswith("/"):
        return True
    where = path.split("/")[:-1]
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return True
            where.pop()
            continue
        where.append(part)
        inner = links.get("/".join(where))
        if inner is not None:
            hops += 1
            if hops > LINK_HOPS or inner.startswith("/"):
                return True
            where.pop()
            pending.extend(reversed(inner.split("/")))
    return False


def checked_manifest(manifest):
    """The manifest, once every name, entry and link is known to stay inside the tree; Refused otherwise."""
    if not isinstance(manifest, dict):
        raise AgentError("the request carries no manifest")
    links = {}
    for path, entry in manifest.items():
        check_name(path)
        check_entry(path, entry)
        if entry[0] == "link":
            links[path] = entry[2]
    for path in manifest:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in links:
                raise Refused(f"{shown(path)} lies under the link {shown(prefix)}")
            if prefix in manifest:
                raise AgentError(f"{shown(prefix)} is both a file and a directory in the tree")
    for path, target in links.items():
        if leaves_tree(links, path, target):
            raise Refused(f"the link {shown(path)} -> {shown(target)} points outside the project directory")
    return manifest


def check_host(root, manifest, doomed):
    """The directories on the host every write goes through: each existing one must
    be a real directory (lstat), never a symlink or a file, unless it is a file or link
    an earlier sync wrote that goes now (`doomed`: it is deleted before anything is written)."""
    if os.path.lexists(root) and not stat.S_ISDIR(os.lstat(root).st_mode):
        raise AgentError(f"{root} exists and is not a directory")
    passable = {}  # a directory name -> whether the names under it exist on the host to be checked
    for path in manifest:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix not in passable:
                passable[prefix] = host_dir(root, prefix, path, doomed)
            if not passable[prefix]:
                break
        try:
            if stat.S_ISDIR(os.lstat(os.path.join(root, path)).st_mode):
                raise AgentError(f"{shown(path)} is a directory on the host; remove it there first")
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise


def host_dir(root, prefix, path, doomed):
    """Whether the directory `prefix` exists on the host (False: missing, or a file sync
    deletes first); Refused when it is a symlink or a file that stays."""
    try:
        mode = os.lstat(os.path.join(root, prefix)).st_mode
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        return False
    if stat.S_ISDIR(mode):
        return True
    if prefix in doomed:
        return False
    what = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
    raise Refused(f"{shown(prefix)} on the host is {what} ({shown(path)} would go through it)")


def file_digest(path):
    """The SHA-256 of a regular file's content, opened without following a link."""
    digest = sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def differs(root, path, entry, written):
    """Whether the host's `path` differs from the manifest's `entry`. A file whose
    size and mtime are those the record saw when sync wrote it (`written`) and whose
    digest the manifest repeats is taken as unchanged without reading it again."""
    kind, mode, digest, size = entry
    try:
        info = os.lstat(os.path.join(root, path))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return True
        raise
    if kind == "link":
        return not stat.S_ISLNK(info.st_mode) or os.readlink(os.path.join(root, path)) != digest
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != mode or info.st_size != size:
        return True
    if isinstance(written, list) and written[:4] == [kind, mode, digest, size] and written[4:] == [info.st_mtime_ns]:
        return False
    return file_digest(os.path.join(root, path)) != digest


def unpack(archive):
    """{name: content} of an archive: base64 of zlib of, per file, HEAD (the name's
    length, the content's length), the name in UTF-8 and the content."""
    try:
        data = zlib.decompress(base64.b64decode(archive or ""))
    except (ValueError, TypeError, zlib.error):
        raise AgentError("the archive is corrupt")
    files, at = {}, 0
    while at < len(data):
        if at + HEAD.size > len(data):
            raise AgentError("the archive is truncated")
        name_size, size = HEAD.unpack_from(data, at)
        at += HEAD.size
        end = at + name_size + size
        if end > len(data):
            raise AgentError("the archive is truncated")
        name = data[at:at + name_size].decode("utf-8", "surrogateescape")
        files[name] = data[at + name_size:end]
        at = end
    return files


def do_sync(project):
    """Apply the manifest the request carries, with the contents its archive
    holds. An archive that lacks a file the host needs (missing, or its content
    or mode differ) writes nothing: the result names those files (`needed`), for
    the client to send in a second call."""
    req = project.req
    manifest = checked_manifest(req.manifest)
    record = project.record()
    old = record.get("files") if isinstance(record.get("files"), dict) else {}
    doomed = set(path for path in old if path not in manifest)
    check_host(project.dir, manifest, doomed)
    contents = unpack(req.archive) if req.archive else {}
    for name, content in contents.items():
        entry = manifest.get(name)
        if entry is None or entry[0] != "file" or sha256(content).hexdigest() != entry[2]:
            raise AgentError(f"{shown(name)} in the archive is not the manifest's; run sync again")
    root = project.dir
    needed = [path for path in sorted(manifest) if differs(root, path, manifest[path], old.get(path))]
    missing = [path for path in needed if manifest[path][0] == "file" and path not in contents]
    if missing:  # every file it needs, not only those missing here: the next call sends them all
        wanted = [path for path in needed if manifest[path][0] == "file"]
        return result_of(ok=True, changed=False, state=None, project=root, port=None, needed=wanted,
                         message=f"{len(wanted)} of {len(manifest)} files to send")
    current = (bool(record) and set(old) == set(manifest) and record.get("branch") == req.branch
               and record.get("commit") == req.commit)
    if not needed and current and not any(os.path.lexists(os.path.join(root, path)) for path in doomed):
        return result_of(ok=True, changed=False, state=None, project=root, port=None, files_sent=0,
                         bytes_sent=0, deleted=0, message="up to date")
    created = record.get("created") is True
    fresh = not os.path.isdir(root)
    if fresh:
        os.makedirs(root)
        created = True
    deleted = delete(root, doomed)
    dirs = prune(root, record.get("dirs"), manifest)
    present = set()  # directories known to exist by now: one mkdir per directory, not per file
    for path in needed:
        dirs |= make_parents(root, path, present)
        write(root, path, manifest[path], contents.get(path), fresh)
    files = {}
    written = set(needed)
    for path, entry in manifest.items():
        was = old.get(path)
        if path not in written and isinstance(was, list) and len(was) == 5 and was[:4] == list(entry):
            files[path] = was  # as recorded, and differs found it so on disk
        else:
            files[path] = list(entry) + [os.lstat(os.path.join(root, path)).st_mtime_ns]
    project.save({"created": created, "files": files, "dirs": sorted(dirs), "branch": req.branch,
                  "commit": req.commit, "synced_at": time.time()})
    sent = [path for path in needed if manifest[path][0] == "file"]
    return result_of(ok=True, changed=bool(needed or deleted), state=None, project=root, port=None,
                     files_sent=len(needed), bytes_sent=sum(manifest[path][3] for path in sent),
                     deleted=deleted, message=join(f"wrote {len(needed)} of {len(manifest)} files", f"deleted {deleted}"))


def inside(root, path):
    """Whether every directory between `root` and `path` is a real directory (no link to follow)."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        try:
            if not stat.S_ISDIR(os.lstat(os.path.join(root, *parts[:depth])).st_mode):
                return False
        except OSError:
            return False
    return True


def delete(root, doomed):
    """Remove the files and links an earlier sync wrote that the tree no longer holds:
    only those, never what they became (a directory), never through a link."""
    count = 0
    for path in sorted(doomed):
        full = os.path.join(root, path)
        if not inside(root, path):
            continue
        try:
            mode = os.lstat(full).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            os.unlink(full)
            count += 1
    return count


def prune(root, dirs, manifest):
    """The directories sync created that stay: those the tree still uses or that
    hold something else; the others, empty, are removed (deepest first)."""
    used = set()
    for path in manifest:
        parts = path.split("/")
        used.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    kept = set()
    for path in sorted(dirs if isinstance(dirs, list) else [], key=lambda name: -name.count("/")):
        if not isinstance(path, str) or not os.path.isdir(os.path.join(root, path)):
            continue
        if path not in used and inside(root, path) and not os.path.islink(os.path.join(root, path)):
            try:
                os.rmdir(os.path.join(root, path))
                continue
            except OSError:
                pass
        kept.add(path)
    return kept


def make_parents(root, path, present):
    """Create the missing directories above `path` (`present`: those known to exist,
    updated); the ones created, by name."""
    made = set()
    parts = path.split("/")
    for depth in range(1, len(parts)):
        name = "/".join(parts[:depth])
        if name in present:
            continue
        try:
            os.mkdir(os.path.join(root, name))
            made.add(name)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            if not stat.S_ISDIR(os.lstat(os.path.join(root, name)).st_mode):  # never write through a link
                raise AgentError(f"{shown(name)} on the host changed into a non-directory during sync")
        present.add(name)
    return made


def write(root, path, entry, content, fresh):
    """Put `path` in place whole: written (or linked) under a temporary name beside
    it, then renamed over it, so a reader sees the old file or the new one. In a
    `fresh` project directory, one this call created, nothing can read it yet: each
    file is written in place (a rename less per file)."""
    full = os.path.join(root, path)
    tmp = full if fresh else os.path.join(os.path.dirname(full), f".fabserve-{os.getpid()}.tmp")
    try:
        if entry[0] == "link":
            os.symlink(entry[2], tmp)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                os.fchmod(handle.fileno(), entry[1])
        if not fresh:
            os.replace(tmp, full)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
