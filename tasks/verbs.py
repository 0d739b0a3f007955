"""The fabserve tasks: one per verb, each a thin shell around one agent call,
with how its result reads for people next to it.

A task's flags, their help and which may repeat come from settings.SETTINGS:
its parameters must be exactly the flags the table gives its verb.
"""

import os
import shlex
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from fabric.main import program as fab_program
from invoke import Context, Task, task
from invoke.exceptions import Exit

from . import branches, config, entrypoints, listing, naming, outputs, remote, report, runners, trees, tunnels
from .agent.protocol import DEGRADED, FAILED, RUNNING
from .report import Formatter, pid_list, plain
from .settings import SETTING, UsageError, checked, flags_of, helps, positional, repeatable, request


class Verb(Task):  # type: ignore[misc]
    """A verb's task: its flags' short forms never take `-h` (fab's own --help), nor punctuation."""

    def arg_opts(self, name: str, default: str, taken_names: Set[str]) -> Dict[str, Any]:
        return super().arg_opts(name, default, taken_names | {"h", "_", "-"})


def verb(body: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None) -> Any:
    """@task for the verb named like `body`, with its flags' help from the settings table;
    @verb(name=...) for a verb whose name Python already uses (`list`)."""
    def build(body: Callable[..., Any]) -> Any:
        called = name or body.__name__
        return task(name=called, help=helps(called), iterable=repeatable(called),
                    positional=positional(called), klass=Verb)(body)
    return build(body) if body is not None else build


def host_values(c: Context, flags: Dict[str, Any]) -> Dict[str, Any]:
    """Flags over the host's inventory vars over the `fabserve` config section."""
    return config.host_values(c.config, getattr(c, "fabserve_settings", {}), flags)


def prepare(c: Context, action: str, flags: Dict[str, Any], env: Optional[List[str]] = None) -> Tuple[Dict[str, Any], str]:
    """The checked request for `action` and the agent's interpreter; bad input
    ends the task with exit 2 before anything connects."""
    values = host_values(c, flags)
    try:
        entrypoints.require_executor(c)
        if "project" in flags and values["project"] is None and not remote.is_remote(c):
            values["project"] = entrypoints.local_project(c.config)
        values["project"] = expanded_project(values)
        values["host_template"] = expanded_host_template(values)
        req = request(action, values, env)
        agent_python = checked(values, "agent_python")
    except UsageError as exc:
        raise Exit(f"{remote.host_label(c)}: {exc}", 2) from None
    return req, agent_python


def expanded_project(values: Dict[str, Any]) -> Any:
    """The project setting of merged `values`, `{branch}` and `{sha}` filled in from
    the tree --src names; UsageError when that tree cannot fill them."""
    project = values["project"]
    if not naming.templated(project):
        return project
    return naming.expand(project, lambda: source_facts(values), str(values["src"]))


def expanded_host_template(values: Dict[str, Any]) -> Any:
    """The host_template setting of merged `values`, `{branch}` and `{sha}` filled
    in as expanded_project fills them; `{port}` is the host's to fill (--port auto
    chooses it there)."""
    template = values.get("host_template")
    if not template:
        return template
    return naming.expand(template, lambda: source_facts(values), str(values["src"]), "--host-template", ("port",))


def source_facts(values: Dict[str, Any]) -> naming.Facts:
    """(branch, commit) of the tree --src names: the branch setting, when given,
    over git's current branch (a CI checkout is often a detached head)."""
    try:
        branch, commit = trees.git_facts(checked(values, "src").resolve())
    except trees.TreeError as exc:
        raise UsageError(str(exc)) from None
    return checked(values, "branch") or branch, commit


def operate(c: Context, action: str, flags: Dict[str, Any], env: Optional[List[str]] = None,
            **extra: Any) -> Dict[str, Any]:
    """Validate, run `action` on the host behind `c` (its request with `extra`), and return its result."""
    req, agent_python = prepare(c, action, flags, env)
    return called(c, dict(req, **extra), agent_python)


