"""A server's log: its tail read backwards, the previous runs' logs rotated
and kept to a count, a running server's log cut to its newest part in place
(collapsed or punched, so the server's open descriptor keeps writing), the
lines fabserve appends, and copying or following it for `logs`.
"""

import fcntl
import os
import re
import stat
import time

from .protocol import AgentError
from .state import check_private, open_regular, remove
from .caller import Caller


TAIL_LINES = 20
BLOCK = 65536  # how much of a log is read at a time: backwards for a tail, forwards to copy it


def tail_text(data, lines):
    """The last `lines` lines of bytes `data`, decoded leniently. Lines end at
    newlines, as for tail -n; a CRLF ending loses its CR."""
    if lines <= 0 or not data:
        return []
    text = data.decode("utf-8", "replace")
    parts = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    return [part[:-1] if part.endswith("\r") else part for part in parts[-lines:]]


def tail_span(handle, lines, start=0):
    """(offset, end, count): where the last `lines` lines of an open binary file
    begin (not before offset `start`), the file's end when looked at, and how many
    lines lie between. Reads backwards block by block and stops at the first block
    that completes the count, so a tail costs what it shows, whatever the log's size."""
    end = handle.seek(0, os.SEEK_END)
    if lines <= 0 or end <= start:
        return end, end, 0
    handle.seek(end - 1)
    # A final newline ends the last line; it does not begin another one.
    pos = end - 1 if handle.read(1) == b"\n" else end
    found = 0
    while pos > start:
        step = min(BLOCK, pos - start)
        handle.seek(pos - step)
        block = handle.read(step)
        count = block.count(b"\n")
        if found + count >= lines:
            cut = len(block)
            for _ in range(lines - found):
                cut = block.rindex(b"\n", 0, cut)
            return pos - step + cut + 1, end, lines
        found += count
        pos -= step
    return start, end, found + 1


def read_tail(handle, lines, start=0):
    """The last `lines` lines of an open binary file from offset `start` on,
    leaving the file positioned at its end as it was when looked at."""
    offset, end, _ = tail_span(handle, lines, start)
    handle.seek(offset)
    return tail_text(handle.read(end - offset), lines)


LOG_KEEP = 5  # previous runs' logs a start keeps, when the request does not say
LOG_MAX = 50 << 20  # bytes above which a running server's log is cut, when the request does not say
# The first line of a log that was cut: what a follower needs to keep its place,
# and, after a cut that punched a hole (cut_log), where the lines go on.
CUT_MARK = re.compile(rb"^--- fabserve [^\n]* log cut to its newest part; ([0-9]+) bytes dropped in all"
                      rb"(?:; kept from byte ([0-9]+))? *\n")


def rotate_logs(directory, log, keep):
    """Before a start: server.log (a companion's proc.NAME.log) becomes
    server.log.1, .1 becomes .2 and so on up to `keep`; older ones are removed
    (all of them, and the log itself, for 0)."""
    numbered = []
    rotated = re.compile(re.escape(os.path.basename(log)) + r"\.([0-9]+)$")
    for name in os.listdir(directory):
        found = rotated.match(name)
        if found:
            numbered.append((int(found.group(1)), os.path.join(directory, name)))
    for number, path in sorted(numbered, reverse=True):
        if number >= keep:
            remove(path)
        else:
            os.rename(path, f"{log}.{number + 1}")
    if keep and os.path.lexists(log):
        os.rename(log, f"{log}.1")
    else:
        remove(log)


def read_mark(fd):
    """(bytes dropped in all, where the marker line ends, where the kept lines
    begin) of a log that was cut; None for one that never was."""
    found = CUT_MARK.match(os.pread(fd, 2 * MARK_ROOM, 0))
    if not found:
        return None
    return int(found.group(1)), found.end(), int(found.group(2) or found.end())


def log_base(fd):
    """How far a byte's offset in the log is behind where it was first written:
    the bytes cut from the front in all, less those in front of the kept lines
    (the marker line, and the hole of a punched cut)."""
    mark = read_mark(fd)
    return mark[0] - mark[2] if mark else 0


def hole_end(fd):
    """Where the hole a punched cut left after its marker line ends, which
    readers skip (the file reads as NUL bytes there); 0 when there is none."""
    mark = read_mark(fd)
    return mark[2] if mark and mark[2] > mark[1] else 0


