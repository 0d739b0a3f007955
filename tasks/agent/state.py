"""State on disk: this user's state directory on this host (Host), one
instance's files in it (Instance: pidfile, metadata, log, lock, the record of
how it was started), and the safe ways to read and write them: only private
directories, only regular files, atomic replacement, a lock per instance.
"""

import copy
import errno
import fcntl
import json
import os
import re
import stat

from .protocol import ADDRESS, AgentError, DEFAULT_ADDR, DEFAULT_PORT, WEB, server_url
from .procfs import machine_id, parse_pid, pid_max
from .identity import given_path

# The interpreter's own SHA-256 up to Python 3.11: hashlib loads OpenSSL's
# library first, a few milliseconds of every call.
try:
    from _sha256 import sha256
except ImportError:
    from hashlib import sha256


def instance_name(project, port):
    """A directory name unique per (project path, port), readable by humans."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(project)).strip("._") or "project"
    digest = sha256(f"{project}\0{port}".encode()).hexdigest()[:10]
    return f"{slug[:40]}-{port}-{digest}"


INSTANCE_DIR = re.compile(r"-([0-9]{1,5})-[0-9a-f]{10}$")


def instance_port(name):
    """The port in an instance directory's name (see instance_name), or None."""
    match = INSTANCE_DIR.search(name)
    port = int(match.group(1)) if match else 0
    return port if 1 <= port <= 65535 else None


def host_key(machine, hostname):
    """The directory name of one host's state: its hostname, readable, and a
    digest of machine id and hostname (cloned VMs share a machine id)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", hostname).strip("._") or "host"
    digest = sha256(f"{machine}\0{hostname}".encode()).hexdigest()[:10]
    return f"{slug[:40]}-{digest}"


def other_host(meta, machine, hostname):
    """The host that recorded `meta` when it is not this one (machine id or
    hostname differ), else None. Metadata without them is this host's: only
    this host writes in its own directory."""
    recorded = (meta.get("machine_id"), meta.get("hostname"))
    if recorded[0] in (None, machine) and recorded[1] in (None, hostname):
        return None
    return str(recorded[1] or recorded[0])


def recorded_addr(meta):
    """The address `meta` records for the server, if it is one."""
    addr = meta.get("addr")
    return addr if isinstance(addr, str) and ADDRESS.match(addr) else None


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


def check_levels(base, directory):
    """Refuse state below `base` unless each existing directory from it down to
    `directory` is private (see check_private)."""
    for path in levels(base, directory):
        if os.path.lexists(path):
            check_private(path, "state directory")


def lock_dir(base, directory):
    """The descriptor of an exclusive flock on `directory`/lock, once every state
    directory from `base` down to it is private (made so if new)."""
    for path in levels(base, directory):
        private_dir(path)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class Request(object):
    """A request as named fields, every one present (req.port, never a key
    that may be missing): what the client sent, and for a field it left out,
    its value in FIELDS."""

    # Each field a request may hold, and its value when the request leaves it out. The client
    # sends every request setting of its settings table, and logs' `stream`; Ansible's check mode
    # adds `look_only`; sync its manifest, archive and the tree's git branch and commit; up's start
    # `reloading` once sync changed files; a test may send fewer.
    FIELDS = {
        "action": None, "project": None, "port": None, "addr": None, "python": None, "settings": None,
        "env": None, "noreload": False, "check": None, "start_timeout": None, "stop_timeout": None,
        "ttl": None, "idle_ttl": None, "state_dir": None, "port_range": None, "log_keep": None, "log_max": None,
        "lines": 50, "follow": False, "previous": False, "stream": False, "all": False, "args": None,
        "manage_timeout": None, "look_only": False, "keep_files": False, "reloading": False, "manifest": None,
        "archive": None, "branch": None, "commit": None, "requirements": "requirements.txt", "setup_timeout": 900,
        "processes": None, "only": None, "env_file": None, "process": "web", "expose": False, "host_template": None,
        "basic_auth": None, "caddy_admin": None, "older_than": None, "keep_branches": None, "dry_run": False}
    __slots__ = tuple(FIELDS)

    def __init__(self, data):
        for name, default in self.FIELDS.items():
            setattr(self, name, data.get(name, default))

    def fields(self):
        """The request as a dict, every field present."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def but(self, **changes):
        """This request with `changes` (a derived one: another port, project or address)."""
        return Request(dict(self.fields(), **changes))


