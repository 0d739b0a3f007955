"""How `list` reads: an aligned table of a host's servers for people, one JSON
line per server for programs."""

import calendar
import json
import time
from typing import Any, Callable, Dict, List, Tuple

from . import report
from .agent.protocol import EXPIRED, FAILED, RUNNING

#: The table's columns: heading, and how a row shows in it.
COLUMNS = (
    ("PROJECT", lambda row: row.get("project") or "-"),
    ("PORT", lambda row: str(row.get("port") or "-")),
    ("STATE", lambda row: state_of(row)),
    ("MANAGED", lambda row: "yes" if row.get("managed") is not False else "no"),
    ("PIDS", lambda row: report.pid_list(row.get("pids") or []).replace(" ", ",")),
    ("PROCS", lambda row: procs_of(row)),
    ("UPTIME", lambda row: report.duration(row["uptime"]) if row.get("uptime") is not None else "-"),
    ("EXPIRES", lambda row: report.duration(row["expires_in"]) if row.get("expires_in") is not None else "-"),
    ("IDLE", lambda row: idle_of(row)),
    ("URL", lambda row: row.get("public_url") or row.get("url") or "-"),  # exposed: where a reviewer opens it
    ("BRANCH", lambda row: row.get("branch") or "-"),
    ("COMMIT", lambda row: (row.get("commit") or "-")[:12]),
    ("LOG", lambda row: row.get("log") or "-"),
)


def idle_of(row: Dict[str, Any]) -> str:
    """How long until the idle TTL ends a row's server unless a request comes
    (EXPIRES is the earlier of it and the TTL); `-` without an idle TTL."""
    idle, ends, left = row.get("idle_expires_at"), row.get("expires_at"), row.get("expires_in")
    if not idle or not ends or left is None:
        return "-"
    # From the host's own expires_in: this machine's clock may differ from the host's.
    return report.duration(left + int(seconds_of(idle) - seconds_of(ends)))


def seconds_of(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def procs_of(row: Dict[str, Any]) -> str:
    """`running/total` processes of a Procfile instance, `-` for a server alone."""
    rows = row.get("processes")
    if not rows:
        return "-"
    return f"{sum(process['state'] in (RUNNING, FAILED) for process in rows)}/{len(rows)}"


def state_of(row: Dict[str, Any]) -> str:
    """A row's state, `stale` for one stopped whose pidfile names a process that is
    gone, `expired` for one its TTL ended."""
    if row.get("state") != RUNNING and "stale pidfile" in (row.get("message") or ""):
        return "stale"
    if row.get("state") != RUNNING and (row.get("message") or "").startswith(f"{EXPIRED} at "):
        return EXPIRED
    return row.get("state") or "-"


def table(rows: List[Dict[str, Any]]) -> List[str]:
    """The rows as lines of list's aligned table under a heading."""
    return aligned(COLUMNS, rows)


Columns = Tuple[Tuple[str, Callable[[Dict[str, Any]], str]], ...]


def aligned(columns: Columns, rows: List[Dict[str, Any]]) -> List[str]:
    """The rows as lines of an aligned table of `columns` under a heading; the last column is not padded."""
    cells = [[heading for heading, _ in columns]] + [[show(row) for _, show in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths)) + "  " + line[-1]
            for line in cells]


def show_list(result: Dict[str, Any]) -> str:
    """A host's servers: `host: N servers` and the table, or `host: no servers`
    (either saying how many stopped ones only --all shows)."""
    host, rows = result["host"], result.get("rows") or []
    if not rows:
        return f"{host}: {result.get('message') or 'no servers'}"
    return "\n".join([f"{host}: {result['message']}"] + [f"  {line}" for line in table(rows)])


def json_lines(result: Dict[str, Any]) -> List[str]:
    """One JSON line per server, each with the host; a host that failed, its one failure object."""
    if result.get("error"):
        return [json.dumps(result, sort_keys=True)]
    return [json.dumps({**row, "host": result["host"]}, sort_keys=True) for row in result.get("rows") or []]


#: prune's table: what was (or would be) pruned, and why.
PRUNED = (
    ("PROJECT", lambda row: row.get("project") or "-"),
    ("PORT", lambda row: str(row.get("port") or "-")),
    ("WAS", lambda row: row.get("state") or "-"),
    ("BRANCH", lambda row: row.get("branch") or "-"),
    ("STARTED", lambda row: row.get("started_at") or "-"),
    ("REMOVED", lambda row: "project dir" if row.get("removed") else "state"),
    ("REASONS", lambda row: ", ".join(row.get("reasons") or []) + (f" ({row['error']})" if row.get("error") else "")),
)


def show_prune(result: Dict[str, Any]) -> str:
    """`host: pruned N instances` (or `would prune`, `nothing to prune`) and the table of them."""
    host, rows = result["host"], result.get("rows") or []
    if not rows:
        return f"{host}: {result.get('message') or 'nothing to prune'}"
    return "\n".join([f"{host}: {result['message']}"] + [f"  {line}" for line in aligned(PRUNED, rows)])
