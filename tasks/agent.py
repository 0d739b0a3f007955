"""The target half of fabserve: one stdlib-only program sent with every command.

The client ships this file (compressed) inside a single `python3 -c ...` command,
so each operation costs one SSH round trip and nothing is installed on the host.
It reads one request (a line of JSON on stdin, never argv), acts, and prints one
result line prefixed by MARKER. It must run on CPython 3.6+, so: no walrus, no
dataclasses, no `from __future__ import annotations`, no 3.7+ subprocess flags.
Linux only: process identity comes from /proc.
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import signal
import stat
import sys
import time

# socket, subprocess and shutil are imported inside the functions that need them:
# the agent starts afresh for every call, and most calls (status, stop) need none.

MARKER = "@@fabserve@@"
# The states a result reports; the client shares these names.
RUNNING, STOPPED, FAILED = "running", "stopped", "failed"
# Waits poll quickly at first, when the answer usually comes (Django exits on
# TERM within milliseconds), then back off to POLL so a long wait costs little CPU.
FIRST_POLL = 0.005
POLL = 0.05
KILL_WAIT = 5.0  # how long a group may take to vanish after SIGKILL
PORT_WAIT = 2.0  # how long a listener may linger after its process is gone
# How often stop looks again for token carriers after ending what it found: a
# fork that left the group may itself have forked meanwhile.
ESCAPE_ROUNDS = 3
TAIL_LINES = 20
CHECKED = ("start", "restart", "status")  # they take --check; their results carry http_status
INTERPRETER = re.compile(r"^(python|pypy)[0-9.]*$")
# runserver options whose value is the next argv element
RUNSERVER_VALUE_OPTIONS = {"--settings", "--pythonpath", "-v", "--verbosity"}


class AgentError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    def __init__(self, message, state=FAILED, **extra):
        Exception.__init__(self, message)
        self.state = state
        self.extra = extra


# ---------------------------------------------------------------- pure parsing


def parse_stat(text):
    """Fields of /proc/PID/stat we use. The command name (field 2) may hold
    spaces and parentheses, so split after the last ')'."""
    rest = text[text.rindex(")") + 2:].split()
    return {
        "state": rest[0],
        "ppid": int(rest[1]),
        "pgrp": int(rest[2]),
        "session": int(rest[3]),
        "starttime": int(rest[19]),
    }


def parse_pid(text, pid_max):
    """A pidfile's PID, or ValueError saying why it is unusable. 0, 1 and
    negative numbers would make kill() signal whole groups or everything."""
    value = text.strip()
    if not value:
        raise ValueError("pidfile is empty")
    if not value.isdigit():
        raise ValueError(f"pidfile holds {value[:40]!r}, not a PID")
    pid = int(value)
    if pid < 2 or pid > pid_max:
        raise ValueError(f"pidfile holds {pid}, outside 2..{pid_max}")
    return pid


def parse_listen_inodes(text, port):
    """Socket inodes listening on `port` in /proc/net/tcp or tcp6 text."""
    return listeners([text]).get(port, set())


def addrport_port(value):
    """The port of a runserver addrport argument: "8000", "0:8000",
    "127.0.0.1:8000", "[::1]:8000". None if it names no port."""
    tail = value.rsplit(":", 1)[-1] if not value.endswith("]") else ""
    return int(tail) if tail.isdigit() else None


def runserver_args(argv):
    """(script, port) when argv is `<python> [opts] <script> runserver ...`, else None.

    Only a Python interpreter running a script counts: `vim manage.py runserver`,
    `tail -f`, `grep runserver` or `sh -c '...'` name the words but are not servers.
    """
    if not argv or not INTERPRETER.match(os.path.basename(argv[0])):
        return None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "-m"):
            return None
        if arg in ("-W", "-X"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        break
    if i + 1 >= len(argv) or argv[i + 1] != "runserver":
        return None
    script = argv[i]
    port = 8000  # Django's default when no addrport is given
    rest = argv[i + 2:]
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg in RUNSERVER_VALUE_OPTIONS:
            j += 2
            continue
        if not arg.startswith("-"):
            found = addrport_port(arg)
            if found is None:
                return None
            port = found
            break
        j += 1
    return script, port


def is_candidate(proc, manage_py, port, uid, token, excluded, given=None):
    """Whether a process snapshot looks like a server of this instance, judged
    on what is cheap to read for every process; `is_ours` then confirms it.

    It looks like one when it carries the instance's token, or when its argv is
    `<python> manage.py runserver` on this port with a script that resolves,
    symlinks and all, against its cwd to `manage_py` (itself resolved), or
    whose path joined with its cwd is exactly `given` (the project's manage.py
    as the user names it: `/srv/app/current/manage.py` started before the
    release link moved). Always the same user, never `excluded` (this agent
    and its ancestors).
    """
    if proc["pid"] in excluded or proc["uid"] != uid or proc["state"] == "Z":
        return False
    if token and proc.get("token") == token:
        return True
    found = runserver_args(proc["argv"])
    if found is None or found[1] != port or proc.get("cwd") is None:
        return False
    if given and lexical_script(proc["cwd"], found[0]) == given:
        return True
    # realpath, not normpath: in `link/../site/manage.py` the kernel follows
    # `link` before `..`, so the lexical answer can name another project.
    return os.path.realpath(os.path.join(proc["cwd"], found[0])) == manage_py


# The interpreter binary as /proc/PID/exe names it: python3.11, python3.6m
# (ABI flags d, m, t), pypy3.9. argv[0] alone proves nothing: `exec -a python3`.
EXECUTABLE = re.compile(r"^(python|pypy)[0-9.]*[dmt]*$")
DELETED = " (deleted)"  # what the kernel appends once the binary was replaced (an upgrade)


def is_interpreter(exe):
    """Whether a /proc/PID/exe target is a Python interpreter."""
    if not exe:
        return False
    if exe.endswith(DELETED):
        exe = exe[:-len(DELETED)]
    return bool(EXECUTABLE.match(os.path.basename(exe)))


def is_ours(proc, token, own_namespaces):
    """Whether a candidate (see is_candidate) is confirmed as this instance's.

    It must live in the agent's own PID and network namespaces: a container
    or `unshare` twin of the same project and port is not ours, and
    neither is a process whose namespaces cannot be read. Then it carries the
    instance's token, or its executable is a Python interpreter.
    """
    if not own_namespaces or proc.get("ns") != own_namespaces:
        return False
    if token and proc.get("token") == token:
        return True
    return is_interpreter(proc.get("exe"))


def instance_name(project, port):
    """A directory name unique per (project path, port), readable by humans."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(project)).strip("._") or "project"
    digest = hashlib.sha256(f"{project}\0{port}".encode()).hexdigest()[:10]
    return f"{slug[:40]}-{port}-{digest}"


INSTANCE_DIR = re.compile(r"-([0-9]{1,5})-[0-9a-f]{10}$")


def instance_port(name):
    """The port in an instance directory's name (see instance_name), or None."""
    match = INSTANCE_DIR.search(name)
    port = int(match.group(1)) if match else 0
    return port if 1 <= port <= 65535 else None


def given_path(path, cwd=None):
    """A project path as the user named it: absolute, `~` expanded, `.` and
    doubled slashes dropped, symlinks kept. Up to its last `..` it is resolved
    as the kernel resolves it (in `current/../x`, `current` is followed before
    `..`), since collapsing `..` lexically can name another directory."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd or os.getcwd(), path)
    parts = path.split("/")
    if ".." in parts:
        last = len(parts) - parts[::-1].index("..")
        parts = [os.path.realpath("/".join(parts[:last]) or "/")] + parts[last:]
    return os.path.normpath("/".join(parts))


def lexical_script(cwd, script):
    """A runserver's script path joined with its cwd, normalised, or None when
    it holds `..` (see given_path: only the kernel can say where that leads)."""
    path = os.path.join(cwd, script)
    return None if ".." in path.split("/") else os.path.normpath(path)


def host_key(machine, hostname):
    """The directory name of one host's state: its hostname, readable, and a
    digest of machine id and hostname (cloned VMs share a machine id)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", hostname).strip("._") or "host"
    digest = hashlib.sha256(f"{machine}\0{hostname}".encode()).hexdigest()[:10]
    return f"{slug[:40]}-{digest}"


def other_host(meta, machine, hostname):
    """The host that recorded `meta` when it is not this one (machine id or
    hostname differ), else None. Metadata without them is this host's: only
    this host writes in its own directory."""
    recorded = (meta.get("machine_id"), meta.get("hostname"))
    if recorded[0] in (None, machine) and recorded[1] in (None, hostname):
        return None
    return str(recorded[1] or recorded[0])


DEFAULT_ADDR = "127.0.0.1"
ADDRESS = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")


def recorded_addr(meta):
    """The address `meta` records for the server, if it is one."""
    addr = meta.get("addr")
    return addr if isinstance(addr, str) and ADDRESS.match(addr) else None


def connect_host(addr):
    """Where to connect to reach a server bound to `addr`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr, addr)


def server_url(addr, port):
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/"


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


# ------------------------------------------------------------- /proc readers


def read_file(path, mode="r"):
    with open(path, mode) as handle:
        return handle.read()


def boot_id():
    return read_file("/proc/sys/kernel/random/boot_id").strip()


def machine_id():
    """systemd's machine id, or D-Bus's; "" where neither exists (the hostname
    still tells hosts apart)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            found = read_file(path).strip()
        except OSError:
            continue
        if found:
            return found
    return ""


def pid_max():
    return int(read_file("/proc/sys/kernel/pid_max"))


