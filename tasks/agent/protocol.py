"""What the client and the agent share: the result line's marker, the named
states, the fields of a result and how one is built, the exit codes, the verb
groups, the default port and address, and the time bounds of a call.

The client imports this module alone of the package, so it depends on nothing
but the standard library's `re`, and on no other module of the agent.
"""

import re

MARKER = "@@fabserve@@"
# The states a result reports; the client shares these names.
RUNNING, STOPPED, FAILED = "running", "stopped", "failed"
EXPIRED = "expired"  # the word the log's last line holds once the TTL ended the server
# An instance of several processes (a Procfile) is degraded while one of them
# exited and another runs; a process that ended by itself is exited.
DEGRADED, EXITED = "degraded", "exited"
WEB = "web"  # the process that is the Django server

# The agent's verbs, by what they take and do: the one home of these groups (the
# client's settings name the verbs of each flag from them).
INSTANCE_VERBS = ("start", "stop", "status", "restart", "logs", "extend")  # they act on one instance: a project, a port
HOST_VERBS = ("list", "prune")  # they name no project: called with the Host and the request
PROJECT_VERBS = ("sync", "setup", "destroy")  # they act on a project directory as a whole: called with its Project
VERBS = INSTANCE_VERBS + HOST_VERBS + PROJECT_VERBS + ("manage",)
STARTS = ("start", "restart")  # they may start a server, on a chosen port too
CHECKED = ("start", "restart", "status")  # they take --check; their results carry http_status
# A port given nowhere means DEFAULT_PORT for these; for the others it travels as
# null and names the project's one instance on the host.
PORT_DEFAULTED = ("start",)
# The Ansible module's states, and the verb each one runs.
MODULE_STATES = {"started": "start", "stopped": "stop", "restarted": "restart", "status": "status"}


class AgentError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    def __init__(self, message, state=FAILED, **extra):
        Exception.__init__(self, message)
        self.state = state
        self.extra = extra


class Ambiguous(AgentError):
    """No port was given and the project has several instances: a usage error, exit 2."""

    def __init__(self, project, ports):
        listed = ", ".join(str(port) for port in ports)
        AgentError.__init__(self, f"{project} has {len(ports)} instances on this host, on ports {listed}: "
                                  f"name one with --port", ambiguous=list(ports))


def join(*parts):
    """The non-empty `parts` of a message, joined by semicolons."""
    return "; ".join(part for part in parts if part)


# The fields of a result (docs/output.md's "JSON output" is checked against these).
# Always present, also for a host that never answered:
ALWAYS = (
    ("host", "the host as -H or the inventory named it (set by the client)"),
    ("action", "the verb that ran"),
    ("ok", "whether the verb did what it was asked"),
    ("changed", "whether it started or stopped a server, or gave a running one a TTL (or extended it)"),
    ("state", "running, stopped or failed (degraded: a process of a Procfile exited while another runs); "
              "null for sync and setup, which start and stop nothing"),
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
    ("expires_at", "when the server's TTL or idle TTL stops it, whichever comes first, ISO 8601 UTC; "
                   "null without either"),
    ("expires_in", "whole seconds until then; null without either"),
    ("idle_expires_at", "when the idle TTL stops it unless a request comes first (its last request plus "
                        "--idle-ttl), ISO 8601 UTC; null without an idle TTL"),
    ("public_url", "where a reviewer opens the server through the host's Caddy (--expose); null otherwise"),
)
# Added by some verbs: (field, verbs, description).
EXTRAS = (
    ("uptime", ("status",), "seconds since the server started"),
    ("python", ("start", "restart", "setup"), "the interpreter that runs manage.py"),
    ("log_tail", ("start", "restart"), "the log's last lines, when the start failed (a failed check: "
                                       "Django's unapplied-migrations line and \"...\" first, if the log has it)"),
    ("killed", ("stop",), "true when TERM was not enough and KILL was sent"),
    ("port_free", ("stop",), "whether the port is free afterwards"),
    ("stopped_pids", ("restart",), "the processes the restart stopped"),
    ("lines", ("logs",), "the log's last lines"),
    ("ambiguous", ("start", "stop", "status", "restart", "logs"),
     "the ports of the project's running instances, when no port was given and several run (exit 2)"),
    ("rows", ("list", "prune"), "the host's instances, each as status describes it (prune: each instance pruned, "
                                "or with dry_run that would be, with project, port, state_dir, branch, state before, "
                                "pids stopped, removed, started_at and reasons)"),
    ("reasons", ("prune",), "in each row of prune: why it is pruned: expired, older than D, branch gone"),
    ("started_at", ("prune",), "in each row of prune: the instance's last start, ISO 8601 UTC; null: unknown"),
    ("dry_run", ("prune",), "true when prune only said what it would do: nothing was stopped or removed"),
    ("branch", ("list", "sync", "up"), "the git branch of the tree sync (last) sent to the project; null: none known"),
    ("commit", ("list", "sync", "up"), "the git commit of that tree; null: none known"),
    ("step", ("up",), "the step up ended at: sync, setup, migrate or start; when ok is false, the one that failed"),
    ("http_status", CHECKED, "what GET of the check path answered; null: no check, or no answer"),
    ("check", ("status",), "the check path given, else the one the instance was last started with; null: none"),
    ("exit_status", ("manage",), "the command's exit status (-N: signal N); null: its timeout ended it"),
    ("output_tail", ("manage", "setup"), "the command's last lines of output (setup: the failed install's)"),
    ("removed", ("destroy", "prune"), "whether the project directory was removed (only one fabserve's sync created; "
                                      "prune: in each row, once no other instance of the project is left)"),
    ("files_sent", ("sync",), "how many files and links were written on the host"),
    ("bytes_sent", ("sync",), "the size of the files written, in bytes (before compression)"),
    ("deleted", ("sync",), "how many files an earlier sync wrote were deleted, gone from the tree"),
    ("seconds", ("sync",), "how long the sync took, both calls, as the client measured it"),
    ("refused", ("sync",), "true when the tree would write outside the project directory: "
                           "nothing was written (exit 2)"),
    ("venv", ("setup",), "the virtualenv .venv links to, relative to the project; null with --python"),
    ("installer", ("setup",), "uv or pip: what installed the requirements (the last setup's, when unchanged)"),
    ("processes", ("start", "stop", "status", "restart", "list"),
     "with a Procfile or the processes setting: each process as name, command (null: fabserve's runserver), "
     "port (its $PORT), state (running, exited, stopped; web also failed), pid, pids, uptime, exit_status "
     "(-N: signal N; null: unknown), log, log_tail (an exited one's last lines)"),
)


