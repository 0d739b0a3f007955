"""What /proc says about processes and this host: a process's stat fields,
owner, command line, environment token, namespaces and executable; this
process's ancestors; a group's members; the boot and machine ids.

Every reader returns None (or skips the process) when the process is gone or
not readable: a PID can vanish between two reads, and that is an answer, not
an error. Linux only.
"""

import os

from .protocol import AgentError


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
    """The live processes of process group `pgid`, sorted."""
    members = []
    for pid in all_pids():
        info = proc_stat(pid)
        if info and info["pgrp"] == pgid and info["state"] != "Z":
            members.append(pid)
    return sorted(members)


def uptime_seconds(starttime):
    since_boot = float(read_file("/proc/uptime").split()[0])
    return max(0, int(since_boot - starttime / os.sysconf("SC_CLK_TCK")))


def alive(pid, starttime):
    """Whether `pid` is still the process that started at `starttime` (a zombie is not)."""
    info = proc_stat(pid)
    return bool(info) and info["state"] != "Z" and info["starttime"] == starttime


def user_name(uid):
    """The login name of `uid`, for messages."""
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, TypeError):
        return f"uid {uid}"
