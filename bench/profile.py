"""Where `fab status` and `fab stop` spend their time: on the client, `python -X
importtime` (the largest imports, and all of them by package) and cProfile (the main
phases of a fab run); on the host, the agent's phases (bench/breakdown.py); and the
two together as one breakdown of each call's wall time."""

from __future__ import annotations

import io
import pstats
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench import breakdown
from bench.hosts import Bed, Host
from bench.layout import FAB, PORT, PROJECT, PYTHON, REPO
from bench.runner import execute
from bench.shell import log

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
    ("  waiting for the remote command (Runner.wait)", "runners.py", "wait"),  # invoke's or ours
    ("fabserve: build the agent command", "tasks/remote.py", "command"),
    ("fabserve task body (verbs.operate)", "tasks/verbs.py", "operate"),
]


VERBS = ("status", "stop")


def profile(bed: Bed) -> dict[str, Any]:
    """The client's profile of `fab status` (-X importtime and cProfile), and the
    breakdown of `fab status` and `fab stop` (each on a running server)."""
    host = bed.hosts[0]
    base = [str(FAB), "-r", str(REPO), "-S", str(bed.ssh_config), "-H", host.alias]
    where = ["--project", PROJECT, "--port", str(PORT)]
    started = execute([*base, "start", *where])
    if started.rc != 0:
        return {"error": "start failed: " + started.output[-300:]}
    found: dict[str, Any] = {"breakdown": {}}
    try:
        for verb in VERBS:
            found["breakdown"][verb] = verb_profile(bed, host, base, where, verb)
    finally:
        execute([*base, "stop", *where])
    status = found["breakdown"]["status"]
    found.update(wall_seconds=status["wall"], imports=status["imports"], functions=status["functions"])
    return found


def verb_profile(bed: Bed, host: Host, base: Sequence[str], where: Sequence[str], verb: str) -> dict[str, Any]:
    """One verb's client imports (-X importtime) and cProfile, 3 runs with the
    client's phases timed (bench/breakdown.py's CLIENT; the one of median wall
    is broken down), and its agent's phases on the host; each run of stop on a
    server started for it, untimed."""
    words = [verb, *where]

    def ready() -> None:
        if verb == "stop":
            execute([*base, "start", *where])

    ready()
    module = [str(PYTHON), "-X", "importtime", "-m", "fabric", *base[1:], *words]
    imported = subprocess.run(module, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    timed = []
    for _ in range(3):
        ready()
        began = time.perf_counter()
        done = subprocess.run([str(PYTHON), "-c", breakdown.CLIENT, *base[1:], *words], cwd=REPO,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        timed.append((time.perf_counter() - began, breakdown.parse_client(done.stderr)))
    wall, client = sorted(timed, key=lambda run: run[0])[1]
    ready()
    with tempfile.NamedTemporaryFile(suffix=".prof") as out:
        subprocess.run([str(PYTHON), "-m", "cProfile", "-o", out.name, "-m", "fabric", *base[1:], *words],
                       cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        functions = cprofile_top(out.name)
    ready()
    on_host = agent_phases(bed, host, verb)
    return {"wall": wall, "imports": importtime_top(imported.stderr), "functions": functions,
            "host": on_host, "client": client, "rows": breakdown.rows(verb, wall, client, on_host),
            "host_lines": [breakdown.package_line(breakdown.imports_by_package(imported.stderr)),
                           *breakdown.host_lines(on_host)]}


def agent_phases(bed: Bed, host: Host, verb: str) -> dict[str, Any]:
    """bench/breakdown.py's PROGRAM on `host` with the request fabserve sends for `verb`."""
    try:
        from tasks import payload, remote, settings
        from tasks.config import merged
        values = merged({}, {"project": PROJECT, "port": PORT})
        request = remote.request_line(settings.request(verb, values, None))
        digest = payload.payload()[0]
    except Exception as exc:  # internals, not an API: losing the host's phases beats losing the run
        log(f"bench: cannot build the agent's {verb} request ({exc!r}); no host phases")
        return {"error": f"no request: {exc!r}"}
    return breakdown.run_on_host(["ssh", "-F", str(bed.ssh_config), host.alias], values["agent_python"],
                                 digest, request)


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