def called(c: Context, req: Dict[str, Any], agent_python: str) -> Dict[str, Any]:
    """The result of the prepared request `req` on the host behind `c`, a host it
    cannot reach included."""
    host = remote.host_label(c)
    try:
        result = remote.call(c, req, agent_python)
    except remote.HostError as exc:
        result = report.failure(host, req["action"], str(exc))
    result["host"] = host
    return result


def with_outputs(c: Context, result: Dict[str, Any], flags: Dict[str, Any]) -> Dict[str, Any]:
    """`result`, once its CI step outputs are written where --github-output or
    --ci-output say (see tasks/outputs.py)."""
    try:  # flags only: a config file saying where a job writes its outputs would be no job's
        given = {name: SETTING[name].check(flags.get(name) or SETTING[name].default)
                 for name in ("github_output", "ci_output")}
    except UsageError as exc:
        raise Exit(f"{remote.host_label(c)}: {exc}", 2) from None
    path = outputs.output_file(given["github_output"], given["ci_output"])
    if path is not None:
        try:
            outputs.write_outputs(path, result)
        except OSError as exc:
            raise Exit(f"{remote.host_label(c)}: cannot write the CI outputs to {path}: {exc.strerror}", 1) from None
    return result


def finish(c: Context, result: Dict[str, Any], flags: Dict[str, Any],
           formatter: Formatter = plain) -> Dict[str, Any]:
    shown = report.emit(result, config.setting(c.config, "json", flags), formatter)
    entrypoints.end_task(c, shown)
    return shown


#: fab's own flags that say how to connect or where the tasks are, repeated by
#: the stop hint (the --prompt-for-* ones are not: they would ask again).
HINT_FLAGS = ("ssh-config", "S", "identity", "i", "connect-timeout", "t", "config", "f",
              "search-root", "r", "collection", "c")


def stop_hint(c: Context, result: Dict[str, Any]) -> str:
    hosts = ["-H", remote.host_label(c)] if remote.is_remote(c) else []
    words = [program(), *connection_flags(sys.argv[1:]), *hosts, stop_task(sys.argv[1:], result["action"]),
             "--project", result.get("project") or "",
             "--port", str(result.get("port"))]
    return " ".join(shlex.quote(word) for word in words)


def connection_flags(argv: List[str]) -> List[str]:
    """The HINT_FLAGS among fab's own flags in `argv` (those before the first
    task name), each with its value, as separate words."""
    takes_value = {name for arg in fab_program.core_args() + fab_program.task_args() if arg.takes_value
                   for name in arg.names}
    kept: List[str] = []
    words = iter(argv)
    for word in words:
        if word == "--" or not word.startswith("-") or word == "-":
            break  # a task name (or the end of fab's flags): what follows is the tasks'
        if word.startswith("--"):
            name, given, value = word[2:].partition("=")
            flag = f"--{name}"
        else:  # -S FILE or -SFILE
            name, value = word[1:2], word[2:]
            given, flag = bool(value), f"-{name}"
        if name in takes_value and not given:
            value = next(words, "")
        if name in HINT_FLAGS:
            kept += [flag, value]
    return kept


def stop_task(argv: List[str], action: str) -> str:
    """`stop` as this run names it: `serve.stop` when the task was called as
    `serve.start`, the collection added to a fabfile of your own under `serve`."""
    for word in argv:
        collection, dot, name = word.rpartition(".")
        if dot and name == action and not word.startswith("-"):
            return f"{collection}.stop"
    return "stop"


def multiple(c: Context) -> bool:
    """True when this host is one of several running at once."""
    return bool(getattr(c, "fabserve_fanout", False))


def program() -> str:
    """How the user ran fab or fabserve (e.g. `.venv/bin/fab`), so the hint can be pasted as is."""
    invoked = sys.argv[0] if sys.argv else ""
    return invoked if os.path.basename(invoked) in ("fab", "fabserve") else "fab"


def expiry_note(result: Dict[str, Any]) -> str:
    """"; expires in 1h59m (TIME)" for a server with a TTL or an idle TTL (the
    earlier deadline), "; idle until TIME" with an idle TTL; else nothing."""
    left = result.get("expires_in")
    note = "" if left is None else f"; expires in {report.duration(left)} ({result['expires_at']})"
    idle = result.get("idle_expires_at")
    return note + (f"; idle until {idle} unless a request comes" if idle else "")