def proc_stat(pid):
    try:
        return parse_stat(read_file(f"/proc/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def snapshot(pid, token):
    """What is_candidate needs to know of one process, or None if it is gone or
    cannot be ours (another user's). Cheap checks first: this runs for every process."""
    uid = owner(pid)
    if uid != os.getuid():
        return None
    info = proc_stat(pid)
    if info is None:
        return None
    try:
        raw = read_file(f"/proc/{pid}/cmdline", "rb")
    except OSError:
        return None
    info["uid"] = uid
    info["pid"] = pid
    info["argv"] = [part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1]]
    info["cwd"] = None
    if b"runserver" in raw:  # only a runserver command line is matched by its cwd
        try:
            info["cwd"] = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            pass
    info["token"] = environ_token(pid) if token else None
    return info


def owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def environ_token(pid):
    try:
        raw = read_file(f"/proc/{pid}/environ", "rb")
    except OSError:
        return None
    for entry in raw.split(b"\0"):
        if entry.startswith(b"FABSERVE_TOKEN="):
            return entry.split(b"=", 1)[1].decode("ascii", "replace")
    return None


# The namespaces that make another host: its PIDs and its ports. Not the mount
# namespace: pam_namespace gives every SSH session one of its own (and systemd's
# PrivateTmp every service), so the server an earlier session started is in another.
NAMESPACES = ("pid", "net")


def namespaces(pid):
    """{"pid": "pid:[4026531836]", ...} of a process ("self" for the agent),
    or None when any of them cannot be read."""
    try:
        return {name: os.readlink(f"/proc/{pid}/ns/{name}") for name in NAMESPACES}
    except OSError:
        return None


def own_namespaces():
    found = namespaces("self")
    if found is None:
        raise AgentError("cannot read /proc/self/ns: without it a server cannot be told "
                         "from one in a container")
    return found


def executable(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def identify(proc):
    """Add what is_ours needs to a candidate's snapshot: read only for
    candidates, since the search takes a snapshot of every process."""
    proc["ns"] = namespaces(proc["pid"])
    proc["exe"] = executable(proc["pid"])
    return proc


def ancestors():
    """This process and every ancestor: never signalled, never candidates."""
    found = set()
    pid = os.getpid()
    while pid > 0 and pid not in found:
        found.add(pid)
        info = proc_stat(pid)
        pid = info["ppid"] if info else 0
    return found


def group_members(pgid):
    members = []
    for pid in all_pids():
        info = proc_stat(pid)
        if info and info["pgrp"] == pgid and info["state"] != "Z":
            members.append(pid)
    return sorted(members)


def tcp_tables():
    """The texts of /proc/net/tcp and tcp6 (those that can be read)."""
    texts = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            texts.append(read_file(name))
        except OSError:
            continue
    return texts


def listen_inodes(port, listening=None):
    """The inodes of sockets listening on `port`: from `listening` (see
    listeners) when a caller looks at many ports at one moment, else read now."""
    return (listeners(tcp_tables()) if listening is None else listening).get(port, set())


def listening_sockets(text):
    """(port, inode, hex local address) of each listening socket in /proc/net/tcp or tcp6 text."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10 and fields[3] == "0A":  # 0A: TCP_LISTEN
            hex_addr, hex_port = fields[1].rsplit(":", 1)
            yield int(hex_port, 16), fields[9], hex_addr


def listeners(texts):
    """Port -> inodes of the sockets listening on it, in /proc/net/tcp{,6} `texts`."""
    found = {}
    for text in texts:
        for port, inode, _ in listening_sockets(text):
            found.setdefault(port, set()).add(inode)
    return found


def pids_holding(inodes, pids):
    """Those of `pids` holding one of the socket `inodes` open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(os.path.join(fd_dir, name)) in wanted:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


def port_answers(addr, port):
    try:
        import socket
        socket.create_connection((connect_host(addr), port), timeout=1.0).close()
        return True
    except OSError:
        return False


def uptime_seconds(starttime):
    since_boot = float(read_file("/proc/uptime").split()[0])
    return max(0, int(since_boot - starttime / os.sysconf("SC_CLK_TCK")))


# -------------------------------------------------------------- state on disk


def check_private(path, what):
    """Refuse state that someone else could have planted or can rewrite."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise AgentError(f"refusing {what} {path}: it is a symlink")
    if info.st_uid != os.getuid():
        raise AgentError(f"refusing {what} {path}: owned by uid {info.st_uid}, not {os.getuid()}")
    if info.st_mode & 0o022:
        raise AgentError(f"refusing {what} {path}: writable by others (mode {info.st_mode & 0o777:o})")


def open_regular(path, what):
    """`path` open for reading in binary, only if it is a regular file: opened
    without following a symlink and without waiting (a FIFO planted there would
    block the reader for ever), then checked. AgentError otherwise; OSError when
    it cannot be opened (ENOENT: there is none)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a special file"
        raise AgentError(f"refusing {what} {path}: {kind}, not a regular file")
    return os.fdopen(fd, "rb")


def read_state(path, what):
    """The text of state file `path` (`what` says which in messages), once it
    passed check_private and open_regular."""
    check_private(path, what)
    try:
        with open_regular(path, what) as handle:
            return handle.read().decode("utf-8")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # swapped for a symlink since the check
            raise AgentError(f"refusing {what} {path}: it is a symlink")
        raise


def private_dir(path):
    try:
        os.makedirs(path, mode=0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise AgentError(f"cannot create state directory {path}: {exc.strerror}")
    check_private(path, "state directory")
    return path


def write_atomic(path, text):
    """Readers see the old file or the whole new one, never a torn write."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def remove(path):
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def levels(base, directory):
    """The state directories from `base` down to `directory`."""
    found = [directory]
    while found[-1] != base and os.path.dirname(found[-1]) != found[-1]:
        found.append(os.path.dirname(found[-1]))
    return found[::-1]


def lock_dir(base, directory):
    """The descriptor of an exclusive flock on `directory`/lock, once every state
    directory from `base` down to it is private (made so if new)."""
    for path in levels(base, directory):
        private_dir(path)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class Host(object):
    """This user's fabserve state on this host: where it lives, and which host it is."""

    def __init__(self, req):
        # Absolute, so results name it the same whatever the agent's working directory.
        self.base = os.path.abspath(os.path.expanduser(req.get("state_dir") or os.path.join(
            os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "fabserve")))
        # Per host: a home shared by several hosts (NFS) holds one directory each.
        self.machine_id, self.hostname = machine_id(), os.uname()[1]
        self.dir = os.path.join(self.base, "hosts", host_key(self.machine_id, self.hostname))

    def lock(self):
        """Serialise choosing a port (--port auto) across this user's agents on the host."""
        return lock_dir(self.base, self.dir)

    def instances(self):
        """(directory name, port) of every instance directory this host holds."""
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return []
        found = []
        for name in names:
            port = instance_port(name)
            if port is not None and os.path.isdir(os.path.join(self.dir, name)):
                found.append((name, port))
        return found


class Instance(object):
    """One server: a project directory and a port on this host, and its files."""

    def __init__(self, req):
        # Named by the path as given, so `current` stays the instance it names when
        # the symlink moves to another release; launched from the path it resolves to.
        self.given = given_path(req["project"])
        self.project = os.path.realpath(self.given)
        # No port (see resolve_instance, which names one first when it can): start's default.
        self.port = req["port"] if isinstance(req.get("port"), int) else DEFAULT_PORT
        # None: the address recorded at start (locate reads it), else DEFAULT_ADDR.
        self.addr_given = req.get("addr")
        self.addr = self.addr_given or DEFAULT_ADDR
        self.req = req
        self.manage_py = os.path.join(self.project, "manage.py")
        self.given_manage_py = os.path.join(self.given, "manage.py")
        host = Host(req)
        self.base, self.machine_id, self.hostname, self.host_dir = host.base, host.machine_id, host.hostname, host.dir
        self.dir = os.path.join(self.host_dir, instance_name(self.given, self.port))
        # Where versions before per-host state kept it; read, never written.
        self.legacy_dir = os.path.join(self.base, instance_name(self.project, self.port))
        self.pidfile = os.path.join(self.dir, "server.pid")
        self.meta_path = os.path.join(self.dir, "server.json")
        self.log = os.path.join(self.dir, "server.log")
        self.recorded = None  # the metadata locate read (this host's), for token, address and release
        self.serving = None  # the resolved project its trusted pidfile's server was launched from
        self.legacy = False  # the trusted pidfile is in legacy_dir
        self.foreign = None  # the host that recorded the pidfile, when it is another one
        self.expires_at = None  # when the located or launched server's TTL ends (epoch seconds)
        self.locked = False  # this call holds the instance's lock (start, stop, restart)
        self.ended = None  # the PIDs of a server this call found past its expiry and saw ended

    @property
    def url(self):
        return server_url(self.addr, self.port)

    def require_project(self):
        if not os.path.isdir(self.project):
            raise AgentError(f"project directory {self.project} does not exist")
        if not os.path.isfile(self.manage_py):
            raise AgentError(f"no manage.py in {self.project}")

    def lock(self):
        """Serialise start/stop/restart of this instance across agents."""
        return lock_dir(self.base, self.dir)

    def levels(self, directory):
        """The state directories from the base down to `directory`."""
        return levels(self.base, directory)

    def read_meta(self, directory=None):
        """(pid, meta) recorded by the last start in `directory` (default: this
        host's instance directory); pid None when there is no pidfile.
        ValueError when the files are unusable."""
        directory = directory or self.dir
        for path in self.levels(directory):
            if os.path.lexists(path):
                check_private(path, "state directory")
        pidfile, meta_path = os.path.join(directory, "server.pid"), os.path.join(directory, "server.json")
        if not os.path.lexists(pidfile):
            return None, None
        pid = parse_pid(read_state(pidfile, "pidfile"), pid_max())
        try:
            meta = json.loads(read_state(meta_path, "metadata"))
        except AgentError as exc:
            raise ValueError(str(exc))
        except (OSError, ValueError):
            raise ValueError(f"metadata {meta_path} is missing or unreadable")
        if not isinstance(meta, dict):
            raise ValueError(f"metadata {meta_path} is not a JSON object")
        if meta.get("pid") != pid:
            raise ValueError(f"pidfile names {pid} but metadata names {meta.get('pid')}")
        return pid, meta

    def forget(self):
        """Remove the pidfile and metadata, unless another host recorded them.
        Legacy files go only once their server was trusted (so it was this
        host's): an untrusted one may be another host's that cannot say so."""
        if self.foreign:
            return
        remove(self.pidfile)
        remove(self.meta_path)
        if self.legacy:
            remove(os.path.join(self.legacy_dir, "server.pid"))
            remove(os.path.join(self.legacy_dir, "server.json"))


# ------------------------------------------------------------------ locating


class Found(object):
    """What runs for an instance, as signal targets: a process group signalled
    as a whole, or single processes matched by the fallback search."""

    def __init__(self, pgid=None, pids=(), managed=True):
        self.pgid = pgid
        self.managed = managed
        # Start times pin single PIDs, so a PID reused mid-stop is never signalled.
        self.starts = {pid: (proc_stat(pid) or {}).get("starttime") for pid in pids}

    def members(self):
        """The server's processes: its group without fabserve's own watchdog."""
        return [pid for pid in self.everyone() if not is_helper(pid)]

    def everyone(self):
        """Every process signals to the server reach, the watchdog included."""
        if self.pgid is not None:
            return group_members(self.pgid)
        return sorted(pid for pid, start in self.starts.items() if alive(pid, start))


def alive(pid, starttime):
    info = proc_stat(pid)
    return bool(info) and info["state"] != "Z" and info["starttime"] == starttime


def verify(pid, meta):
    """None when the recorded leader is still the process we started, else why not."""
    if meta.get("boot_id") != boot_id():
        return "pidfile is from before the last reboot"
    info = proc_stat(pid)
    if info is None or info["state"] == "Z":
        return f"process {pid} is gone"
    if info["starttime"] != meta.get("starttime") or owner(pid) != os.getuid():
        return f"PID {pid} now belongs to another process"
    # Signals go to the group named by this PID: it must still lead one, and
    # never the group of the agent or of anything that called it.
    if info["pgrp"] != pid or pid in ancestors() or pid == os.getpgrp():
        return f"PID {pid} is not a server we started"
    found = namespaces(pid)
    if found is None:
        return f"the namespaces of PID {pid} cannot be read"
    if found != own_namespaces():
        return f"PID {pid} runs in another PID or network namespace"
    # fabserve always records a token, and the server inherits it: metadata
    # without one is not fabserve's, a process without it is not the server.
    recorded = meta.get("token")
    if not recorded or not isinstance(recorded, str):
        return f"the metadata records no token for PID {pid}"
    if environ_token(pid) != recorded:
        return f"PID {pid} now belongs to another process"
    return None


def locate(inst, procs=None):
    """The running server of `inst` (Found) or None, plus a note on stale state.

    The pidfile is this host's; without one, the one a version before per-host
    state wrote. Its metadata gives the token, the address and the release
    (on `inst`); one another host recorded is left to that host. `procs`: the
    runservers (see runservers) to search instead of /proc, for list.
    """
    note = ""
    token = None
    legacy = False
    try:
        pid, meta = inst.read_meta()
        if pid is None:
            pid, meta = inst.read_meta(inst.legacy_dir)
            legacy = pid is not None
    except ValueError as exc:
        pid, meta, note = None, None, f"ignored corrupt state: {exc}"
    if pid is not None:
        other = other_host(meta, inst.machine_id, inst.hostname)
        if other is not None:
            inst.foreign = other
            return search(inst, None, procs), f"the pidfile is of a server started on host {other}: left to that host"
        inst.recorded = meta
        token = meta.get("token")
        if not inst.addr_given and recorded_addr(meta):
            inst.addr = recorded_addr(meta)
        why = verify(pid, meta)
        if why is None:
            inst.legacy = legacy
            inst.serving = meta.get("project") if isinstance(meta.get("project"), str) else None
            trusted(inst, meta)
            # look_only: a caller that must change nothing (Ansible's check mode) sees it as it is.
            if inst.expires_at is not None and time.time() >= inst.expires_at and not inst.req.get("look_only"):
                return end_expired(inst, Found(pgid=pid), meta, procs)
            return Found(pgid=pid), ""
        note = f"stale pidfile{' of the previous state layout' if legacy else ''}: {why}"
    return search(inst, token, procs), note


def search(inst, token, procs=None):
    """Fallback without a trusted pidfile: the equivalent of `pgrep -u $USER -f
    'manage.py runserver'`, but on parsed argv, resolved paths, port, executable
    and namespaces, so decoys and containerised twins never match."""
    excluded = ancestors()
    uid = os.getuid()
    manage_py = os.path.realpath(inst.manage_py)
    own = own_namespaces()
    matched = []
    for proc in procs if procs is not None else (snapshot(pid, token) for pid in all_pids()):
        if (proc and is_candidate(proc, manage_py, inst.port, uid, token, excluded, inst.given_manage_py)
                and is_ours(identify(proc), token, own)):
            matched.append(proc)
    if not matched:
        return None
    pids = sorted(proc["pid"] for proc in matched)
    groups = {proc["pgrp"] for proc in matched}
    own_groups = {info["pgrp"] for info in (proc_stat(pid) for pid in excluded) if info}
    # A group is signalled whole only when every live member matched: a server
    # started by hand may share its group with a shell that must survive.
    if len(groups) == 1:
        pgid = groups.pop()
        if pgid > 1 and pgid not in own_groups and group_members(pgid) == pids:
            return Found(pgid=pgid, managed=False)
    return Found(pids=pids, managed=False)


# ----------------------------------------------------------------- signalling


def signal_found(found, sig, excluded):
    if found.pgid is not None:
        if found.pgid > 1 and found.pgid != os.getpgrp() and found.pgid not in excluded:
            try:
                os.killpg(found.pgid, sig)
            except OSError as exc:
                if exc.errno != errno.ESRCH:  # ESRCH: already gone
                    raise
        return
    for pid in found.members():
        if pid > 1 and pid not in excluded:
            try:
                os.kill(pid, sig)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise


def pauses():
    """Sleep lengths for a polling loop: FIRST_POLL, doubling up to POLL."""
    pause = FIRST_POLL
    while True:
        yield pause
        pause = min(pause * 2, POLL)


def await_exit(pids, pause):
    """Wait `pause` seconds, or less: where the kernel offers pidfds (Linux 5.3,
    Python 3.9) the wait ends as soon as one of `pids` exits, so a stop returns
    the moment the server is gone instead of at the next poll."""
    fds = []
    try:
        watchable = hasattr(os, "pidfd_open")
        for pid in pids if watchable else ():
            try:
                fds.append(os.pidfd_open(pid))
            except OSError as exc:
                if exc.errno == errno.ESRCH:  # already gone: look again at once
                    return
                watchable = False  # no pidfds here (ENOSYS, EPERM): sleep instead
                break
        if not (watchable and fds):
            time.sleep(pause)
            return
        import select
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(pause * 1000)
    finally:
        for fd in fds:
            os.close(fd)


def wait_gone(found, deadline):
    for pause in pauses():
        left = found.everyone()
        if not left or time.time() >= deadline:
            return left
        await_exit(left, min(pause, max(deadline - time.time(), 0)))


def terminate(found, grace):
    """TERM, then KILL after `grace` seconds. Returns (killed, survivors)."""
    excluded = ancestors()
    signal_found(found, signal.SIGTERM, excluded)
    if not wait_gone(found, time.time() + grace):
        return False, []
    signal_found(found, signal.SIGKILL, excluded)
    return True, wait_gone(found, time.time() + KILL_WAIT)


def terminate_all(found, grace):
    """terminate(), with survivors of KILL an error. Returns whether KILL was needed."""
    killed, survivors = terminate(found, grace)
    if survivors:
        raise AgentError(f"still running after SIGKILL: pids {' '.join(map(str, survivors))}", pids=survivors)
    return killed


def end_token_carriers(token, grace, ended=(), except_group=None):
    """Once a server's group is ended, end every process still carrying its token
    (forks that left the group) but members of `except_group`, as the group was
    ended, looking ESCAPE_ROUNDS times in all. Returns (their PIDs but those in
    `ended`, whether KILL was needed)."""
    escaped, killed = [], False
    for _ in range(ESCAPE_ROUNDS - 1):
        found = token_carriers(token, except_group)
        if found is None:
            return escaped, killed
        escaped += [pid for pid in found.members() if pid not in escaped and pid not in ended]
        killed = terminate_all(found, grace) or killed
    found = token_carriers(token, except_group)
    if found is None:
        return escaped, killed
    raise AgentError(f"processes carrying the server's token keep appearing: pids "
                     f"{' '.join(map(str, found.members()))}", pids=found.members())


def token_carriers(token, except_group=None):
    """Every process of this user in the agent's namespaces whose environment
    carries `token`, outside process group `except_group`, as a Found pinned by
    start time: what a server forked that left its group (setsid,
    start_new_session) still inherits."""
    if not token:
        return None
    excluded = ancestors()
    uid = os.getuid()
    own = own_namespaces()
    pids = []
    for pid in all_pids():
        if pid in excluded or owner(pid) != uid or environ_token(pid) != token:
            continue
        info = proc_stat(pid)
        if info and info["state"] != "Z" and info["pgrp"] != except_group and namespaces(pid) == own:
            pids.append(pid)
    return Found(pids=pids) if pids else None


def packed(addr):
    """`addr` as bytes (4 or 16), the form /proc/net/tcp's hex decodes to."""
    import socket
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def listen_address(hex_addr):
    """The bytes of a /proc/net/tcp{,6} local address: 32-bit words in host order."""
    raw = bytes.fromhex(hex_addr)
    return b"".join(raw[i:i + 4][::-1] if sys.byteorder == "little" else raw[i:i + 4]
                    for i in range(0, len(raw), 4))


def conflicts(listener, ours):
    """Whether a listener bound to bytes `listener` holds the port for `ours`:
    the same address, either one a wildcard, or ours as an IPv4-mapped one."""
    if listener.startswith(b"\0" * 10 + b"\xff\xff"):
        listener = listener[12:]
    return listener == ours or not listener.strip(b"\0") or not ours.strip(b"\0")


def parse_listeners(text, port):
    """(inode, local address bytes) of the sockets listening on `port` in
    /proc/net/tcp or tcp6 text."""
    return [(inode, listen_address(hex_addr)) for bound, inode, hex_addr in listening_sockets(text) if bound == port]


def held_in(texts, port, addr):
    """The inodes of listeners in /proc/net/tcp{,6} `texts` that keep `addr`:`port` from being bound."""
    ours = packed(addr)
    return {inode for text in texts for inode, bound in parse_listeners(text, port) if conflicts(bound, ours)}


def port_held(port, addr):
    """The inodes of listeners that keep `addr`:`port` from being bound, after
    waiting up to PORT_WAIT for a closing one to go."""
    deadline = time.time() + PORT_WAIT
    for pause in pauses():
        held = held_in(tcp_tables(), port, addr)
        if not held or time.time() >= deadline:
            return held
        time.sleep(pause)


def user_name(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, TypeError):
        return f"uid {uid}"


def socket_owners(inodes):
    """The uids /proc/net/tcp{,6} gives as owners of the listening sockets
    `inodes`: every user's sockets show there, whoever may see their processes."""
    uids = set()
    for text in tcp_tables():
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 10 and fields[3] == "0A" and fields[9] in inodes:
                uids.add(int(fields[7]))
    return sorted(uids)


def holders(inodes):
    """Who holds the listening sockets `inodes`, for a message: each process
    this user can see as `pid N (command line) of user U`, else the sockets'
    owners (another user's processes are not visible to a user's agent)."""
    named = []
    for pid in pids_holding(inodes, all_pids()):
        try:
            argv = read_file(f"/proc/{pid}/cmdline", "rb").split(b"\0")[:-1]
        except OSError:
            argv = []
        command = " ".join(part.decode("utf-8", "replace") for part in argv)[:120]
        named.append(f"pid {pid} ({command}) of user {user_name(owner(pid))}")
    if named:
        return named
    mine = os.getuid()
    owners = [f"another user's process (user {user_name(uid)})" if uid != mine
              else f"a process of user {user_name(uid)} not visible here" for uid in socket_owners(inodes)]
    return owners or ["another user's process"]


# ------------------------------------------------------------ bounded logs


LOG_KEEP = 5  # previous runs' logs a start keeps, when the request does not say
LOG_MAX = 50 << 20  # bytes above which a running server's log is cut, when the request does not say
ROTATED = re.compile(r"^server\.log\.([0-9]+)$")
# The first line of a log that was cut: what a follower needs to keep its place,
# and, after a cut that punched a hole (cut_log), where the lines go on.
CUT_MARK = re.compile(rb"^--- fabserve [^\n]* log cut to its newest part; ([0-9]+) bytes dropped in all"
                      rb"(?:; kept from byte ([0-9]+))? *\n")


def rotate_logs(directory, log, keep):
    """Before a start: server.log becomes server.log.1, .1 becomes .2 and so on
    up to `keep`; older ones are removed (all of them, and server.log, for 0)."""
    numbered = []
    for name in os.listdir(directory):
        found = ROTATED.match(name)
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
    cut_log(inst.log, inst.req.get("log_max") or LOG_MAX)


# --------------------------------------------------------------- time to live


WATCH_POLL = 1.0  # how often the watchdog looks whether its server still runs
EXPIRED = "expired"  # the word the log's last line holds once the TTL ended the server
# Processes fabserve put in a server's group that are not the server (the TTL
# watchdog): pid -> start time, filled where a pidfile is trusted or a server launched.
HELPERS = {}


def is_helper(pid):
    info = HELPERS.get(pid)
    return info is not None and (proc_stat(pid) or {}).get("starttime") == info


def note_helper(meta):
    """Remember the watchdog `meta` records, so results leave it out of `pids`."""
    found = meta.get("watchdog") if isinstance(meta, dict) else None
    if isinstance(found, dict) and isinstance(found.get("pid"), int):
        HELPERS[found["pid"]] = found.get("starttime")


def expiry_of(meta):
    value = meta.get("expires_at") if isinstance(meta, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def expiry_fields(expires_at):
    """The result's expires_at (ISO 8601 UTC) and expires_in (whole seconds left)."""
    if expires_at is None:
        return {"expires_at": None, "expires_in": None}
    return {"expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
            "expires_in": max(0, int(expires_at - time.time()))}


def group_others(group):
    """The live members of process group `group` other than this process."""
    me = os.getpid()
    return [pid for pid in group_members(group) if pid != me]


def log_line(text, fd=1):
    """Append one line to the log: `fd`, by default this process's stdout (O_APPEND)."""
    try:
        os.write(fd, f"--- fabserve {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())
    except OSError:
        pass


def expiry_line(expires_at, *notes):
    """The log line that says the TTL ended the server (see expired_at)."""
    return join(f"{EXPIRED}: the ttl ended at {expiry_fields(expires_at)['expires_at']}, so the server was stopped",
                *notes)


EXPIRY_LINE = re.compile(r"^--- fabserve [^\n]*? " + EXPIRED + r": the ttl ended at ([0-9T:Z-]+),")


def expired_at(inst):
    """When the TTL ended the instance's last server (ISO 8601 UTC), as its
    log's last line says; None when something else ended it, or nothing did."""
    try:
        fd = os.open(inst.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO planted there never blocks
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        last = read_tail(handle, 1) if stat.S_ISREG(os.fstat(fd).st_mode) else []
    found = EXPIRY_LINE.match(last[-1]) if last else None
    return found.group(1) if found else None


def release_state(directory, leader, token):
    """Remove the pidfile and metadata if they still name this server (its
    leader and token), holding the instance's lock as start and stop do."""
    try:
        lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pidfile, meta_path = os.path.join(directory, "server.pid"), os.path.join(directory, "server.json")
        try:
            pid = parse_pid(read_state(pidfile, "pidfile"), pid_max())
            meta = json.loads(read_state(meta_path, "metadata"))
        except (OSError, ValueError, AgentError):
            return
        if pid == leader and isinstance(meta, dict) and meta.get("token") == token and meta.get("pid") == leader:
            remove(pidfile)
            remove(meta_path)
    finally:
        os.close(lock)


def close_inherited():
    """Close every descriptor but stdin, stdout and stderr (/dev/null and the
    log): the instance lock, Popen's pipes and the SSH session's are not the
    watchdog's to hold."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:  # the listing's own descriptor, closed already
                pass


def watchdog(expires_at, grace, token, directory, group=None):
    """The TTL watchdog, in an interpreter of its own (see WATCHDOG). Launched
    with its server, it is forked into the server's own session and group
    (`group` None) before the server's exec; attached to a server already
    running (start --ttl), it runs in a session of its own and `group` is the
    server's. It sleeps until `expires_at`, then stops the group:
    TERM, KILL after `grace`; and, as a stop does, the processes that left the
    group carrying the server's token. A process group ID cannot be reused
    while one of its members lives: inside the group this process is one, so its
    group signals reach that group and nothing else; outside it, the group is
    signalled only while a member carries the token. It ends with the group on
    a stop (TERM's default action, or the group seen gone), and early, quietly,
    once the server ended on its own."""
    close_inherited()
    os.chdir("/")  # the project directory is the server's to keep busy, not ours
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    inside = group is None
    group = os.getpgrp() if inside else group
    leader = group  # the server's process, its group's leader since its setsid
    leader_start = (proc_stat(leader) or {}).get("starttime")
    while True:
        left = expires_at - time.time()
        if left <= 0:
            break
        time.sleep(min(left, WATCH_POLL))
        if not alive(leader, leader_start) and not group_others(group):
            return
    if not inside and not any(environ_token(pid) == token for pid in group_others(group)):
        return  # nothing of the server is left in it: the group is not ours to signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # our own group's TERM is for the server
    os.killpg(group, signal.SIGTERM)
    deadline = time.time() + grace
    for pause in pauses():
        if not group_others(group) or time.time() >= deadline:
            break
        time.sleep(pause)
    # As a stop does: what left the group (setsid) still carries the token. What
    # is still in it is ended below, by the group, with this process.
    try:
        escaped, escaped_killed = end_token_carriers(token, grace, except_group=group)
        problem = ""
    except AgentError as exc:
        escaped, escaped_killed, problem = [], False, str(exc)
    killed = bool(group_others(group))
    if not problem:
        release_state(directory, leader, token)
    log_line(expiry_line(expires_at,
                         f"with SIGKILL after {grace:g}s grace" if killed or escaped_killed else "",
                         f"pids {' '.join(map(str, escaped))} had left the server's process group" if escaped else "",
                         problem))
    if killed:
        os.killpg(group, signal.SIGKILL)  # inside the group, this process too: nothing is left to do


# The TTL watchdog's program. It runs in an interpreter of its own, not as a fork
# of the agent, so its command line (which every local user can read in
# /proc/PID/cmdline, and ps shows for as long as the TTL runs) is this short
# line: the agent's code and the watchdog's settings come on its stdin (see
# feed_watchdog), which then becomes /dev/null.
WATCHDOG = ("import marshal,sys;i=sys.stdin.buffer;g={'__name__':'fabserve_watchdog'};"
            "exec(marshal.load(i),g);g['watch'](i)  # fabserve-watchdog")
# This program's compiled code (the frame running this line is the module's own),
# which feed_watchdog hands to the watchdog's interpreter, the same one as ours.
CODE = sys._getframe().f_code


def exec_watchdog(python, feed_fd):
    """In a forked child: exec `python` running WATCHDOG with `feed_fd` as its
    stdin; never returns."""
    try:
        os.dup2(feed_fd, 0)
        os.execv(python, [python, "-I", "-S", "-c", WATCHDOG])
    finally:
        os._exit(127)


def forked_twice(child, report_fd):
    """Fork a process that runs `child()` (which must not return) and write its
    PID to `report_fd`. It is forked twice, its first parent gone at once: its
    parent is then init (or the nearest subreaper), which reaps it however it
    ends, not the server, which would keep it a zombie (runserver waits only
    for its own child)."""
    middle = os.fork()
    if middle == 0:
        try:
            pid = os.fork()
            if pid == 0:
                child()
            os.write(report_fd, f"{pid}\n".encode())
        finally:
            os._exit(0)
    os.waitpid(middle, 0)


def watchdog_forker(python, feed_fd, report_fd):
    """A preexec_fn for the server's Popen: after its setsid, fork the watchdog
    (so it joins the server's session and group, see forked_twice), which execs
    `python` running WATCHDOG with `feed_fd` as its stdin; the server's exec follows."""
    return lambda: forked_twice(lambda: exec_watchdog(python, feed_fd), report_fd)


def feed_watchdog(fd, settings):
    """Write the agent's code and then the watchdog's `settings` (one JSON line)
    to the watchdog's stdin, `fd`; False when it is gone (its exec failed)."""
    import marshal
    try:
        with os.fdopen(fd, "wb") as pipe:
            marshal.dump(CODE, pipe)
            pipe.write(json.dumps(settings).encode() + b"\n")
    except OSError:
        return False
    return True


def watch(stream):
    """The watchdog's interpreter's entry (see WATCHDOG): read its settings from
    `stream`, its stdin, put /dev/null there instead, and watch."""
    settings = json.loads(stream.readline().decode("utf-8"))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    watchdog(settings["expires_at"], settings["grace"], settings["token"], settings["directory"],
             settings.get("group"))


def attach_watchdog(inst, expires_at, group, token):
    """Start a watchdog for the running server whose group is `group`, in a
    session of its own (a group of another session cannot be joined), output to
    the log, forked twice so init reaps it and in an interpreter of its own, as
    start's. Returns {"pid", "starttime"}."""
    if not sys.executable:
        raise AgentError("cannot start the ttl watchdog: this interpreter cannot name its own path "
                         "(sys.executable); the ttl was not applied")
    try:
        log = os.open(inst.log, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise AgentError(f"cannot write the log {inst.log}: {exc.strerror}; the ttl was not applied")
    reader, writer = os.pipe()
    feed_in, feed_out = os.pipe()

    def child():
        os.setsid()
        os.dup2(log, 1)
        os.dup2(log, 2)
        exec_watchdog(sys.executable, feed_in)
    try:
        forked_twice(child, writer)
    finally:
        for fd in (writer, log, feed_in):
            os.close(fd)
    watch = launched_watchdog(reader)
    settings = {"expires_at": expires_at, "grace": inst.req["stop_timeout"], "token": token,
                "directory": inst.dir, "group": group}
    if not feed_watchdog(feed_out, settings):
        raise AgentError(f"cannot start the ttl watchdog: its interpreter {sys.executable} did not run; "
                         f"the ttl was not applied")
    return watch


def apply_ttl(inst, found):
    """Give the running server of `inst` the request's --ttl from now on: a new
    watchdog (attach_watchdog), recorded in its metadata, then the old one ended.
    Its duration is recorded too, for restart (see rerun). Returns what to say."""
    meta = inst.recorded
    if not found.managed or not isinstance(meta, dict) or inst.foreign:
        raise AgentError(f"the server on port {inst.port} was not started by fabserve, so --ttl cannot be applied "
                         f"to it: stop it, then start it with --ttl")
    ttl = inst.req["ttl"]
    expires_at = time.time() + ttl
    old = meta.get("watchdog") if isinstance(meta.get("watchdog"), dict) else {}
    watch = attach_watchdog(inst, expires_at, found.pgid, meta.get("token"))
    meta = dict(meta, expires_at=expires_at, watchdog=watch)
    try:
        write_atomic(inst.meta_path, json.dumps(meta))
    except OSError as exc:
        os.kill(watch["pid"], signal.SIGKILL)  # ours, just started: the server keeps what it had
        raise AgentError(f"cannot write state in {inst.dir}: {exc.strerror}; the ttl was not applied")
    inst.recorded, inst.expires_at = meta, expires_at
    if old.get("pid") and alive(old["pid"], old.get("starttime")):
        os.kill(old["pid"], signal.SIGKILL)
    record = instance_record(inst.dir)
    if record is not None and isinstance(record.get("started_with"), dict):
        record["started_with"]["ttl"] = ttl
        write_atomic(os.path.join(inst.dir, "instance.json"), json.dumps(record))
    return "the ttl now applies to it"


def launched_watchdog(reader):
    """{"pid", "starttime"} of the watchdog the server's Popen child forked and
    reported on `reader` (None without one)."""
    if reader is None:
        return None
    with os.fdopen(reader, "rb") as handle:
        text = handle.readline().strip()
    pid = int(text) if text.isdigit() else None
    return {"pid": pid, "starttime": (proc_stat(pid) or {}).get("starttime") if pid else None}


def trusted(inst, meta):
    """What a call learns once it trusts the pidfile of a running server: its
    expiry and watchdog; and it keeps the server's log under the cap."""
    inst.expires_at = expiry_of(meta)
    note_helper(meta)
    cap_log(inst)


def end_expired(inst, found, meta, procs):
    """(None, what happened) for a server found past its expiry, once it is
    ended as its watchdog ends it: every call that locates an instance does
    this, so the TTL holds when the watchdog is gone (killed, or never ran).
    A live watchdog gets the time its own stop takes first. A call without the
    instance's lock (status, logs, list) takes it, giving way to a start, stop
    or restart that holds it (which ends the server itself), and goes on only
    while the state still names this server."""
    grace = inst.req["stop_timeout"]
    watch = meta.get("watchdog") if isinstance(meta.get("watchdog"), dict) else {}
    pids = found.members()
    deadline = time.time() + grace + WATCH_POLL + KILL_WAIT
    for pause in pauses():
        # Locked, the watchdog waits for our lock to remove the state: wait for the server alone.
        working = alive(watch.get("pid"), watch.get("starttime")) if watch.get("pid") else False
        if not (working and (found.members() or not inst.locked)) or time.time() >= deadline:
            break
        time.sleep(pause)
    lock = None
    if not inst.locked:
        lock = try_lock(inst.dir)
        if lock is None:
            return found, ""
    try:
        if lock is not None:
            try:
                now_pid, now = inst.read_meta()
            except ValueError:
                now_pid, now = None, None
            if now_pid != found.pgid or (now or {}).get("token") != meta.get("token"):
                os.close(lock)  # ended or replaced meanwhile: look again
                lock = None
                return locate(inst, procs)
        left = found.members()
        escaped, notes = [], []
        if left:
            killed = terminate_all(found, grace)
            escaped, escaped_killed = end_token_carriers(meta.get("token"), grace, left)
            notes = [f"with SIGKILL after {grace:g}s grace" if killed or escaped_killed else "",
                     f"pids {' '.join(map(str, escaped))} had left the server's process group" if escaped else "",
                     f"its watchdog was gone, so {inst.req['action']} stopped pids "
                     f"{' '.join(map(str, left + escaped))}"]
            append_log(inst.log, expiry_line(inst.expires_at, *notes))
        inst.forget()
        inst.ended = sorted(set(pids + left + escaped))
        return None, join(f"{EXPIRED} at {expiry_fields(inst.expires_at)['expires_at']} (ttl)",
                          notes[-1] if notes else "")
    finally:
        if lock is not None:
            os.close(lock)


def try_lock(directory):
    """The descriptor of the instance lock in `directory` taken at once, or None
    while another call holds it (or it is missing)."""
    try:
        fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


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


def launch_expiry(inst):
    """When the server to launch expires: now plus --ttl (a restart's given, else
    the recorded one: see rerun), else never (None)."""
    ttl = inst.req.get("ttl")
    return time.time() + ttl if ttl else None


# -------------------------------------------------------------------- actions


# The fields of a result (docs/output.md's "JSON output" is checked against these).
# Always present, also for a host that never answered:
ALWAYS = (
    ("host", "the host as -H or the inventory named it (set by the client)"),
    ("action", "the verb that ran"),
    ("ok", "whether the verb did what it was asked"),
    ("changed", "whether it started or stopped a server, or gave a running one a TTL"),
    ("state", "running, stopped or failed"),
    ("pid", "the process group (or, found by the /proc search, the first process)"),
    ("pids", "every process of the server"),
    ("url", "where the server answers"),
    ("pidfile", "the pidfile on the target"),
    ("log", "the server's log on the target"),
    ("message", "what happened, in one line"),
    ("error", "why it failed; null unless it failed"),
)
# Present once the host answered:
ANSWERED = (
    ("project", "the project directory, resolved"),
    ("port", "the instance's port"),
    ("state_dir", "the instance's state directory"),
    ("managed", "true when found through its pidfile, false when found by the /proc search"),
    ("expires_at", "when the server's TTL stops it, ISO 8601 UTC; null without a TTL"),
    ("expires_in", "whole seconds until then; null without a TTL"),
)
# Added by some verbs: (field, verbs, description).
EXTRAS = (
    ("uptime", ("status",), "seconds since the server started"),
    ("python", ("start", "restart"), "the interpreter that runs manage.py"),
    ("log_tail", ("start", "restart"), "the log's last lines, when the start failed (a failed check: "
                                       "Django's unapplied-migrations line and \"...\" first, if the log has it)"),
    ("killed", ("stop",), "true when TERM was not enough and KILL was sent"),
    ("port_free", ("stop",), "whether the port is free afterwards"),
    ("stopped_pids", ("restart",), "the processes the restart stopped"),
    ("lines", ("logs",), "the log's last lines"),
    ("ambiguous", ("start", "stop", "status", "restart", "logs"),
     "the ports of the project's running instances, when no port was given and several run (exit 2)"),
    ("rows", ("list",), "the host's instances, each as status describes it"),
    ("http_status", CHECKED, "what GET of the check path answered; null: no check, or no answer"),
    ("check", ("status",), "the check path given, else the one the instance was last started with; null: none"),
    ("exit_status", ("manage",), "the command's exit status (-N: signal N); null: its timeout ended it"),
    ("output_tail", ("manage",), "the command's last lines of output"),
)


def result_of(**fields):
    """A result: every ALWAYS field (null, and pids empty, unless given) plus
    `fields`. The one builder of results, for the agent's and the client's."""
    result = dict.fromkeys(name for name, _ in ALWAYS)
    result["pids"] = []
    result.update(fields)
    return result


def describe(inst, found, **fields):
    """The result for instance `inst`, whose server is `found` (or None)."""
    # Callers that already scanned /proc for the group pass `pids`: one scan per call.
    pids = fields["pids"] if "pids" in fields else (found.members() if found else [])
    answered = {
        "pid": (found.pgid if found and found.pgid is not None else (pids[0] if pids else None)),
        "pids": pids,
        "url": inst.url,
        "pidfile": inst.pidfile,
        "log": inst.log,
        "state_dir": inst.dir,
        "project": inst.serving or inst.project,
        "port": inst.port,
        "managed": found.managed if found else None,
    }
    answered.update(expiry_fields(inst.expires_at if found is not None else None))
    answered.update(fields)
    return result_of(**answered)


# The verbs: name -> (function of an Instance returning a result, whether it
# holds the instance's lock). Filled by @verb.
VERBS = {}
# The verbs that act on the host rather than one instance: called with a Host and the request.
HOST_VERBS = set()


def verb(name, locks=False, host=False):
    """Register the decorated function as verb `name`; `locks`: it runs holding
    the instance's lock, so start, stop and restart never overlap; `host`: it
    names no instance."""
    def register(function):
        VERBS[name] = (function, locks)
        if host:
            HOST_VERBS.add(name)
        return function
    return register


def health(inst, pids, listening=None):
    """(state, message) of a located server's processes: running only when they
    hold the listening socket and a connection to it succeeds. `listening`: see listen_inodes."""
    if not pids:
        return STOPPED, "not running"
    if pids_holding(listen_inodes(inst.port, listening), pids) and port_answers(inst.addr, inst.port):
        return RUNNING, f"running on {inst.url}"
    listed = " ".join(map(str, pids))
    return FAILED, f"process alive (pids {listed}) but nothing of it answers on port {inst.port}"


@verb("status")
def do_status(inst):
    found, note = locate(inst)
    result = status_of(inst, found, note)
    # What tunnel's first request asks for: the path given, else the one the instance was started with.
    result["check"] = inst.req.get("check") or started_check(inst)
    return result


def status_of(inst, found, note, pids=None, listening=None):
    """What status answers for `inst`, whose server locate found (or None),
    and each row of list; `pids`: its processes when already known; `listening`:
    see listen_inodes."""
    if found is None:
        return describe(inst, None, ok=True, changed=False, state=STOPPED, message=not_running(inst, note))
    pids = found.members() if pids is None else pids
    state, message = health(inst, pids, listening)
    extra = {}
    state, message, extra["http_status"] = checked_health(inst, state, message)
    leader = proc_stat(found.pgid if found.pgid is not None else pids[0]) if pids else None
    if leader:
        extra["uptime"] = uptime_seconds(leader["starttime"])
    if not found.managed:
        message = join(message, "not started by fabserve")
    return describe(inst, found, ok=state == RUNNING, changed=False, state=state, pids=pids,
                    message=join(message, release_note(inst), note), **extra)


def not_running(inst, note):
    """What a verb says of an instance with no server: "expired at TIME (ttl)"
    when its TTL ended it (end_expired's note, else its log's last line)."""
    if note.startswith(EXPIRED):
        return note
    when = expired_at(inst)
    return join(f"{EXPIRED} at {when} (ttl)" if when else "not running", note)


def release_note(inst):
    """What to say when the project path now resolves to another release than
    the running server was launched from (a moved `current` symlink)."""
    if inst.serving and inst.serving != inst.project:
        return f"serving {inst.serving}; {inst.given} now resolves to {inst.project}: restart to switch"
    return ""


@verb("stop", locks=True)
def do_stop(inst):
    """Stop the server's group, then every process that still carries its
    token, then confirm nothing holds the port. The state goes once nothing
    of ours is left; a holder without the token is named, never signalled."""
    found, note = locate(inst)
    # Kept before the state is forgotten: a process that left the group (setsid,
    # start_new_session) is found by the token it inherited.
    token = (inst.recorded or {}).get("token")
    if found is None:
        inst.forget()
        return describe(inst, None, ok=True, changed=bool(inst.ended), state=STOPPED, pids=inst.ended or [],
                        message=not_running(inst, note))
    managed = found.managed
    grace = inst.req["stop_timeout"]
    pids = found.members()
    try:
        killed = terminate_all(found, grace)
    except AgentError as exc:
        # What did end is gone although a survivor stays: that changed the host.
        exc.extra["changed"] = any(pid not in exc.extra["pids"] for pid in pids)
        raise
    escaped, escaped_killed = end_token_carriers(token, grace, pids)
    killed = killed or escaped_killed
    inst.forget()
    stopped = pids + escaped
    grace_text = f" with SIGKILL after {grace:g}s grace" if killed else ""
    message = f"stopped pids {' '.join(map(str, stopped))}{grace_text}"
    if escaped:
        message = join(message, f"pids {' '.join(map(str, escaped))} had left the server's process group")
    held = port_held(inst.port, inst.addr)
    if held:
        raise AgentError(join(message, f"port {inst.port} is still held by {', '.join(holders(held))}"),
                         state=STOPPED, pids=stopped, killed=killed, port_free=False)
    return describe(inst, None, ok=True, changed=True, state=STOPPED, pids=stopped,
                    pid=stopped[0] if stopped else None, killed=killed, port_free=True, managed=managed,
                    message=join(message, note))


def resolve_python(inst):
    """The interpreter that runs manage.py: --python (relative to the project),
    else the project's .venv or venv, else python3 on PATH."""
    import shutil
    given = inst.req.get("python")
    if given:
        path = os.path.join(inst.project, os.path.expanduser(given)) if "/" in given else shutil.which(given)
        if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise AgentError(f"interpreter {given} not found or not executable")
        return path
    for candidate in (".venv/bin/python", "venv/bin/python"):
        path = os.path.join(inst.project, candidate)
        if os.access(path, os.X_OK):
            return path
    path = shutil.which("python3")
    if not path:
        raise AgentError(f"no interpreter: {inst.project} has no .venv or venv and python3 is not on PATH")
    return path


def manage_env(inst):
    """The environment manage.py runs in (the server, or manage's command): the
    agent's, unbuffered so output shows as it happens, the request's env over it."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(inst.req.get("env") or {})
    return env


def server_argv(inst, python):
    host = f"[{inst.addr}]" if ":" in inst.addr else inst.addr
    argv = [python, inst.manage_py, "runserver", f"{host}:{inst.port}"]
    if inst.req.get("noreload"):
        argv.append("--noreload")
    if inst.req.get("settings"):
        argv.append(f"--settings={inst.req['settings']}")
    return argv


def launch(inst, python):
    """Start the server detached: own session and group, SIGHUP ignored, stdin
    from /dev/null, output appended to a new log (the previous runs' rotated),
    with a TTL its watchdog in its group. Returns (Popen, log offset)."""
    import subprocess
    argv = server_argv(inst, python)
    token = os.urandom(16).hex()
    env = manage_env(inst)
    env["FABSERVE_TOKEN"] = token
    expires_at = launch_expiry(inst)
    try:
        rotate_logs(inst.dir, inst.log, inst.req.get("log_keep", LOG_KEEP))
        fd = os.open(inst.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        log = os.fdopen(fd, "ab")
        offset = log.seek(0, os.SEEK_END)
        log.write(f"--- fabserve {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
    except OSError as exc:
        raise AgentError(f"cannot write the log {inst.log}: {exc.strerror}; nothing was started")
    if expires_at is not None and not sys.executable:
        raise AgentError("cannot start the ttl watchdog: this interpreter cannot name its own path "
                         "(sys.executable); nothing was started")
    # The watchdog reports its PID on one pipe and reads the agent's code and its settings from the other.
    reader, writer = os.pipe() if expires_at is not None else (None, None)
    feed_in, feed_out = os.pipe() if expires_at is not None else (None, None)
    forker = None if writer is None else watchdog_forker(sys.executable, feed_in, writer)
    with log:
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited across exec
        try:
            proc = subprocess.Popen(argv, cwd=inst.project, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=forker)
        except subprocess.SubprocessError as exc:  # the watchdog's fork failed
            raise AgentError(f"cannot start the ttl watchdog: {exc}; nothing was started")
        finally:
            signal.signal(signal.SIGHUP, previous)
            for fd in (writer, feed_in):
                if fd is not None:
                    os.close(fd)
    watch = launched_watchdog(reader)
    settings = {"expires_at": expires_at, "grace": inst.req["stop_timeout"], "token": token,
                "directory": inst.dir}
    if feed_out is not None and not feed_watchdog(feed_out, settings):
        terminate(Found(pgid=proc.pid), 0)
        proc.poll()
        raise AgentError(f"cannot start the ttl watchdog: its interpreter {sys.executable} did not run; "
                         f"nothing was started")
    info = proc_stat(proc.pid)
    # The project as given names the instance; as resolved, the release it runs.
    meta = {"pid": proc.pid, "starttime": info["starttime"] if info else None, "boot_id": boot_id(),
            "machine_id": inst.machine_id, "hostname": inst.hostname,
            "token": token, "argv": argv, "project": inst.project, "project_given": inst.given,
            "port": inst.port, "addr": inst.addr, "started": time.time()}
    if expires_at is not None:
        meta.update(expires_at=expires_at, watchdog=watch)
        note_helper(meta)
    inst.expires_at = expires_at
    inst.serving = inst.project
    try:
        # Metadata first: a pidfile never names a process without its identity.
        write_atomic(inst.meta_path, json.dumps(meta))
        write_atomic(inst.pidfile, f"{proc.pid}\n")
    except OSError as exc:
        # A server nobody can find again must not outlive this call.
        terminate(Found(pgid=proc.pid), 0)
        proc.poll()
        inst.forget()
        raise AgentError(f"cannot write state in {inst.dir}: {exc.strerror}; the server was stopped again")
    return proc, offset


def log_tail(inst, offset=0, lines=TAIL_LINES):
    try:
        with open_regular(inst.log, "log") as handle:
            return read_tail(handle, lines, max(offset, hole_end(handle.fileno())))
    except (OSError, AgentError):
        return []


class PortTaken(AgentError):
    """Another program holds the port, found before launching or once the server
    could not bind it: a start on a chosen port tries another (see handle)."""


def taken_by(inst, texts, pids=()):
    """Who keeps the instance's port from being bound for its address (see
    conflicts), by the /proc/net/tcp{,6} `texts`, when none of `pids` holds a
    listener on it; else None."""
    held = held_in(texts, inst.port, inst.addr)
    if not held or pids_holding(held, pids):
        return None
    return ", ".join(holders(held))


def fallback_note(inst, python):
    """The hint for a failed start whose interpreter was python3 from PATH, the
    project having no venv of its own (the usual cause: the venv lives elsewhere)."""
    if inst.req.get("python") or python.startswith(os.path.join(inst.project, "")):
        return ""
    return f"no .venv/ or venv/ in {inst.project}, used python3; pass --python"


@verb("start", locks=True)
def do_start(inst):
    inst.require_project()
    python = resolve_python(inst)
    found, note = locate(inst)
    if found is not None:
        pids = found.members()
        state, message = health(inst, pids)
        state, message, http = checked_health(inst, state, message)
        if state == RUNNING:
            message = join(f"already running on {inst.url}", check_note(inst, http))
            if not found.managed:
                message = join(message, "not started by fabserve")
        else:
            message = join("already started but " + message, "use restart")
        # A --ttl is never dropped: a leftover server a CI job's start finds gets it too.
        applied = apply_ttl(inst, found) if inst.req.get("ttl") else ""
        return describe(inst, found, ok=state == RUNNING, changed=bool(applied), state=state, pids=pids,
                        http_status=http, message=join(message, applied, release_note(inst)))
    if inst.foreign:
        raise AgentError(f"{inst.pidfile} records a server started on host {inst.foreign}: "
                         f"it is that host's, so it is not replaced; nothing was started")
    inst.forget()
    # Launched, a server on a held port may wait out the timeout (daphne keeps running).
    taken = taken_by(inst, tcp_tables())
    if taken:
        raise PortTaken(f"port {inst.port} on {inst.addr} is already in use by {taken}; nothing was started")
    remember(inst)
    proc, offset = launch(inst, python)
    found = Found(pgid=proc.pid)
    deadline = time.time() + inst.req["start_timeout"]
    http = None
    for pause in pauses():
        code = proc.poll()
        pids = found.members()
        texts = tcp_tables()  # one read a poll: with many sockets, a read takes milliseconds
        # Another user's server may bind the port first: their listeners are seen only then.
        taken = taken_by(inst, texts, pids)
        if taken:
            why = f"port {inst.port} on {inst.addr} was taken by {taken} before the server could bind it"
            break
        if code is not None:
            why = f"server exited with status {code}"
            break
        if pids_holding(listen_inodes(inst.port, listeners(texts)), pids) and port_answers(inst.addr, inst.port):
            http, why = wait_http(inst, proc, deadline)
            if why is None:
                return describe(inst, found, ok=True, changed=True, state=RUNNING, python=python, pids=pids,
                                http_status=http, message=join(f"started on {inst.url}", check_note(inst, http), note))
            break
        if time.time() >= deadline:
            why = f"nothing answered on port {inst.port} within {inst.req['start_timeout']}s"
            break
        time.sleep(pause)
    terminate(found, min(inst.req["stop_timeout"], 5))
    proc.poll()
    inst.forget()
    tail = log_tail(inst, offset)
    if taken:
        raise PortTaken(why, log_tail=tail, http_status=http)
    unapplied = unapplied_migrations(inst.log, offset) if http and http >= 500 else None
    if unapplied:
        why = join(why, f"the log says: {unapplied}", "run `manage migrate` to apply them")
        if unapplied not in tail:  # said at start-up, long before the tracebacks of the tail
            tail = [unapplied, "..."] + tail
    # The client says which action failed: the reason alone.
    raise AgentError(join(why, fallback_note(inst, python)), log_tail=tail, http_status=http)


# Django's runserver says this at start-up when the database lacks migrations: the
# usual reason a fresh project answers 500 (ANSI colours, if forced on, are dropped).
UNAPPLIED = re.compile(rb"You have [0-9]+ unapplied migration\(s\)\.[^\n]*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unapplied_migrations(log, offset):
    """Django's unapplied-migrations line in the log's first BLOCKs from `offset` (this
    run's start, where runserver prints it), or None."""
    try:
        with open_regular(log, "log") as handle:
            handle.seek(offset)
            found = UNAPPLIED.search(handle.read(4 * BLOCK))
    except (OSError, AgentError):
        return None
    return ANSI.sub("", found.group(0).decode("utf-8", "replace")).strip() if found else None


@verb("restart", locks=True)
def do_restart(inst):
    inst.require_project()
    rerun(inst)
    resolve_python(inst)  # fail before stopping anything if start cannot work
    stopped = do_stop(inst)
    try:
        started = do_start(inst)
    except AgentError as exc:
        # The old server is gone although no new one runs: that changed the host.
        exc.extra.update(changed=stopped["changed"], stopped_pids=stopped["pids"])
        raise
    started["changed"] = True
    if (started.get("message") or "").startswith("started "):  # the same server again: say so
        started["message"] = "re" + started["message"]
    started["stopped_pids"] = stopped["pids"]
    return started


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


@verb("logs")
def do_logs(inst):
    """The log's last lines: in the result, or with `stream` (human output)
    written to stdout as they are read, before the result; with `follow`, then
    everything appended until the caller goes away, and no result."""
    lines = inst.req.get("lines", 50)
    out = sys.stdout.buffer
    found, _ = locate(inst)  # first: a running server's log is cut to the cap before it is read
    log = f"{inst.log}.1" if inst.req.get("previous") else inst.log
    with open_log(inst, log) as handle:
        hole = hole_end(handle.fileno())
        offset, end, count = tail_span(handle, lines, hole)
        front = b""
        if hole and offset == hole and count < lines:  # back to a punched cut: its marker first, as after any cut
            front, count = os.pread(handle.fileno(), PUNCHED_MARK, 0).rstrip(b" \n") + b"\n", count + 1
        try:
            if inst.req.get("follow"):
                copy_out(handle, offset, end, out, front)
                follow(handle, out)
                return None
            if inst.req.get("stream"):
                copy_out(handle, offset, end, out, front)
                extra = {}
            else:
                extra = {"lines": tail_text(front + b"".join(kept_bytes(handle, offset, end)), lines)}
        except (BrokenPipeError, KeyboardInterrupt):  # the caller went away
            return None
    return describe(inst, found, ok=True, changed=False,
                    state=RUNNING if found and found.members() else STOPPED,
                    message=f"{count} lines of {log}", **extra)


class Caller(object):
    """The client reading our stdout, for a verb that runs until it goes away
    (manage, logs --follow). Gone once our parent changes (the SSH session or
    shell that ran us is gone), once nothing reads stdout any more (dash, fish
    and tcsh stay our parent after the session ends; an SSH channel closed by
    the client), or once SIGINT, SIGTERM or SIGHUP came: a terminal's Ctrl-C
    reaches a local agent too, and the client ends a local run with TERM. While
    it is watched (a with block), those signals only mark it gone, so the agent
    ends what it runs before it exits instead of dying and leaving it behind."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, out):
        import select
        self.parent = os.getppid()
        self.signalled = False
        self.reader = select.poll()
        # No events asked for: poll then reports only POLLERR or POLLHUP, the reader gone.
        self.reader.register(out.fileno(), 0)
        self.previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self.mark)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def mark(self, signum, frame):
        self.signalled = True

    def gone(self, wait=0.0):
        """Whether the caller went away, waiting up to `wait` seconds for its reader to go."""
        if self.signalled or os.getppid() != self.parent:
            return True
        return bool(self.reader.poll(wait * 1000)) or self.signalled


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


# ------------------------------------------------------ many instances per host


AUTO = "auto"  # the port that says: choose a free one from the request's port_range
DEFAULT_PORT = 8000  # start's port when none is given anywhere
DEFAULT_PORT_RANGE = "8000-8999"
PORT_RANGE = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")
STARTS = ("start", "restart")  # the verbs that may start a server on a chosen port
# How many chosen ports a start tries: another user's agent may choose the same one
# (the choice is locked per user), and their server is seen only once it listens.
PORT_TRIES = 5


def port_range(text):
    """(low, high) of a port range written `LOW-HIGH`, else ValueError saying
    what it must be (the client names the value and where it was given)."""
    match = PORT_RANGE.match(text.strip()) if isinstance(text, str) else None
    low, high = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= low <= high <= 65535:
        raise ValueError("must be LOW-HIGH, two ports from 1 to 65535 with LOW at most HIGH")
    return low, high


def free_ports(low, high, taken, tcp_texts, addr):
    """The ports from low to high that are not in `taken` and that no listener
    in the /proc/net/tcp{,6} texts holds for `addr` (the same address, a
    wildcard, or an IPv4-mapped one: see conflicts), in order."""
    ours = packed(addr)
    held = {port for text in tcp_texts for port, _, hex_addr in listening_sockets(text)
            if low <= port <= high and conflicts(listen_address(hex_addr), ours)}
    return [port for port in range(low, high + 1) if port not in taken and port not in held]


def choose_port(low, high, taken, tcp_texts, addr):
    """The first of free_ports; None when there is none."""
    ports = free_ports(low, high, taken, tcp_texts, addr)
    return ports[0] if ports else None


class Ambiguous(AgentError):
    """No port was given and the project has several instances: a usage error, exit 2."""

    def __init__(self, project, ports):
        listed = ", ".join(str(port) for port in ports)
        AgentError.__init__(self, f"{project} has {len(ports)} instances on this host, on ports {listed}: "
                                  f"name one with --port", ambiguous=list(ports))


def lock_held(path):
    """Whether another agent holds the lock file `path` (starting or stopping that instance)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock, if this probe took it
    return False


def runservers(groups=None):
    """Every runserver of this user in the agent's namespaces, each a snapshot
    (see snapshot) with its token, `script` and `port`: one pass over /proc,
    which also fills `groups` (process group -> this user's live processes in it).
    Decoys (an editor, `tail -f`, `sh -c` naming runserver) are left out by
    runserver_args, containerised twins and `exec -a python` fakes by is_ours."""
    excluded, own = ancestors(), own_namespaces()
    found = []
    for pid in all_pids():
        proc = snapshot(pid, None)
        if proc is not None and groups is not None and proc["state"] != "Z":
            groups.setdefault(proc["pgrp"], []).append(pid)
        if proc is None or pid in excluded or proc["state"] == "Z" or proc["cwd"] is None:
            continue
        args = runserver_args(proc["argv"])
        if args is not None and is_ours(identify(proc), None, own):
            proc["script"], proc["port"] = args
            proc["token"] = environ_token(pid)
            found.append(proc)
    return found


def last_written(inst):
    """When the instance's state was last written: its log, else its pidfile (0: neither)."""
    for path in (inst.log, inst.pidfile):
        try:
            return os.lstat(path).st_mtime
        except OSError:
            pass
    return 0


def project_instances(host, req, procs):
    """(live, recorded): the ports of the project's instances on this host.
    Live (sorted): a server runs (trusted pidfile, or found among `procs`), or
    an agent is starting or stopping it now. Recorded, the last written last:
    only state is left (a stale pidfile, a kept log)."""
    given = given_path(req["project"])
    live, recorded = set(), {}
    for name, port in host.instances():
        if name != instance_name(given, port):
            continue
        inst = Instance(dict(req, port=port))
        if lock_held(os.path.join(inst.dir, "lock")):
            live.add(port)
            continue
        try:
            pid, meta = inst.read_meta()
        except (ValueError, AgentError):
            pid = meta = None
        if pid is not None and other_host(meta, host.machine_id, host.hostname) is None and verify(pid, meta) is None:
            live.add(port)
        elif os.path.lexists(inst.pidfile) or os.path.lexists(inst.log):
            recorded[port] = last_written(inst)
    probe = Instance(dict(req, port=DEFAULT_PORT))
    manage_py, uid, excluded = os.path.realpath(probe.manage_py), os.getuid(), ancestors()
    for proc in procs:
        if is_candidate(proc, manage_py, proc["port"], uid, None, excluded, probe.given_manage_py):
            live.add(proc["port"])
    return sorted(live), sorted((port for port in recorded if port not in live), key=lambda port: recorded[port])


def taken_ports(host):
    """The ports no chosen port may be: those recorded by a pidfile in this
    host's state (stale ones too), and those an agent is starting or stopping."""
    taken = set()
    for name, port in host.instances():
        directory = os.path.join(host.dir, name)
        if os.path.lexists(os.path.join(directory, "server.pid")) or lock_held(os.path.join(directory, "lock")):
            taken.add(port)
    return taken


def claim_port(host, req, tried=()):
    """A free port of the request's range for a new instance (see choose_port),
    none of `tried` (found taken by this start). The caller holds the host's lock
    until it holds the new instance's own, which marks the port as taken for the
    next chooser (see taken_ports)."""
    low, high = port_range(req.get("port_range") or DEFAULT_PORT_RANGE)
    addr = req.get("addr") or DEFAULT_ADDR
    free = free_ports(low, high, taken_ports(host) | set(tried), tcp_tables(), addr)
    if not free:
        raise AgentError(f"no free port from {low} to {high} on {addr} (port_range): every one is listened "
                         f"on{', tried by this start' if tried else ''} or recorded by another instance; "
                         f"nothing was started")
    # Once a chosen port was taken at bind time, another user's agent (which scans the
    # same way) chose it too; the first free port again would likely be both users' next.
    if not tried:
        return free[0]
    import random
    return random.choice(free)


def resolve_instance(req, tried=()):
    """`req` with the port of the instance it names, and the host's lock when
    that port was just chosen (else None); a port is never chosen from `tried`.

    A port given (a number) names it. None (given nowhere) or `auto`: the
    project's one live instance on this host; several: Ambiguous (exit 2).
    None live: start and restart with `auto` choose a free port (see claim_port),
    under the host's lock so concurrent starts never choose the same one, and
    the project's check runs under it too; otherwise the project's recorded
    instance written last (its log: the last start, or a start that never came
    up), else DEFAULT_PORT, as before ports were optional. Only servers that run
    make a project ambiguous: with none, a CI job's stop without a port is
    "not running", exit 0, however many stopped instances it left.
    """
    port = req.get("port")
    if isinstance(port, int) or req["action"] == "manage":  # manage runs the same whichever runs (see ran_against)
        return req, None
    host = Host(req)
    choosing = port == AUTO and req["action"] in STARTS
    held = host.lock() if choosing else None
    try:
        live, recorded = project_instances(host, req, runservers())
        if len(live) > 1:
            raise Ambiguous(req["project"], live)
        if live:
            port = live[0]
        elif choosing:
            return dict(req, port=claim_port(host, req, tried)), held
        else:
            port = recorded[-1] if recorded else DEFAULT_PORT
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    if held is not None:
        os.close(held)
    return dict(req, port=port), None


# The request settings that make a server what it is, and their types: each
# start records them (instance.json, kept after stop), and a restart not given
# one reruns the recorded value. python is kept as given (None: the project's
# venv, found again in the release the project now resolves to); ttl as a
# duration, so a restarted server gets a whole lifetime again.
RERUN = (("python", str), ("settings", str), ("env", dict), ("noreload", bool), ("addr", str), ("check", str),
         ("ttl", int))


def remember(inst):
    """Record which project and port the instance directory is for, and what
    it is started with (RERUN), kept after stop with its log, so list can name
    the project of a stopped instance and restart can rerun it."""
    started = {name: inst.req.get(name) for name, _ in RERUN}
    started["addr"] = inst.addr  # as launched: given, recorded by the last start, or the default
    write_atomic(os.path.join(inst.dir, "instance.json"),
                 json.dumps({"project": inst.given, "port": inst.port, "started_with": started}))


def instance_record(directory):
    """What remember wrote in `directory` (a dict), or None when it is missing,
    unreadable or not this user's private file."""
    path = os.path.join(directory, "instance.json")
    try:
        record = json.loads(read_state(path, "instance record"))
    except (OSError, ValueError, AgentError):
        return None
    return record if isinstance(record, dict) else None


def recorded_project(directory, meta):
    """The project path as given that an instance directory is for (see
    remember; else its metadata's), or None when neither says."""
    record = instance_record(directory)
    project = record.get("project") if record is not None else (meta or {}).get("project_given")
    return project if isinstance(project, str) else None


def started_check(inst):
    """The check path the instance was last started with (see remember), or None."""
    started = (instance_record(inst.dir) or {}).get("started_with")
    check = started.get("check") if isinstance(started, dict) else None
    return check if isinstance(check, str) else None


def rerun(inst):
    """Give the request the settings of RERUN it lacks (None, empty, off) from
    the instance's last start, so a restart reruns what was started."""
    started = (instance_record(inst.dir) or {}).get("started_with")
    if not isinstance(started, dict):
        return
    req = dict(inst.req)
    for name, kind in RERUN:
        value = started.get(name)
        if not req.get(name) and value and isinstance(value, kind):
            req[name] = value
    inst.req = req
    if not inst.addr_given and req.get("addr"):
        inst.addr_given = inst.addr = req["addr"]


def runserver_addr(argv):
    """The address a runserver's addrport argument names, else Django's 127.0.0.1."""
    for arg in argv[argv.index("runserver") + 1:]:
        if not arg.startswith("-") and ":" in arg:
            host = arg.rsplit(":", 1)[0].strip("[]")
            if host == "0":  # Django's shorthand for 0.0.0.0
                return "0.0.0.0"
            if ADDRESS.match(host):
                return host
    return DEFAULT_ADDR


@verb("list", host=True)
def do_list(host, req):
    """Every server of this user on the host, each row as status describes it:
    instances with state (running, stale; stopped with their log kept only
    with `all`), then runservers fabserve did not start (managed false).
    Never another user's."""
    groups = {}
    procs = runservers(groups)
    listening = listeners(tcp_tables())  # read once: on a busy host each read costs milliseconds
    rows, claimed, hidden = [], set(), 0
    for name, port in host.instances():
        directory = os.path.join(host.dir, name)
        try:
            meta = json.loads(read_state(os.path.join(directory, "server.json"), "metadata"))
        except (OSError, ValueError, AgentError):
            meta = None
        project = recorded_project(directory, meta if isinstance(meta, dict) else None)
        if project is None or instance_name(project, port) != name:
            continue  # a lock alone (a stop of nothing), or files that do not name this directory
        inst = Instance(dict(req, project=project, port=port, addr=None))
        if not (os.path.lexists(inst.pidfile) or os.path.lexists(inst.log)):
            continue
        try:
            found, note = locate(inst, procs)
        except (AgentError, OSError) as exc:  # its state is refused (not private) or unreadable: say so in its row
            found, note = None, str(exc)
        pids = None
        if found is not None and found.pgid is not None:  # as Found.members, from the pass over /proc
            pids = sorted(pid for pid in groups.get(found.pgid, []) if not is_helper(pid))
        row = status_of(inst, found, note, pids, listening)
        # Stopped by stop, by its TTL or by a start that never came up: history,
        # which would otherwise stay for ever. A stale pidfile (a server that
        # died) is still shown: something ended it that nobody asked to; and
        # so is a server this list ended, past its expiry.
        if row["state"] == STOPPED and not os.path.lexists(inst.pidfile) and not req.get("all") and not inst.ended:
            hidden += 1
            continue
        claimed.update(row["pids"] + (inst.ended or []))
        rows.append(row)
    unmanaged = {}
    for proc in procs:
        if proc["pid"] in claimed:
            continue
        script = os.path.realpath(os.path.join(proc["cwd"], proc["script"]))
        unmanaged.setdefault((os.path.dirname(script), proc["port"]), []).append(proc)
    for (project, port), found_procs in sorted(unmanaged.items()):
        inst = Instance(dict(req, project=project, port=port, addr=runserver_addr(found_procs[0]["argv"])))
        pids = sorted(proc["pid"] for proc in found_procs)
        row = status_of(inst, Found(pids=pids, managed=False), "", pids, listening)
        row.update(pidfile=None, log=None, state_dir=None)  # fabserve keeps no state for it
        rows.append(row)
    for row in rows:
        row["action"] = "list"
    count = len(rows)
    message = f"{count} server{'s' if count != 1 else ''}" if count else "no servers"
    if hidden:
        message += f"; {hidden} stopped (list --all shows them)"
    return result_of(ok=True, changed=False, state=None, message=message, rows=rows)


# ------------------------------------------------------ HTTP checks, manage


def http_get(inst, timeout=5.0):
    """GET the check path: its HTTP status, or None. Host: the address, as DEBUG allows."""
    import http.client
    conn = http.client.HTTPConnection(connect_host(inst.addr), inst.port, timeout=timeout)
    try:
        conn.request("GET", inst.req["check"])
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def check_note(inst, status):
    path = inst.req.get("check")
    return path and f"GET {path} answered " + (f"HTTP {status}" if status else "nothing")


def checked_health(inst, state, message):
    """health's answer and http_status: failed at 500 or more, or no answer."""
    if state != RUNNING or not inst.req.get("check"):
        return state, message, None
    status = http_get(inst)
    if status and status < 500:
        return state, message, status
    return FAILED, f"{check_note(inst, status)} on {inst.url}", status


# How many answers of 500 or more in a row fail a start's check at once (about 3 s of
# them): a server that answers so is broken until someone changes it (a migration, a
# fix), and each such answer writes a traceback to the log.
CHECK_FAILS = 10


def wait_http(inst, proc, deadline):
    """(http_status, why start failed): GET until below 500 (why None), CHECK_FAILS
    answers of 500 or more in a row, exit or deadline. No answer breaks a run."""
    run = 0
    while inst.req.get("check"):
        status = http_get(inst, max(0.5, min(5.0, deadline - time.time())))
        if status and status < 500:
            return status, None
        run = run + 1 if status else 0
        if run >= CHECK_FAILS:
            return status, f"GET {inst.req['check']} still HTTP {status} after {run} requests; the server was stopped"
        if proc.poll() is not None or time.time() >= deadline:
            return status, f"{check_note(inst, status)} within {inst.req['start_timeout']:g}s; the server was stopped"
        time.sleep(0.25)  # not faster: each 500 writes a traceback to the log
    return None, None


def relay(proc, out, deadline, caller):
    """Copy the output to `out` (if any) until it ends: (its last bytes, why not:
    timeout, gone). `caller` (see Caller) says when the client went away, also
    while the command is silent."""
    import select
    fd, kept, last = proc.stdout.fileno(), b"", b"\n"
    while True:
        if deadline is not None and time.time() >= deadline:
            return kept, "timeout"
        if caller.gone():
            return kept, "gone"
        if not select.select([fd], [], [], 0.25)[0]:
            if proc.poll() is not None:  # what it left may hold the pipe
                break
            continue
        chunk = os.read(fd, BLOCK)
        if not chunk:
            break
        kept, last = (kept + chunk)[-BLOCK:], chunk[-1:]
        if out:
            try:
                out.write(chunk)
                out.flush()
            except OSError:
                return kept, "gone"
    if out and last != b"\n":
        out.write(b"\n")  # the result starts a line of its own
        out.flush()
    return kept, None


@verb("manage")
def do_manage(inst):
    """manage.py ARGS as start runs the server, stdin /dev/null, in a group ended
    with it, and then every process it started that left the group."""
    import subprocess
    inst.require_project()
    python, args, limit = resolve_python(inst), inst.req["args"], inst.req.get("manage_timeout")
    argv = [python, inst.manage_py, args[0]]
    if inst.req.get("settings"):  # here both Django's and the command's parser take it
        argv.append(f"--settings={inst.req['settings']}")
    env = manage_env(inst)
    # A token of its own, as a server's processes carry theirs: what leaves the
    # group (setsid, start_new_session) still carries it and is found by it.
    token = env["FABSERVE_TOKEN"] = os.urandom(16).hex()
    # Watched until the command's processes are ended: a signal meanwhile only says the caller left.
    with Caller(sys.stdout) as caller:
        proc = subprocess.Popen(argv + args[1:], cwd=inst.project, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        with proc.stdout:
            kept, why = relay(proc, inst.req.get("stream") and sys.stdout.buffer,
                              limit and time.time() + limit, caller)
        grace = min(inst.req["stop_timeout"], 5)
        terminate(Found(pgid=proc.pid), grace)
        code = proc.wait()
        escaped, _ = end_token_carriers(token, grace, except_group=proc.pid)
    if why == "gone":
        return None
    left = f"pids {' '.join(map(str, escaped))} had left its process group and were ended" if escaped else ""
    extra = {"exit_status": None if why else code, "output_tail": tail_text(kept, TAIL_LINES)}
    if why or code:
        ended = f"did not end within {limit:g}s; it was ended" if why else f"exited with status {code}"
        raise AgentError(join(f"manage.py {args[0]} {ended}", left), **extra)
    fields = dict(ok=True, changed=False, message=join(f"manage.py {args[0]} exited 0", left), **extra)
    against = ran_against(inst)
    if against is None:
        return result_of(state=None, project=inst.project, port=None, state_dir=None, managed=None, **fields)
    found, _ = locate(against)
    return describe(against, found, state=RUNNING if found and found.members() else STOPPED, **fields)


def ran_against(inst):
    """The instance a manage command ran beside: the one its port names, else
    the project's one running instance; None when none or several run."""
    if isinstance(inst.req.get("port"), int):
        return inst
    live, _ = project_instances(Host(inst.req), inst.req, runservers())
    return Instance(dict(inst.req, port=live[0])) if len(live) == 1 else None


def join(*parts):
    return "; ".join(part for part in parts if part)


CODES = {RUNNING: 0, STOPPED: 3}


def exit_code(action, result):
    """0 success or no-op, 1 failed, 2 no port given and several instances of
    the project, 3 status: not running (LSB)."""
    if result.get("ambiguous"):
        return 2
    if action == "status" and result.get("error") is None:
        return CODES.get(result["state"], 1)
    return 0 if result["ok"] else 1


def handle(req):
    action = req["action"]
    run, locks = VERBS[action]
    inst = None
    try:
        if action in HOST_VERBS:
            result = run(Host(req), req)
        else:
            tried = []
            while True:
                # The port named, found or chosen; `held`: the host's lock, while a chosen one is claimed.
                named, held = resolve_instance(req, tried)
                inst = Instance(named)
                try:
                    fd = inst.lock() if locks else None
                    inst.locked = fd is not None
                finally:
                    if held is not None:
                        os.close(held)
                try:
                    result = run(inst)
                    break
                except PortTaken as exc:
                    if held is None:
                        raise
                    tried.append(inst.port)
                    if len(tried) == PORT_TRIES:
                        raise PortTaken(join(str(exc), "ports tried: " + ", ".join(map(str, tried))), **exc.extra)
                finally:
                    if fd is not None:
                        os.close(fd)
        if result is None:
            return None
    except AgentError as exc:
        result = failure(inst, req, str(exc), exc.state, exc.extra)
    except OSError as exc:  # e.g. a state directory that turned read-only or full mid-way
        error = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        result = failure(inst, req, error, FAILED, {})
    if action in CHECKED:
        result.setdefault("http_status", None)
    result["action"] = action
    return result


def failure(inst, req, error, state, extra):
    """The result of a verb that failed: for its instance, or, before one was
    named (several instances of the project, a state directory refused), for the project.
    `extra` may say it changed something before it failed (a restart that stopped the old server)."""
    fields = dict(ok=False, changed=False, state=state, error=error, message=error)
    fields.update(extra)
    if inst is not None and isinstance(inst.req.get("port"), int):
        return describe(inst, None, **fields)
    project = os.path.realpath(given_path(req["project"])) if req.get("project") else None
    return result_of(project=project, port=None, state_dir=None, managed=None, **fields)


# Seconds an agent call may run past its request's own deadlines (run_limit)
# before it gives itself up: nothing it does takes that long unless something
# blocks it, and it must not outlive the client, which gives up later still
# (remote.SLACK seconds past them) and would otherwise leave it running.
GIVE_UP = 20


class GaveUp(BaseException):
    """Raised by SIGALRM once a call ran past its bound (see main). Not an
    AgentError: no handler of expected failures may take it for one and go on."""


def give_up(signum, frame):
    raise GaveUp()


def run_limit(req):
    """Seconds a call may take by its request's own deadlines; None for what may
    run as long as it likes (a follower, a manage command without --timeout).
    Its start's (or manage's) timeout, and what a stop may wait on top (a restart
    stops, then starts): for the group and each later round of what left it
    (ESCAPE_ROUNDS in all), TERM, the grace, KILL and KILL_WAIT; then PORT_WAIT;
    and a start that failed ends what it launched (grace at most 5 s, KILL_WAIT)."""
    if req.get("follow") or (req["action"] == "manage" and req.get("manage_timeout") is None):
        return None
    limit = req["manage_timeout"] if req["action"] == "manage" else req["start_timeout"]
    return limit + (ESCAPE_ROUNDS + 1) * (req["stop_timeout"] + KILL_WAIT) + PORT_WAIT


def read_request(stream):
    """The request: one line of JSON on stdin, where the client writes it. Never
    in argv, which every local user can read (/proc/PID/cmdline, ps) for as long
    as the process runs: its env may hold secrets."""
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise SystemExit("fabserve agent: no request on stdin")
    return json.loads(line.decode("utf-8"))


def main():
    req = read_request(sys.stdin.buffer)
    limit = run_limit(req)
    if limit is not None:
        bound = int(limit + GIVE_UP) + 1
        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(bound)
    try:
        result = handle(req)
    except GaveUp:
        result = failure(None, req, f"gave up after {bound}s: something on the host blocked this call", FAILED, {})
        if req["action"] in CHECKED:
            result["http_status"] = None
        result["action"] = req["action"]
    finally:
        signal.alarm(0)
    if result is None:
        return 0
    if req.get("follow") or req.get("stream"):
        # The lines before it each ended with a newline: the result is the last line.
        sys.stdout.write(f"{MARKER}{json.dumps(result)}\n")
        sys.stdout.flush()
        return exit_code(req["action"], result)
    sys.stdout.write(f"\n{MARKER}{json.dumps(result)}\n")
    sys.stdout.flush()
    return exit_code(req["action"], result)


if __name__ == "__main__":
    sys.exit(main())