def result_of(**fields):
    """A result: every ALWAYS field (null, and pids empty, unless given) plus
    `fields`. The one builder of results, for the agent's and the client's."""
    result = dict.fromkeys(name for name, _ in ALWAYS)
    result["pids"] = []
    result.update(fields)
    return result


CODES = {RUNNING: 0, STOPPED: 3}  # degraded, like failed, is 1


def exit_code(action, result):
    """0 success or no-op, 1 failed, 2 no port given and several instances of
    the project, or a tree sync refused, 3 status: not running (LSB)."""
    if result.get("ambiguous") or result.get("refused"):
        return 2
    if action == "status" and result.get("error") is None:
        return CODES.get(result["state"], 1)
    return 0 if result["ok"] else 1


AUTO = "auto"  # the port that says: choose a free one from the request's port_range
DEFAULT_PORT = 8000  # start's port when none is given anywhere
DEFAULT_PORT_RANGE = "8000-8999"
PORT_RANGE = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")


def port_range(text):
    """(low, high) of a port range written `LOW-HIGH`, else ValueError saying
    what it must be (the client names the value and where it was given)."""
    match = PORT_RANGE.match(text.strip()) if isinstance(text, str) else None
    low, high = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= low <= high <= 65535:
        raise ValueError("must be LOW-HIGH, two ports from 1 to 65535 with LOW at most HIGH")
    return low, high


DEFAULT_ADDR = "127.0.0.1"
ADDRESS = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")


def connect_host(addr):
    """Where to connect to reach a server bound to `addr`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr, addr)


def server_url(addr, port):
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/"


KILL_WAIT = 5.0  # how long a group may take to vanish after SIGKILL
SETUP_GRACE = 5.0  # how long setup's install has between TERM and KILL once its timeout passed
PORT_WAIT = 2.0  # how long a listener may linger after its process is gone
# How often stop looks again for token carriers after ending what it found: a
# fork that left the group may itself have forked meanwhile.
ESCAPE_ROUNDS = 3


# sync's archive (agent.shipping.unpack): per file, a struct of this format (its
# name's length, its content's length), then the name in UTF-8 and the content.
ARCHIVE_HEAD = ">IQ"
SYNC_LIMIT = 900  # seconds a sync call may take: hashing and writing a large tree, never a server's start


def run_limit(req):
    """Seconds a call may take by its request's own deadlines; None for what may
    run as long as it likes (a follower, a manage command without --timeout, a
    prune).
    Its start's (or manage's) timeout, and what a stop may wait on top (a restart
    stops, then starts): for the group and each later round of what left it
    (ESCAPE_ROUNDS in all), TERM, the grace, KILL and KILL_WAIT; then PORT_WAIT;
    and a start that failed ends what it launched (grace at most 5 s, KILL_WAIT).
    A sync has no deadline of its own: SYNC_LIMIT."""
    if req["action"] == "sync":
        return SYNC_LIMIT
    # prune stops as many instances as the host holds: a count only the host knows.
    unbounded_manage = req["action"] == "manage" and req.get("manage_timeout") is None
    if req.get("follow") or req["action"] == "prune" or unbounded_manage:
        return None
    if req["action"] == "setup":
        # Its one bound covers making the venv and installing; then its group and what
        # left it are ended (grace SETUP_GRACE, then KILL), and a failed venv removed.
        return req["setup_timeout"] + ESCAPE_ROUNDS * (SETUP_GRACE + KILL_WAIT)
    limit = req["manage_timeout"] if req["action"] == "manage" else req["start_timeout"]
    return limit + (ESCAPE_ROUNDS + 1) * (req["stop_timeout"] + KILL_WAIT) + PORT_WAIT