def started(c: Context) -> Formatter:
    """How start and restart read: a running server adds its pids, log and the stop command."""
    def show(result: Dict[str, Any]) -> str:
        text = plain(result)
        if result["state"] == RUNNING:
            text += (f" (pids {pid_list(result['pids'])}); log {result['log']}{expiry_note(result)}"
                     f"\n{result['host']}: stop it with: {stop_hint(c, result)}")
        return text
    return show


@verb
def start(c, project=None, branch=None, port=None, addr=None, python=None, settings=None, env=None, env_file=None,
          only=None, noreload=False, timeout=None, check=None, json=False, ttl=None, idle_ttl=None, expose=False,
          host_template=None, basic_auth=None, github_output=None, ci_output=False):
    """Start runserver detached (with a Procfile, each of its processes); return once its port answers.

    Already running: reports it and starts nothing. On failure (port taken,
    broken project, timeout, --check not answered below 500, a process of the
    Procfile that exits at once) it kills what it launched and shows the log's
    tail. With --ttl it stops itself once that time has passed, with --idle-ttl
    once that long passed without a request; a server already running gets
    them from now.
    """
    flags = dict(project=project, branch=branch, port=port, addr=addr, python=python, settings=settings,
                 env_file=env_file, only=only, noreload=noreload, timeout=timeout, check=check, json=json, ttl=ttl,
                 idle_ttl=idle_ttl, expose=expose, host_template=host_template, basic_auth=basic_auth,
                 github_output=github_output, ci_output=ci_output)
    return finish(c, with_outputs(c, operate(c, "start", flags, env), flags), flags, started(c))


@verb
def stop(c, project=None, branch=None, port=None, only=None, timeout=None, json=False):
    """Stop the server: TERM to its process group, KILL after the grace period.

    Finds it by pidfile (verified by start time and boot id), else by its
    command line, project directory and port. With a Procfile, each process
    is stopped so, found by its pidfile or token alone. Not running: exit 0.
    """
    flags = dict(project=project, branch=branch, port=port, only=only, timeout=timeout, json=json)
    return finish(c, operate(c, "stop", flags), flags)


def show_status(result: Dict[str, Any]) -> str:
    """A running server's pids, uptime, log and pidfile, and the agent's notes
    ("not started by fabserve", "stale pidfile: ..."); a server found by the
    /proc search has no pidfile of its own to show. One that runs but fails
    (its --check, or nothing answers) says `failed` first, then why."""
    if result["state"] == FAILED:
        return f"{result['host']}: failed: {result['message']}; log {result['log']}"
    if result["state"] == DEGRADED:
        return f"{result['host']}: degraded: {result['message']}"
    if result["state"] != RUNNING:
        return plain(result)
    text = (f"{result['host']}: running on {result['url']}, pids {pid_list(result['pids'])}, "
            f"up {report.duration(result.get('uptime'))}; log {result['log']}")
    if result.get("public_url"):
        text += f"; public at {result['public_url']}"
    if result.get("managed"):
        text += f"; pidfile {result['pidfile']}"
    text += expiry_note(result)
    head, message = f"running on {result['url']}", result.get("message") or ""
    notes = message[len(head):] if message.startswith(head) else f"; {message}"
    return text + notes if notes.strip("; ") else text


@verb
def status(c, project=None, branch=None, port=None, addr=None, check=None, json=False):
    """Show whether the server runs and answers: exit 0 yes, 3 not running, 1 failed.

    Prints its pids, uptime, URL, log and pidfile, and when its TTL ends. With
    --check, a server whose path answers 500 or above (or not at all) has failed.
    """
    flags = dict(project=project, branch=branch, port=port, addr=addr, check=check, json=json)
    return finish(c, operate(c, "status", flags), flags, show_status)


