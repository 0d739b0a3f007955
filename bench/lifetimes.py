"""What --ttl and the log cap cost the agent: its own time for `status` and `start`
with and without them, on this machine, no SSH (the agent is the same program
either way; the SSH round trip only adds a constant to both sides of each ratio).

Each repetition starts three servers of the example project (ports 17900-17902)
in a state directory of its own, then times, one after the other:
- status of a running server, plain, and status of one with a TTL whose log is
  under the cap: what the watchdog and the cap check add to every call;
- status that cuts a 60 MB log to the 50 MiB cap's newest half;
- start --noreload and start --noreload --ttl 1h: the watchdog's fork.
The report adds their ratios, pair by pair within a repetition (ratio_lines).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tasks import remote, settings
from tasks.config import merged

from bench.layout import REPO
from bench.ratios import pairwise
from bench.runner import Runner
from bench.samples import Sample

GROUP = "lifetimes"
EXAMPLE = REPO / "example"
PORTS = {"plain": 17900, "ttl": 17901, "cut": 17902}
TTL = "1h"
LOG_BYTES = 60 * 1000 * 1000
# name: label
CASES = {"lifetimes_status": "agent status (no SSH)",
         "lifetimes_status_ttl": "agent status, TTL set, log under cap",
         "lifetimes_status_cut": f"agent status cutting a {LOG_BYTES // 10**6} MB log",
         "lifetimes_start": "agent start --noreload (no SSH)",
         "lifetimes_start_ttl": f"agent start --noreload --ttl {TTL}"}
RATIOS = (("lifetimes_status_ttl", "lifetimes_status", "status with a TTL, log under the cap / status"),
          ("lifetimes_status_cut", "lifetimes_status", f"status cutting a {LOG_BYTES // 10**6} MB log / status"),
          ("lifetimes_start_ttl", "lifetimes_start", f"start --ttl {TTL} / start"))
STARTS = {"plain": {"noreload": True}, "ttl": {"noreload": True, "ttl": TTL}, "cut": {"noreload": True}}
# One repetition, in this order: (case, agent action, server); a start starts a stopped server.
STEPS = (("lifetimes_status", "status", "plain"),
         ("lifetimes_status_ttl", "status", "ttl"),
         ("lifetimes_status_cut", "status", "cut"),
         ("lifetimes_start", "start", "plain"),
         ("lifetimes_start_ttl", "start", "ttl"))


class AgentFailed(Exception):
    """An agent call did not answer ok; the message holds its output."""


def agent(state: Path, action: str, port: int, **flags: Any) -> float:
    """Seconds one agent call takes, as the client's shell command runs it."""
    values = merged({}, {"project": str(EXAMPLE), "port": port, "state_dir": str(state), **flags})
    line = remote.request_line(settings.request(action, values, []))
    began = time.perf_counter()
    done = subprocess.run(["sh", "-c", remote.command(sys.executable)], input=line, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    result = remote.parse_result(done.stdout)
    if result is None or not result["ok"]:
        raise AgentFailed(f"{action} on port {port}: {done.stdout[-300:]} {done.stderr[-300:]}")
    return seconds


def log_of(state: Path, port: int) -> Path:
    found = next(state.glob(f"hosts/*/example-{port}-*/server.log"), None)
    if found is None:
        raise AgentFailed(f"no server log for port {port} in {state}")
    return found


def grow(path: Path, size: int) -> None:
    line = b"%09d " + b"x" * 90 + b"\n"
    with open(path, "ab") as handle:
        done = handle.seek(0, os.SEEK_END) // 100
        while handle.tell() < size:
            handle.write(b"".join(line % (done + index) for index in range(10000)))
            done += 10000


def at_once(state: Path, action: str, flags: dict[str, dict[str, Any]]) -> None:
    """One untimed agent call per server, all at once (each instance has its own lock)."""
    with ThreadPoolExecutor(max_workers=len(PORTS)) as pool:
        for future in [pool.submit(agent, state, action, PORTS[server], **flags.get(server, {}))
                       for server in PORTS]:
            future.result()


def lifetimes(runner: Runner) -> None:
    """One repetition of every case, in a state directory of its own."""
    name = next(iter(CASES))  # the case a failure is listed with: the one under way (set-up: the first)
    with tempfile.TemporaryDirectory(prefix="fabserve-bench-lifetimes-") as directory:
        state = Path(directory)
        try:
            at_once(state, "start", STARTS)
            grow(log_of(state, PORTS["cut"]), LOG_BYTES)
            for name, action, server in STEPS:
                if action == "start":
                    agent(state, "stop", PORTS[server])
                seconds = agent(state, action, PORTS[server], **(STARTS[server] if action == "start" else {}))
                runner.add(runner.case(name, CASES[name], GROUP, client=False), Sample(seconds, 0, 0))
        except AgentFailed as exc:
            runner.fail(runner.case(name, CASES[name], GROUP, client=False), CASES[name], str(exc))
        finally:
            try:
                at_once(state, "stop", {})
            except AgentFailed as exc:
                runner.fail(runner.case(name, CASES[name], GROUP, client=False), "lifetimes: stopping", str(exc))


def ratio_lines(runner: Runner) -> list[str]:
    lines = ["", "lifetimes: the agent's own time, no SSH (median of the pairwise ratios within a rep)"]
    for name, base, label in RATIOS:
        values = pairwise(runner.cases, [name, base], lambda ours, plain: ours / plain)
        lines.append(f"  {label:<46} " + (f"{statistics.median(values):.3f}x" if values else "-"))
    return lines