class Host(object):
    """This user's fabserve state on this host: where it lives, and which host it is."""

    def __init__(self, req):
        """`req`: the request, for its state_dir."""
        # Absolute, so results name it the same whatever the agent's working directory.
        self.base = os.path.abspath(os.path.expanduser(req.state_dir or os.path.join(
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

    def __init__(self, host, req):
        """`host`: this user's state on this host (Host); `req`: the request naming the project and port."""
        # Named by the path as given, so `current` stays the instance it names when
        # the symlink moves to another release; launched from the path it resolves to.
        self.given = given_path(req.project)
        self.project = os.path.realpath(self.given)
        # No port (see resolve_instance, which names one first when it can): start's default.
        self.port = req.port if isinstance(req.port, int) else DEFAULT_PORT
        # None: the address recorded at start (locate reads it), else DEFAULT_ADDR.
        self.addr_given = req.addr
        self.addr = self.addr_given or DEFAULT_ADDR
        self.req = req
        self.manage_py = os.path.join(self.project, "manage.py")
        self.given_manage_py = os.path.join(self.given, "manage.py")
        self.host = host
        self.base, self.machine_id, self.hostname, self.host_dir = host.base, host.machine_id, host.hostname, host.dir
        self.dir = os.path.join(self.host_dir, instance_name(self.given, self.port))
        # Where versions before per-host state kept it; read, never written.
        self.legacy_dir = os.path.join(self.base, instance_name(self.project, self.port))
        self.process = WEB  # which of the instance's processes this names (see companion)
        self.pidfile = os.path.join(self.dir, "server.pid")
        self.meta_path = os.path.join(self.dir, "server.json")
        self.log = os.path.join(self.dir, "server.log")
        self.recorded = None  # the metadata locate read (this host's), for token, address and release
        self.serving = None  # the resolved project its trusted pidfile's server was launched from
        self.legacy = False  # the trusted pidfile is in legacy_dir
        self.foreign = None  # the host that recorded the pidfile, when it is another one
        # When the located or launched server's TTL ends, and its idle TTL as things stand (epoch seconds).
        self.expires_at = self.idle_expires_at = None
        self.locked = False  # this call holds the instance's lock (start, stop, restart)
        self.ended = None  # the PIDs of a server this call found past its expiry and saw ended
        self.table = None  # the processes of its Procfile a start runs (procfile.Process), or None
        self.launched = None  # the server this call launched (a Found), while it may still be ended
        self.exposed = None  # what --expose publishes of the server to launch (see exposure.planned)

    @property
    def url(self):
        return server_url(self.addr, self.port)

    def companion(self, name):
        """This instance's process `name` other than web (a Procfile's): the same
        instance, directory and lock, with a pidfile, metadata and log of its own."""
        other = copy.copy(self)
        other.process = name
        other.pidfile, other.meta_path, other.log = companion_files(self.dir, name)
        other.legacy_dir = None  # companions are newer than the per-host layout
        other.recorded = other.serving = other.foreign = other.ended = other.launched = None
        other.expires_at = other.idle_expires_at = None
        return other

    def require_project(self):
        if not os.path.isdir(self.project):
            raise AgentError(f"project directory {self.project} does not exist")
        if not os.path.isfile(self.manage_py):
            raise AgentError(f"no manage.py in {self.project}")

    def lock(self):
        """Serialise start/stop/restart of this instance across agents."""
        return lock_dir(self.base, self.dir)

    def read_meta(self, directory=None):
        """(pid, meta) recorded by the last start in `directory` (default: this
        host's instance directory); pid None when there is no pidfile.
        ValueError when the files are unusable."""
        directory = directory or self.dir
        check_levels(self.base, directory)
        pidfile = os.path.join(directory, os.path.basename(self.pidfile))
        meta_path = os.path.join(directory, os.path.basename(self.meta_path))
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


COMPANION_PIDFILE = re.compile(r"^proc\.([A-Za-z0-9_-]+)\.pid$")


def companion_files(directory, name):
    """The pidfile, metadata and log of companion process `name` in instance `directory`."""
    return tuple(os.path.join(directory, f"proc.{name}.{ext}") for ext in ("pid", "json", "log"))


def companion_pidfiles(directory):
    """The names of the companion processes whose pidfile `directory` holds."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(match.group(1) for match in map(COMPANION_PIDFILE.match, names) if match)


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


def last_written(inst):
    """When the instance's state was last written: its log, else its pidfile (0: neither)."""
    for path in (inst.log, inst.pidfile):
        try:
            return os.lstat(path).st_mtime
        except OSError:
            pass
    return 0


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