@verb
def restart(c, project=None, branch=None, port=None, addr=None, python=None, settings=None, env=None, env_file=None,
            only=None, noreload=False, timeout=None, check=None, json=False, ttl=None, idle_ttl=None,
            expose=False, host_template=None, basic_auth=None, github_output=None, ci_output=False):
    """Stop the server if it runs, then start it and wait until it answers.

    The new server gets a whole TTL again: --ttl, else the last one it was given.
    With a Procfile, --only restarts those processes alone.
    """
    flags = dict(project=project, branch=branch, port=port, addr=addr, python=python, settings=settings,
                 env_file=env_file, only=only, noreload=noreload, timeout=timeout, check=check, json=json, ttl=ttl,
                 idle_ttl=idle_ttl, expose=expose, host_template=host_template, basic_auth=basic_auth,
                 github_output=github_output, ci_output=ci_output)
    return finish(c, with_outputs(c, operate(c, "restart", flags, env), flags), flags, started(c))


def extended(result: Dict[str, Any]) -> str:
    """How extend reads: what it did, and the new deadlines."""
    return plain(result) + (expiry_note(result) if result["ok"] else "")


@verb
def extend(c, project=None, branch=None, port=None, ttl=None, idle_ttl=None, json=False):
    """Push a running server's expiry: --ttl and --idle-ttl from now.

    Without them, the durations it was started with start again from now.
    Not running: exit 1. With a Procfile, every process gets the new deadlines.
    """
    flags = dict(project=project, branch=branch, port=port, ttl=ttl, idle_ttl=idle_ttl, json=json)
    return finish(c, operate(c, "extend", flags), flags, extended)


def streamed(c: Context, req: Dict[str, Any], agent_python: str, as_json: bool) -> Optional[Dict[str, Any]]:
    """Run a verb whose output streams (logs, manage): its lines go to stdout as the
    host sends them (each with its host when there are several), or, with --json,
    into the one result. None when our own reader went away; runners.Interrupted
    when one SIGINT (Ctrl-C) ended it, the agent and what it ran with it."""
    host = remote.host_label(c)
    req["stream"] = not as_json
    try:
        with runners.interrupting():
            if as_json:
                result = remote.call(c, req, agent_python)
            else:
                result = remote.stream(c, req, agent_python, prefix=f"{host}: " if multiple(c) else "")
    except remote.HostError as exc:
        result = report.failure(host, req["action"], str(exc))
    if result is not None:
        result["host"] = host
    return result


#: The most lines `logs --json` returns: they are one JSON object on both ends,
#: about 0.7 GB of the client's memory and 3.4 s at 1,000,000 lines of 100 bytes.
JSON_LINES = 1_000_000


def show_logs(result: Dict[str, Any]) -> str:
    """Nothing more: the lines went to stdout as they arrived."""
    return ""


@verb
def logs(c, project=None, branch=None, port=None, process=None, lines=None, follow=False, json=False, previous=False):
    """Show the server's log: its last lines, or follow it (until Ctrl-C: exit 0).

    With --json the lines are in the one result object; otherwise they stream
    to stdout as the host reads them (each with its host when there are several).
    --previous shows the log of the run before the current one.
    """
    flags = dict(project=project, branch=branch, port=port, process=process, lines=lines, follow=follow, json=json,
                 previous=previous)
    host = remote.host_label(c)
    as_json = config.setting(c.config, "json", flags)
    if as_json and follow:
        raise Exit(f"{host}: --follow streams plain text; it cannot be combined with --json", 2)
    req, agent_python = prepare(c, "logs", flags)
    if as_json and req["lines"] > JSON_LINES:
        raise Exit(f"{host}: --lines must be at most {JSON_LINES} with --json (the lines travel in one "
                   f"object), not {req['lines']}; without --json they stream", 2)
    try:
        result = streamed(c, req, agent_python, as_json)
    except runners.Interrupted:
        if follow:  # Ctrl-C is how a follow ends
            return None
        raise Exit(f"{host}: logs interrupted", 130) from None
    if result is None:  # a follower whose caller went away
        return None
    return finish(c, result, flags, show_logs)


@verb(name="list")
def list_servers(c, json=False, all=False):
    """List every server of the connecting user on each host, as a table.

    Managed ones (running, stale; with --all also those stopped with their log
    kept) and runservers fabserve did not start; with --json, one line per
    server with its host.
    """
    flags = dict(json=json, all=all)
    result = operate(c, "list", flags)
    if config.setting(c.config, "json", flags):
        for line in listing.json_lines(result):
            report.say(line)
        entrypoints.end_task(c, result)
        return result
    return finish(c, result, flags, listing.show_list)


