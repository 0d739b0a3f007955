"""Turning a host's result into output and an exit code: the parts every verb shares.

Human mode: one line per host (a failed start adds the log's tail), failures on
stderr; each verb's task says how its successful result reads. JSON mode:
exactly one object per host on stdout, nothing else.
"""

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, TextIO

from .agent.protocol import EXITED, FAILED, RUNNING, exit_code, result_of

#: How a verb's successful result reads for people.
Formatter = Callable[[Dict[str, Any]], str]


def say(text: str, stream: Optional[TextIO] = None) -> None:
    """Print a line (stdout by default), flushed.

    A reader that went away (`fab status | head -1`) is no error: the stream is
    pointed at /dev/null, so the rest of the output, and Python's last flush at
    exit, go nowhere and the run ends with its own exit code.
    """
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        drop_output(stream)


def drop_output(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null: its reader went away."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def failure(host: str, action: str, error: str) -> Dict[str, Any]:
    """The result of an operation that never reached the agent."""
    return result_of(host=host, action=action, ok=False, changed=False, state=FAILED, message=error, error=error)


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


def plain(result: Dict[str, Any]) -> str:
    """The host and the agent's message: how most results read."""
    return f"{result['host']}: {result['message']}"


#: How many of an exited process's last lines human output shows under it.
EXITED_TAIL = 5


def process_lines(result: Dict[str, Any], told: Optional[str] = None) -> List[str]:
    """One line per process of a Procfile instance: name, state, pids, uptime
    and log; an exited one's status and last lines, unless its log is `told`
    (a failure showed them already)."""
    host, lines = result["host"], []
    rows = result.get("processes") or []
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        state = row["state"]
        if state == EXITED and row.get("exit_status") is not None:
            state += f" (status {row['exit_status']})"
        parts = [row["name"].ljust(width), state]
        if row.get("pids"):
            parts.append(f"pids {pid_list(row['pids'])}")
        if row.get("uptime") is not None:
            parts.append(f"up {duration(row['uptime'])}")
        parts.append(f"log {row['log']}")
        lines.append(f"{host}:   " + "  ".join(parts))
        if row["log"] != told:
            lines += [f"{host}:       {line}" for line in (row.get("log_tail") or [])[-EXITED_TAIL:]]
    return lines


def human(result: Dict[str, Any], formatter: Formatter = plain) -> str:
    """A failure (with the log's tail where there is one, an install's or a
    command's own last lines for setup and up's migrate), else what `formatter`
    says; then each process of a Procfile instance. up's failure names the step that failed."""
    text = failed_text(result) if result.get("error") else formatter(result)
    told = result.get("log") if result.get("error") and result.get("log_tail") else None
    return "\n".join([text] + process_lines(result, told)) if result.get("processes") and text else text


def failed_text(result: Dict[str, Any]) -> str:
    """A failure's line, and the log's (or the command's) last lines."""
    host, step = result["host"], result.get("step")
    text = f"{host}: {result['action']} failed{f' at {step}' if step else ''}: {result['error']}"
    tail, heading = result.get("log_tail") or [], f"last lines of {result['log']}"
    if (step or result["action"]) in OUTPUT_TAILS:  # pip's (or uv's, or migrate's) own words on why it failed
        tail, heading = result.get("output_tail") or [], OUTPUT_TAILS[step or result["action"]]
    if tail:
        text += f"\n{host}: {heading}:\n" + "\n".join("    " + line for line in tail)
    return text


#: The steps whose failure shows the output_tail, and what it is.
OUTPUT_TAILS = {"setup": "the install's last lines", "migrate": "the migration's last lines"}


def emit(result: Dict[str, Any], as_json: bool, formatter: Formatter = plain) -> Dict[str, Any]:
    """Print one host's result (failures on stderr) and return it; the executor
    turns all hosts' results into the exit code."""
    if as_json:
        say(json.dumps(result, sort_keys=True))
        return result
    text = human(result, formatter)
    failed = exit_code(result["action"], result) not in (0, 3)
    if text:
        say(text, sys.stderr if failed else sys.stdout)
    return result


def summary(results: List[Dict[str, Any]], unreported: int = 0) -> str:
    """One line for a multi-host run, e.g. `4 ok, 1 failed: web3 (cannot connect: ...)`."""
    failed = [result for result in results if exit_code(result["action"], result) not in (0, 3)]
    stopped = [result for result in results if exit_code(result["action"], result) == 3]
    word = RUNNING if results[0]["action"] == "status" else "ok"
    parts = [f"{len(results) - len(failed) - len(stopped)} {word}"]
    if stopped:
        parts.append(f"{len(stopped)} not running: " + ", ".join(result["host"] for result in stopped))
    if failed or unreported:
        # A status that failed has no error, only its message (its --check failed).
        reasons = ", ".join(f"{result['host']} ({result['error'] or result['message']})" for result in failed)
        parts.append(f"{len(failed) + unreported} failed" + (f": {reasons}" if reasons else ""))
    return ", ".join(parts)
