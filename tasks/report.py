"""Turning a host's result into output and an exit code.

Human mode: one line per host (a failed start adds the log's tail), failures on
stderr. JSON mode: exactly one object per host on stdout, nothing else.
"""

import json
import sys
from typing import Any, Dict, List, Optional

from invoke.exceptions import Exit

from .agent import exit_code

#: Keys every JSON result carries, so consumers need no `in` checks.
FIELDS = ("host", "action", "ok", "changed", "state", "pid", "pids", "url", "pidfile", "log",
          "message", "error")


def failure(host: str, action: str, error: str) -> Dict[str, Any]:
    """The result of an operation that never reached the agent."""
    return {"host": host, "action": action, "ok": False, "changed": False, "state": "failed",
            "pid": None, "pids": [], "url": None, "pidfile": None, "log": None,
            "message": error, "error": error}


def duration(seconds: Optional[int]) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return "".join(shown[:2]) or "0s"


def pid_list(pids: List[int]) -> str:
    return " ".join(str(pid) for pid in pids) or "-"


def human(result: Dict[str, Any], stop_hint: str = "") -> str:
    host, action, state = result["host"], result["action"], result["state"]
    if result.get("error"):
        text = f"{host}: {action} failed: {result['error']}"
        tail = result.get("log_tail") or []
        if tail:
            text += f"\n{host}: last lines of {result['log']}:\n" + "\n".join("    " + line for line in tail)
        return text
    if action == "logs":
        return "\n".join(result.get("lines") or [])
    if action == "status" and state == "running":
        return (f"{host}: running on {result['url']}, pids {pid_list(result['pids'])}, "
                f"up {duration(result.get('uptime'))}; log {result['log']}; pidfile {result['pidfile']}")
    text = f"{host}: {result['message']}"
    if action in ("start", "restart") and state == "running":
        text += f" (pids {pid_list(result['pids'])}); log {result['log']}"
        if stop_hint:
            text += f"\n{host}: stop it with: {stop_hint}"
    return text


def emit(result: Dict[str, Any], as_json: bool, stop_hint: str = "") -> None:
    """Print one host's result; raise Exit when its exit code is not 0."""
    for key in FIELDS:
        result.setdefault(key, None)
    code = exit_code(result["action"], result)
    if as_json:
        print(json.dumps(result, sort_keys=True), flush=True)
        if code:
            raise Exit(code=code)
        return
    text = human(result, stop_hint)
    if code == 0 or (result["action"] == "status" and code == 3):
        if text:
            print(text, flush=True)
        if code:
            raise Exit(code=code)
        return
    sys.stdout.flush()
    raise Exit(text, code)