@verb
def manage(c, args=None, project=None, branch=None, python=None, settings=None, env=None, env_file=None, timeout=None,
           json=False):
    """Run `manage.py ARGS` in the project, e.g. fab manage "migrate --noinput".

    ARGS is split with shell rules here and reaches manage.py as separate
    words, never through a shell. Same interpreter, --settings and --env as
    start; stdin is /dev/null. Exit 0 if the command exited 0, else 1; 130
    when one Ctrl-C ended it (and the command with it).
    """
    flags = dict(args=args, project=project, branch=branch, python=python, settings=settings, env_file=env_file,
                 timeout=timeout, json=json)
    req, agent_python = prepare(c, "manage", flags, env)
    try:
        result = streamed(c, req, agent_python, config.setting(c.config, "json", flags))
    except runners.Interrupted:
        raise Exit(f"{remote.host_label(c)}: manage interrupted; the command was ended", 130) from None
    if result is None:  # our own reader went away
        return None
    return finish(c, result, flags)  # the command's own lines went to stdout as they came


def size_text(count: int) -> str:
    """Bytes for people: 812 B, 12.4 KB, 3.1 MB (decimal units)."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def show_sync(result: Dict[str, Any]) -> str:
    """`host: synced 3 files (12.4 KB), deleted 1, in 0.42s`, or `host: up to date, in 0.12s`."""
    took = f"in {result['seconds']:.2f}s"
    if not (result["files_sent"] or result["deleted"]):
        return f"{result['host']}: up to date, {took}"
    sent = result["files_sent"]
    return (f"{result['host']}: synced {sent} file{'s' if sent != 1 else ''} ({size_text(result['bytes_sent'])}), "
            f"deleted {result['deleted']}, {took}")


def sync_call(c: Context, flags: Dict[str, Any]) -> Dict[str, Any]:
    """Send the tree in one agent call: the manifest, and the contents of the files
    that changed since the last sync from here to this host (all, the first time).
    Only when the host needs others (changed there, or synced from elsewhere) a
    second call sends those."""
    host = remote.host_label(c)
    values = host_values(c, flags)
    try:
        src = checked(values, "src").resolve()
    except UsageError as exc:
        raise Exit(f"{host}: {exc}", 2) from None
    if values["project"] is None:
        raise Exit(f"{host}: sync needs --project (or fabserve.project): the directory the tree goes to", 2)
    req, agent_python = prepare(c, "sync", flags)
    if not remote.is_remote(c):
        project = os.path.realpath(os.path.expanduser(req["project"]))
        if os.path.commonpath([project, str(src)]) in (project, str(src)):
            raise Exit(f"{host}: --src {src} and --project {project} must not hold one another", 2)
    began = time.monotonic()
    try:
        files = trees.manifest(src, trees.listing(src), trees.digests_file(src))
        req["branch"], req["commit"] = source_facts(values)
        sent = trees.sent_file(host, req["project"])
        send = trees.changed_since(files, trees.read_digests(sent))
        for _ in range(2):
            archive = trees.pack(src, files, send) if send else None
            result = remote.call(c, dict(req, manifest=files, archive=archive), agent_python)
            send = result.pop("needed", None)
            if not (result["ok"] and send):
                break
        if send:
            result = report.failure(host, "sync", "the host's files changed during the sync; run sync again")
        elif result["ok"]:
            trees.remember_sent(sent, files)
    except trees.TreeError as exc:
        result = report.failure(host, "sync", str(exc))
    except remote.HostError as exc:
        result = report.failure(host, "sync", str(exc))
    result["seconds"] = round(time.monotonic() - began, 3)
    result.update(host=host, branch=req.get("branch"), commit=req.get("commit"))
    return result


@verb
def sync(c, project=None, src=None, branch=None, json=False):
    """Send a local tree (--src, default .) to the project directory on each host.

    In git: the tracked files and the untracked ones git does not ignore; else
    every file but .git, .venv, __pycache__ and node_modules. Modes and symlinks
    are kept. Later syncs send only what changed and delete only files an
    earlier sync wrote that are gone here. A tree that would write outside the
    project (absolute names, .., links pointing out) is refused: exit 2.
    """
    flags = dict(project=project, src=src, branch=branch, json=json)
    return finish(c, sync_call(c, flags), flags, show_sync)


@verb
def destroy(c, project=None, branch=None, keep_files=False, timeout=None, json=False):
    """Tear a project down: stop every instance of it and forget their state and logs.

    The project directory goes too when fabserve's sync created it, unless
    --keep-files; otherwise its files are kept, and it says so. Of a project
    with nothing to destroy: exit 0, nothing changed.
    """
    flags = dict(project=project, branch=branch, keep_files=keep_files, timeout=timeout, json=json)
    req, agent_python = prepare(c, "destroy", flags)
    result = called(c, req, agent_python)
    if result["ok"]:  # the host forgot what sync wrote there: so does this machine
        trees.sent_file(remote.host_label(c), req["project"]).unlink(missing_ok=True)
    return finish(c, result, flags)


@verb
def prune(c, older_than=None, keep_branches=None, dry_run=False, timeout=None, json=False):
    """Stop and remove (by destroy's rules) instances that expired, are older than --older-than, or whose branch is not in --keep-branches.

    Only this user's instances fabserve started on each host: a server started
    by hand, or another user's, is never touched. Each host gets one SSH
    command; with --dry-run nothing changes and the same rows say what would
    go. Safe from cron or a scheduled CI job: git ls-remote --heads origin |
    fabserve -H previews prune --keep-branches - --older-than 7d
    """
    flags = dict(older_than=older_than, keep_branches=keep_branches, dry_run=dry_run, timeout=timeout, json=json)
    req, agent_python = prepare(c, "prune", flags)
    if req["keep_branches"] is not None:
        try:
            req["keep_branches"] = branches.keep_branches(req["keep_branches"])
        except (OSError, UnicodeDecodeError) as exc:
            raise Exit(f"{remote.host_label(c)}: --keep-branches cannot be read: {exc}", 2) from None
    return finish(c, called(c, req, agent_python), flags, listing.show_prune)


def set_up(result: Dict[str, Any]) -> str:
    """`web1: setup: installed requirements.txt with pip into .fabserve-venvs/... in 23.4s`."""
    return f"{result['host']}: setup: {result['message']}"


@verb
def setup(c, project=None, branch=None, requirements=None, python=None, timeout=None, json=False):
    """Make the project's virtualenv and install its requirements, when they changed.

    The hash of the requirements file (with every -r/-c file it names) and of
    the interpreter decides: unchanged, nothing is done. Otherwise a new venv is
    made in .fabserve-venvs/ (uv when the host has it, else venv and pip) and
    .venv switched to it once the install succeeded; a failed install exits 1
    with pip's last lines and leaves .venv as it was. --python installs into
    that existing interpreter instead, in place.
    """
    flags = dict(project=project, branch=branch, requirements=requirements, python=python, timeout=timeout, json=json)
    return finish(c, operate(c, "setup", flags), flags, set_up)


@verb
def tunnel(c, project=None, branch=None, port=None, check=None, local_port=None, run=None, json=False):
    """Forward a local port on 127.0.0.1 to the running server, over the same SSH connection.

    Once a request through it answers (GET of the --check path, else of the
    one the server was started with, else of /), prints the URL (--json: one
    line) and holds it open until Ctrl-C, SIGTERM or SIGHUP; with --run CMD it
    runs CMD through your shell with FABSERVE_URL, FABSERVE_HOST and
    FABSERVE_PORT set, closes the tunnel when CMD ends and exits with its
    status. Exactly one host.
    """
    flags = dict(project=project, branch=branch, port=port, check=check, local_port=local_port, run=run, json=json)
    tunnels.open_tunnel(c, flags, lambda: operate(c, "status", dict(project=project, port=port, check=check,
                                                                     json=json)))


#: up's steps, each an agent verb run once the one before it succeeded: the step's name, and its verb.
STEPS = (("sync", "sync"), ("setup", "setup"), ("migrate", "manage"), ("start", "start"))
MIGRATE = "migrate --noinput"


def step_flags(verb: str, flags: Dict[str, Any]) -> Dict[str, Any]:
    """up's flags that `verb`'s task takes; its --timeout is start's alone."""
    taken = {setting.flag_name for setting in flags_of(verb)}
    return {name: value for name, value in flags.items()
            if name in taken and (name != "timeout" or verb in ("start", "restart"))}


def up_chain(c: Context, flags: Dict[str, Any], env: Optional[List[str]]) -> Dict[str, Any]:
    """Run up's steps on the host behind `c`, each step's progress line printed as
    it ends (not with --json); the result of the last step run, as up's."""
    as_json = config.setting(c.config, "json", flags)
    try:  # once, from --src: the later steps take no --src
        values = host_values(c, flags)
        flags = dict(flags, project=expanded_project(values), host_template=expanded_host_template(values))
    except UsageError as exc:
        raise Exit(f"{remote.host_label(c)}: {exc}", 2) from None
    synced: Dict[str, Any] = {}
    restart = False
    for step, verb in STEPS:
        if step == "migrate" and not flags["migrate"]:
            continue
        if step == "sync":
            result = synced = sync_call(c, step_flags(verb, flags))
        elif step == "migrate":
            result = operate(c, verb, dict(step_flags(verb, flags), args=MIGRATE), env)
        elif step == "setup":
            result = operate(c, verb, step_flags(verb, flags))
        else:
            verb = "restart" if restart else verb
            shipped = bool(synced.get("files_sent") or synced.get("deleted"))
            result = operate(c, verb, step_flags(verb, flags), env, reloading=shipped)
        # A server already running reloads the files sync changed by itself; new requirements need a restart.
        restart = restart or (step == "setup" and bool(result.get("changed")))
        if not result["ok"] or result.get("error"):
            break
        if not as_json and step in PROGRESS:
            report.say(PROGRESS[step](result))
    result.update(action="up", step=step, branch=synced.get("branch"), commit=synced.get("commit"))
    return result


def migrated(result: Dict[str, Any]) -> str:
    """`web1: migrate: no migrations to apply` or `web1: migrate: applied 18 migrations`."""
    applied = sum(1 for line in result.get("output_tail") or [] if line.endswith("... OK"))
    nothing = any(line.strip() == "No migrations to apply." for line in result.get("output_tail") or [])
    done = "no migrations to apply" if nothing else f"applied {applied} migration{'s' if applied != 1 else ''}"
    return f"{result['host']}: migrate: {done}"


#: How each step but the last reads as it ends: its progress line.
PROGRESS: Dict[str, Formatter] = {"sync": show_sync, "setup": set_up, "migrate": migrated}


def show_up(result: Dict[str, Any]) -> str:
    """`web1: up: http://127.0.0.1:8123/ (port 8123); expires in 1d (2026-12-08T10:00:00Z)`."""
    return f"{result['host']}: up: {result['url']} (port {result['port']}){expiry_note(result)}"


@verb
def up(c, src=None, project=None, branch=None, port=None, addr=None, python=None, settings=None, env=None,
       env_file=None, only=None, requirements=None, migrate=True, noreload=False, timeout=None, check=None,
       ttl=None, idle_ttl=None, json=False, expose=False, host_template=None, basic_auth=None, github_output=None,
       ci_output=False):
    """Bring a preview up in one command: sync --src, set up its venv, migrate, start.

    Each step runs once the one before it succeeded; a step that fails ends up
    with that step's exit code and says which step it was. A server already
    running keeps running and reloads what sync changed, or is restarted when
    setup installed new requirements. One line per step, then the URL, the port
    and the expiry (--json: one object, the start's result with `step`).
    """
    flags = dict(src=src, project=project, branch=branch, port=port, addr=addr, python=python, settings=settings,
                 env_file=env_file, only=only, requirements=requirements, migrate=migrate, noreload=noreload,
                 timeout=timeout, check=check, ttl=ttl, idle_ttl=idle_ttl, json=json, expose=expose,
                 host_template=host_template, basic_auth=basic_auth, github_output=github_output, ci_output=ci_output)
    return finish(c, with_outputs(c, up_chain(c, flags, env), flags), flags, show_up)