def copy_within(fd, source, end, target):
    """Copy bytes source..end of `fd` to offset `target` (below source), forwards."""
    while source < end:
        chunk = os.pread(fd, min(16 * BLOCK, end - source), source)
        if not chunk:
            break
        os.pwrite(fd, chunk, target)
        source += len(chunk)
        target += len(chunk)
    return source


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE = 0x01, 0x02, 0x08  # linux/falloc.h
MARK_ROOM = 128  # bytes a cut's marker line may take: its text fits in them whatever its count
PUNCHED_MARK = 2 * MARK_ROOM  # the fixed length of a punched cut's marker, which names two offsets


def cut_mark(dropped, length=0, kept=None):
    """The marker line a cut puts first, padded to `length` bytes; `kept`: where
    the lines go on after the hole of a punched cut."""
    text = (f"--- fabserve {time.strftime('%Y-%m-%d %H:%M:%S')} log cut to its newest part; "
            f"{dropped} bytes dropped in all")
    if kept is not None:
        text += f"; kept from byte {kept}"
    return (text.ljust(length - 1) + "\n").encode()


def fallocate(fd, mode, offset, length):
    """fallocate(2) with `mode`, which os.posix_fallocate cannot pass; False
    where the file system (or the C library) cannot do it."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "fallocate64", None) or libc.fallocate
    except (ImportError, OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return call(fd, mode, offset, length) == 0


def collapse_front(fd, length):
    """Remove the first `length` bytes of `fd` in one step, which the kernel
    orders with every append (fallocate FALLOC_FL_COLLAPSE_RANGE: ext4 and XFS,
    in whole blocks). False where that is not available."""
    return fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, length)


def punch(fd, start, end):
    """Free bytes start..end of `fd` without moving any other byte or changing
    its size (FALLOC_FL_PUNCH_HOLE: tmpfs, btrfs, ext4, XFS, NFS 4.2); they read
    as NUL bytes after. False where that is not available."""
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start)


def cut_log(path, limit, ways=("collapse", "punch")):
    """Cut the log at `path` to about its newest half of `limit` when more than
    `limit` of its bytes are kept; returns the bytes this cut dropped (0: nothing to do).

    The server appends with O_APPEND: each of its writes lands at the end as
    the file is at that moment, wherever that is. The first of `ways` the file
    system can do is used, else a copy:
    - collapse (ext4, XFS): the front is removed in whole blocks by one fallocate
      call that the kernel orders with the server's writes, so none is lost; the
      marker line then overwrites what is left first, up to the first line end
      from MARK_ROOM on (MARK_ROOM bytes when none is within twice that).
    - punch (tmpfs, btrfs, NFS 4.2): the marker line is written first, naming
      where the kept part begins (a line start), then the bytes between are
      freed by one fallocate call that moves no byte and leaves the size as it
      is, so no write can be lost either: the file keeps growing in apparent
      size and reads as NUL bytes in the hole, which readers skip (hole_end).
    - copy: the kept part, from a line start, is copied to the front after the
      marker, then whatever was appended meanwhile, until the size holds still;
      the file is truncated right after it, and the server's next write lands
      there: only a write between that last size check and the truncate (two
      system calls apart) could be lost.
    The marker counts the bytes dropped in all, so a follower keeps its place
    (log_base). One cut at a time (flock); errors leave the log as it is.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()
                or info.st_size - hole_end(fd) <= limit):
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another call is cutting it now
            return 0
        size = os.fstat(fd).st_size
        start = size - limit // 2
        base, hole = log_base(fd), hole_end(fd)
        block = info.st_blksize or 4096
        if "collapse" in ways and start // block and collapse_front(fd, start // block * block):
            start = start // block * block
            newline = os.pread(fd, 2 * MARK_ROOM, 0).find(b"\n", MARK_ROOM - 1)
            length = newline + 1 if newline >= 0 else MARK_ROOM
            os.pwrite(fd, cut_mark(base + start + length, length), 0)
            return start
        # Begin after a newline: the kept part starts with a whole line.
        newline = os.pread(fd, BLOCK, start - 1).find(b"\n")
        if newline >= 0:
            start += newline
        if "punch" in ways and start > PUNCHED_MARK:
            # The marker first: a reader that meets the hole finds where it ends.
            front = os.pread(fd, PUNCHED_MARK, 0)
            os.pwrite(fd, cut_mark(base + start, PUNCHED_MARK, start), 0)
            if punch(fd, PUNCHED_MARK, start):
                return start - hole
            os.pwrite(fd, front, 0)
        mark = cut_mark(base + start)
        target = len(mark) - start  # where a kept byte moves: its offset plus this
        end = copy_within(fd, start, size, start + target)
        os.pwrite(fd, mark, 0)
        while True:
            grown = os.fstat(fd).st_size
            if grown <= end:
                break
            end = copy_within(fd, end, grown, end + target)
        os.ftruncate(fd, end + target)
        return start
    except OSError:
        return 0
    finally:
        os.close(fd)


