"""The fabserve tasks: one per verb, each a thin shell around one agent call."""

import os
import shlex
import sys
from typing import Any, Dict, List, Optional

from invoke import Context, task
from invoke.exceptions import Exit

from . import options, remote, report

HELP: Dict[str, str] = {
    "project": "Django project directory (holding manage.py) on the target; "
               "default: fabserve.project, or the bundled example when local",
    "port": "port runserver listens on (default 8000); with --project it names the instance",
    "addr": "IP address runserver binds to (default 127.0.0.1)",
    "python": "interpreter on the target, relative paths from the project "
              "(default: the project's .venv or venv, else python3)",
    "settings": "Django settings module, passed as runserver --settings",
    "env": "KEY=VALUE set in the server's environment (repeatable)",
    "noreload": "run without Django's autoreloader (a single process)",
    "json": "print one JSON object per host on stdout and nothing else",
}
START_TIMEOUT = "seconds to wait for the port to answer (default 30)"
STOP_TIMEOUT = "seconds between TERM and KILL (default 10)"


def helps(*names: str, **extra: str) -> Dict[str, str]:
    """Help texts for the named flags: invoke refuses help for absent ones."""
    return {**{name: HELP[name] for name in names}, **extra}


def section(c: Context) -> Dict[str, Any]:
    return options.merged(c.config.get("fabserve", {}), {})


def host_settings(c: Context, flags: Dict[str, Any]) -> Dict[str, Any]:
    """Flags over the host's inventory vars over the `fabserve` config section."""
    config = {**c.config.get("fabserve", {}), **getattr(c, "fabserve_settings", {})}
    return options.merged(config, flags)


def operate(c: Context, action: str, flags: Dict[str, Any], env: Optional[List[str]],
            timeout_key: Optional[str] = None) -> Dict[str, Any]:
    """Validate, run `action` on the host behind `c`, and return its result.

    Bad input ends the task with exit 2 before anything connects.
    """
    host = remote.host_label(c)
    values = host_settings(c, flags)
    try:
        req = options.request(action, values, env, local=not remote.is_remote(c), timeout_key=timeout_key)
    except options.UsageError as exc:
        raise Exit(f"{host}: {exc}", 2) from None
    try:
        result = remote.call(c, req, values["agent_python"])
    except remote.HostError as exc:
        result = report.failure(host, action, str(exc))
    result["host"] = host
    return result


def stop_hint(c: Context, result: Dict[str, Any]) -> str:
    hosts = ["-H", remote.host_label(c)] if remote.is_remote(c) else []
    words = [program(), *hosts, "stop", "--project", result.get("project") or "", "--port", str(result.get("port"))]
    return " ".join(shlex.quote(word) for word in words)


def multiple(c: Context) -> bool:
    """True when this host is one of several running at once."""
    return bool(getattr(c, "fabserve_fanout", False))


def program() -> str:
    """How the user ran fab (e.g. `.venv/bin/fab`), so the hint can be pasted as is."""
    invoked = sys.argv[0] if sys.argv else ""
    return invoked if os.path.basename(invoked) == "fab" else "fab"


STARTING = ("project", "port", "addr", "python", "settings", "env", "noreload", "json")


@task(help=helps(*STARTING, timeout=START_TIMEOUT), iterable=["env"])
def start(c, project=None, port=None, addr=None, python=None, settings=None, env=None,
          noreload=False, timeout=None, json=False):
    """Start runserver detached; return once its port answers.

    Already running: reports it and starts nothing. On failure (port taken,
    broken project, timeout) it kills what it launched and shows the log's tail.
    """
    flags = dict(project=project, port=port, addr=addr, python=python, settings=settings,
                 noreload=noreload or None, timeout=timeout)
    result = operate(c, "start", flags, env, "start_timeout")
    return report.emit(result, json or section(c)["json"], stop_hint(c, result))


@task(help=helps("project", "port", "json", timeout=STOP_TIMEOUT))
def stop(c, project=None, port=None, timeout=None, json=False):
    """Stop the server: TERM to its process group, KILL after the grace period.

    Finds it by pidfile (verified by start time and boot id), else by its
    command line, project directory and port. Not running: exit 0.
    """
    result = operate(c, "stop", dict(project=project, port=port, timeout=timeout), None, "stop_timeout")
    return report.emit(result, json or section(c)["json"])


@task(help=helps("project", "port", "addr", "json"))
def status(c, project=None, port=None, addr=None, json=False):
    """Show whether the server runs and answers: exit 0 yes, 3 not running, 1 failed.

    Prints its pids, uptime, URL, log and pidfile.
    """
    result = operate(c, "status", dict(project=project, port=port, addr=addr), None)
    return report.emit(result, json or section(c)["json"])


@task(help=helps(*STARTING, timeout=START_TIMEOUT), iterable=["env"])
def restart(c, project=None, port=None, addr=None, python=None, settings=None, env=None,
            noreload=False, timeout=None, json=False):
    """Stop the server if it runs, then start it and wait until it answers."""
    flags = dict(project=project, port=port, addr=addr, python=python, settings=settings,
                 noreload=noreload or None, timeout=timeout)
    result = operate(c, "restart", flags, env, "start_timeout")
    return report.emit(result, json or section(c)["json"], stop_hint(c, result))


@task(help=helps("project", "port", "json", lines="how many of the last lines to show (default 50)",
                follow="keep printing lines as they are appended, until interrupted"))
def logs(c, project=None, port=None, lines=None, follow=False, json=False):
    """Show the server's log: its last lines, or follow it."""
    flags = dict(project=project, port=port, lines=lines, follow=follow or None)
    as_json = json or section(c)["json"]
    if not follow:
        return report.emit(operate(c, "logs", flags, None), as_json)
    host = remote.host_label(c)
    if as_json:
        raise Exit(f"{host}: --follow streams plain text; it cannot be combined with --json", 2)
    values = host_settings(c, flags)
    try:
        req = options.request("logs", values, None, local=not remote.is_remote(c))
        remote.stream(c, req, values["agent_python"], prefix=f"{host}: " if multiple(c) else "")
    except options.UsageError as exc:
        raise Exit(f"{host}: {exc}", 2) from None
    except remote.HostError as exc:
        raise Exit(f"{host}: logs failed: {exc}", 1) from None
