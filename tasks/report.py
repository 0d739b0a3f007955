"""Turning a host's result into output and an exit code.

Human mode: one line per host (a failed start adds the log's tail), failures on
stderr. JSON mode: exactly one object per host on stdout, nothing else.
"""

import json
import sys
from typing import Any, Dict, List, Optional

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


def emit(result: Dict[str, Any], as_json: bool, stop_hint: str = "") -> Dict[str, Any]:
    """Print one host's result (failures on stderr) and return it; the executor
    turns all hosts' results into the exit code."""
    for key in FIELDS:
        result.setdefault(key, None)
    if as_json:
        print(json.dumps(result, sort_keys=True), flush=True)
        return result
    text = human(result, stop_hint)
    failed = exit_code(result["action"], result) not in (0, 3)
    if text:
        print(text, file=sys.stderr if failed else sys.stdout, flush=True)
    return result


def summary(results: List[Dict[str, Any]], unreported: int = 0) -> str:
    """One line for a multi-host run, e.g. `4 ok, 1 failed: web3 (cannot connect: ...)`."""
    failed = [result for result in results if exit_code(result["action"], result) not in (0, 3)]
    stopped = [result for result in results if exit_code(result["action"], result) == 3]
    word = "running" if results[0]["action"] == "status" else "ok"
    parts = [f"{len(results) - len(failed) - len(stopped)} {word}"]
    if stopped:
        parts.append(f"{len(stopped)} not running: " + ", ".join(result["host"] for result in stopped))
    if failed or unreported:
        reasons = ", ".join(f"{result['host']} ({result['error']})" for result in failed)
        parts.append(f"{len(failed) + unreported} failed" + (f": {reasons}" if reasons else ""))
    return ", ".join(parts)