def cap_log(inst):
    """Keep a running server's log under log_max: called wherever its pidfile
    is trusted, so every call on the instance enforces the cap."""
    cut_log(inst.log, inst.req.log_max or LOG_MAX)


def log_line(text, fd=1):
    """Append one line to the log: `fd`, by default this process's stdout (O_APPEND)."""
    try:
        os.write(fd, f"--- fabserve {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())
    except OSError:
        pass


def append_log(path, text):
    """Append one line to the log at `path` (O_APPEND, as the server writes it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            log_line(text, fd)
    finally:
        os.close(fd)


def log_tail(inst, offset=0, lines=TAIL_LINES):
    try:
        with open_regular(inst.log, "log") as handle:
            return read_tail(handle, lines, max(offset, hole_end(handle.fileno())))
    except (OSError, AgentError):
        return []


def open_log(inst, log=None):
    """The instance's log (or `log`, a previous run's), open for reading, after
    the checks its state gets: the state directories and the log are this
    user's, not symlinks, writable by no one else, and the log is a regular
    file (a FIFO planted there would block)."""
    log = log or inst.log
    for path in (inst.base, inst.dir):
        if os.path.lexists(path):
            check_private(path, "state directory")
    if not os.path.lexists(log):
        raise AgentError(f"no {'previous log' if log != inst.log else 'log yet'} at {log}")
    check_private(log, "log")
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        # Swapped for a symlink since the check, or removed since.
        raise AgentError(f"cannot read the log {log}: {exc.strerror}")
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise AgentError(f"refusing log {log}: not a regular file")
    return handle


def kept_bytes(handle, offset, end):
    """Bytes offset..end of the log open as `handle`, block by block, less any
    part that a punched cut freed meanwhile (read as NUL bytes: see hole_end)."""
    handle.seek(offset)
    while offset < end:
        chunk = handle.read(min(16 * BLOCK, end - offset))
        if not chunk:  # truncated meanwhile
            break
        hole = hole_end(handle.fileno()) if b"\0" in chunk else 0
        if hole > offset:
            offset = handle.seek(hole)
            continue
        yield chunk
        offset += len(chunk)


def copy_out(handle, offset, end, out, front=b""):
    """Write `front`, then bytes offset..end of `handle` (kept_bytes) to `out`,
    ending with a newline."""
    out.write(front)
    last = b"\n"
    for chunk in kept_bytes(handle, offset, end):
        out.write(chunk)
        last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")
    out.flush()


def follow(handle, out):
    """Copy what is appended to the log to `out` until the caller goes away (see
    Caller). A log truncated in place is followed from its new start, as tail -F
    does; one cut to its newest part (cut_log) from where the follower was in it (or
    where the kept part begins, when the cut dropped what it had not read yet)."""
    pos = handle.tell()
    base = log_base(handle.fileno())
    with Caller(out) as caller:
        while not caller.gone():
            chunk = handle.read(BLOCK)
            hole = hole_end(handle.fileno()) if b"\0" in chunk else 0
            if hole > pos:  # a punched cut freed what was not read yet: go on after it
                pos = handle.seek(hole)
            elif chunk:
                out.write(chunk)
                out.flush()
                pos += len(chunk)
            elif os.fstat(handle.fileno()).st_size < pos:
                pos, base = refollow(handle, pos, base)
            elif caller.gone(0.25):
                return


def refollow(handle, pos, base):
    """(position, base) to go on from in a log found shorter than `pos`: the same
    place if it was cut (its marker's count of dropped bytes grew), else its start."""
    now = log_base(handle.fileno())
    moved = pos + base - now
    if now == base or not 0 <= moved <= os.fstat(handle.fileno()).st_size:
        moved = 0
    return handle.seek(moved), now
