"""Where `fab status` spends its time on the client: `python -X importtime` (the
largest imports) and cProfile (the main phases of a fab run)."""

from __future__ import annotations

import io
import pstats
import re
import statistics
import subprocess
import tempfile
from typing import Any

from bench.hosts import Bed
from bench.layout import FAB, PORT, PROJECT, PYTHON, REPO
from bench.runner import execute

# Functions worth naming in the breakdown: what each means for a fab run.
MILESTONES = [
    ("imports (all modules)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("fab: load the fabfile + config", "invoke/program.py", "load_collection"),
    ("fab: parse + load config files", "invoke/program.py", "parse_core"),
    ("SSH connect + kex + auth (Connection.open)", "fabric/connection.py", "open"),
    ("  TCP connect + key exchange (Transport.start_client)", "paramiko/transport.py", "start_client"),
    ("  public-key authentication (auth_publickey)", "paramiko/transport.py", "auth_publickey"),
    ("  authentication incl. key loading (SSHClient._auth)", "paramiko/client.py", "_auth"),
    ("host key check (hostkeys.install)", "tasks/hostkeys.py", "install"),
    ("command round trip (Runner.run)", "invoke/runners.py", "run"),
    ("  waiting for the remote command (Runner.wait)", "invoke/runners.py", "wait"),
    ("fabserve: build the agent command", "tasks/remote.py", "command"),
    ("fabserve task body (verbs.operate)", "tasks/verbs.py", "operate"),
]


def profile(bed: Bed) -> dict[str, Any]:
    """Where `fab status` spends its time on the client: -X importtime and cProfile."""
    host = bed.hosts[0]
    base = [str(FAB), "-r", str(REPO), "-S", str(bed.ssh_config), "-H", host.alias]
    where = ["--project", PROJECT, "--port", str(PORT)]
    words = ["status", *where]
    started = execute([*base, "start", *where])
    if started.rc != 0:
        return {"error": "start failed: " + started.output[-300:]}
    try:
        module = [str(PYTHON), "-X", "importtime", "-m", "fabric", *base[1:], *words]
        imported = subprocess.run(module, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = statistics.median(execute(base + words).seconds for _ in range(3))
        with tempfile.NamedTemporaryFile(suffix=".prof") as out:
            subprocess.run([str(PYTHON), "-m", "cProfile", "-o", out.name, "-m", "fabric", *base[1:], *words],
                           cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            functions = cprofile_top(out.name)
    finally:
        execute([*base, "stop", *where])
    return {"wall_seconds": wall, "imports": importtime_top(imported.stderr), "functions": functions}


def importtime_top(stderr: str, count: int = 14) -> dict[str, Any]:
    """The imports with the largest cumulative time, at any depth (depth 0: imported by
    fab or the fabfile itself), and the total of the top-level ones."""
    entries = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if match:
            entries.append((len(match.group(3)), int(match.group(2)), int(match.group(1)), match.group(4)))
    if not entries:
        return {"total_seconds": None, "top": []}
    level = min(depth for depth, _, _, _ in entries)
    top = sorted(entries, key=lambda entry: -entry[1])[:count]
    return {"total_seconds": sum(us for depth, us, _, _ in entries if depth == level) / 1e6,
            "top": [{"module": name, "seconds": us / 1e6, "self_seconds": own / 1e6, "depth": (depth - level) // 2}
                    for depth, us, own, name in top]}


def cprofile_top(path: str) -> list[dict[str, Any]]:
    stats = pstats.Stats(path, stream=io.StringIO())
    rows = []
    for label, filename, function in MILESTONES:
        best = None
        for (file, _, name), (_, _, _, cumulative, _) in stats.stats.items():
            if name == function and file.endswith(filename):
                best = max(best or 0.0, cumulative)
        if best is not None:
            rows.append({"what": label, "seconds": best})
    total = max((value[3] for value in stats.stats.values()), default=0.0)
    return [{"what": "whole process (profiled)", "seconds": total}] + rows
