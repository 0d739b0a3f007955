"""Signalling what runs for an instance: the found set (a process group, or
single processes pinned by start time), TERM then KILL with waits that return
as soon as the processes are gone, and the processes that left the group but
carry the server's token. ESRCH means gone, never an error.
"""

import errno
import os
import signal
import time

from .protocol import AgentError, ESCAPE_ROUNDS, KILL_WAIT
from .procfs import (
    alive, all_pids, ancestors, environ_token, group_members, namespaces, own_namespaces, owner, proc_stat)


# Waits poll quickly at first, when the answer usually comes (Django exits on
# TERM within milliseconds), then back off to POLL so a long wait costs little CPU.
FIRST_POLL = 0.005
POLL = 0.05
# Watching pidfds, a wait ends when a watched process exits, so /proc is scanned
# again only then, or after this long: a member that left the group meanwhile
# (setpgid) holds the wait no longer than that.
WATCHED_POLL = 0.25


class Found(object):
    """What runs for an instance, as signal targets: a process group signalled
    as a whole, or single processes matched by the fallback search."""

    def __init__(self, pgid=None, pids=(), managed=True, helper=None):
        self.pgid = pgid
        self.managed = managed
        # Start times pin single PIDs, so a PID reused mid-stop is never signalled.
        self.starts = {pid: (proc_stat(pid) or {}).get("starttime") for pid in pids}
        # fabserve's own process in the server's group that is not the server (the
        # TTL watchdog), as its metadata records it: {"pid", "starttime"}.
        self.helper = helper if isinstance(helper, dict) and isinstance(helper.get("pid"), int) else None

    def is_helper(self, pid):
        """Whether `pid` is this server's watchdog (results leave it out of `pids`)."""
        return (self.helper is not None and pid == self.helper["pid"]
                and (proc_stat(pid) or {}).get("starttime") == self.helper.get("starttime"))

    def members(self):
        """The server's processes: its group without fabserve's own watchdog."""
        return [pid for pid in self.everyone() if not self.is_helper(pid)]

    def everyone(self):
        """Every process signals to the server reach, the watchdog included."""
        if self.pgid is not None:
            # No process is in the group at all: nothing to look for in /proc.
            return group_members(self.pgid) if group_exists(self.pgid) else []
        return sorted(pid for pid, start in self.starts.items() if alive(pid, start))


def group_exists(pgid):
    """Whether any process (a zombie too) is in process group `pgid`: signal 0
    checks it without a look at every process in /proc."""
    try:
        os.killpg(pgid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH  # EPERM: members of another user's
    return True


def signal_found(found, sig, excluded):
    """Send `sig` to the group of `found`, or to each of its processes, never to
    one in `excluded` (the agent and its callers)."""
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


def await_exit(pids, pause, watched=None):
    """Wait `pause` seconds, or less: where the kernel offers pidfds (Linux 5.3,
    Python 3.9) the wait ends as soon as one of `pids` exits, so a stop returns
    the moment the server is gone instead of at the next poll; and lasts
    `watched` seconds (if given) rather than `pause`, as nothing but an exit
    needs a look."""
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
        poller.poll((pause if watched is None else watched) * 1000)
    finally:
        for fd in fds:
            os.close(fd)


def wait_gone(found, deadline):
    """What is left of `found` once it is gone or `deadline` passed."""
    for pause in pauses():
        left = found.everyone()
        if not left or time.time() >= deadline:
            return left
        remaining = max(deadline - time.time(), 0)
        await_exit(left, min(pause, remaining), min(WATCHED_POLL, remaining))


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


def end_all(found, token, grace):
    """End a server (or a companion) as stop does: its found set TERM then KILL,
    then what left it still carrying `token`. Returns (the set's PIDs, those
    that had left it, whether KILL was needed). The AgentError of a survivor
    says whether anything ended before it (`changed`)."""
    pids = found.members()
    try:
        killed = terminate_all(found, grace)
    except AgentError as exc:
        exc.extra["changed"] = any(pid not in exc.extra["pids"] for pid in pids)
        raise
    escaped, escaped_killed = end_token_carriers(token, grace, pids)
    return pids, escaped, killed or escaped_killed


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


def group_others(group):
    """The live members of process group `group` other than this process."""
    me = os.getpid()
    return [pid for pid in group_members(group) if pid != me]
