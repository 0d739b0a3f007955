"""What --ttl and the log cap cost the agent: its own time for `status` and `start`
with and without them, on this machine, no SSH (the agent is the same program
either way; the SSH round trip only adds a constant to both sides of each ratio).

usage: .venv/bin/python -m bench.lifetimes [--reps N]   (as any user; ports 17900-17902)

Cases, each --reps times, interleaved so that load changes hit both sides alike:
- status of a running server, plain, against status of one with a TTL whose log
  is under the cap: what the watchdog and the cap check add to every call;
- status that cuts a 60 MB log to the 50 MiB cap's newest half, against plain status;
- start --noreload --ttl 1h against start --noreload: the watchdog's fork.
Prints medians and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from tasks import remote, settings
from tasks.config import merged

EXAMPLE = Path(__file__).resolve().parent.parent / "example"
PORTS = {"plain": 17900, "ttl": 17901, "cut": 17902}
LOG_BYTES = 60 * 1000 * 1000


def agent(state: Path, action: str, port: int, **flags: Any) -> float:
    """Seconds one agent call takes, as the client's shell command runs it."""
    values = merged({}, {"project": str(EXAMPLE), "port": port, "state_dir": str(state), **flags})
    line = remote.request_line(settings.request(action, values, []))
    began = time.perf_counter()
    done = subprocess.run(["sh", "-c", remote.command(sys.executable)], input=line, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    result = remote.parse_result(done.stdout)
    if result is None or not result["ok"]:
        raise SystemExit(f"bench: {action} on port {port} failed: {done.stdout[-300:]} {done.stderr[-300:]}")
    return seconds


def log_of(state: Path, port: int) -> Path:
    return next(state.glob(f"hosts/*/example-{port}-*/server.log"))


def grow(path: Path, size: int) -> None:
    line = b"%09d " + b"x" * 90 + b"\n"
    with open(path, "ab") as handle:
        done = handle.seek(0, os.SEEK_END) // 100
        while handle.tell() < size:
            handle.write(b"".join(line % (done + index) for index in range(10000)))
            done += 10000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="repetitions of every case (default 10)")
    reps = parser.parse_args().reps
    times: Dict[str, List[float]] = {name: [] for name in
                                     ("status", "status_ttl", "status_cut", "start", "start_ttl")}
    with tempfile.TemporaryDirectory() as directory:
        state = Path(directory)
        try:
            agent(state, "start", PORTS["plain"], noreload=True)
            agent(state, "start", PORTS["ttl"], noreload=True, ttl="1h")
            agent(state, "start", PORTS["cut"], noreload=True)
            for _ in range(reps):
                times["status"].append(agent(state, "status", PORTS["plain"]))
                times["status_ttl"].append(agent(state, "status", PORTS["ttl"]))
                grow(log_of(state, PORTS["cut"]), LOG_BYTES)
                times["status_cut"].append(agent(state, "status", PORTS["cut"]))
                for name, port, extra in (("start", PORTS["plain"], {}), ("start_ttl", PORTS["ttl"], {"ttl": "1h"})):
                    agent(state, "stop", port)
                    times[name].append(agent(state, "start", port, noreload=True, **extra))
        finally:
            for port in PORTS.values():
                agent(state, "stop", port)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:12} median {value * 1000:8.1f} ms  (min {min(times[name]) * 1000:.1f}, "
              f"max {max(times[name]) * 1000:.1f}, n={len(times[name])})")
    print(f"status with ttl, log under the cap / status: {median['status_ttl'] / median['status']:.3f}")
    print(f"status cutting a 60 MB log / status: {median['status_cut'] / median['status']:.3f}")
    print(f"start --ttl / start: {median['start_ttl'] / median['start']:.3f}")


if __name__ == "__main__":
    main()
