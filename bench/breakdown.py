"""Where an agent call spends its time on the host, phase by phase: the
interpreter's start, loading the agent from its cache (unmarshal, then the
modules' execution and their standard-library imports), and the verb's own
work, with the /proc files it reads (by kind), its whole-/proc scans, the
signals it sends and its waits. And the client's start-up imports by package.

The host side is PROGRAM: it does what the loader does, timing each phase,
with the file and signal calls counted around the verb, and ends with one
MARK line on stderr. It runs the real cached agent on the real request."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Sequence
from typing import Any

MARK = "@@breakdown@@ "
# Runs on the host as `python3 -E -S -c BOOT HASH PROGRAM`, the request on stdin
# as the agent gets it; the agent must be cached there (any earlier call did it).
PROGRAM = r"""
import builtins, marshal, os, select, sys, time
clock = time.perf_counter
program = sys.argv.pop()
digest = sys.argv[1]
path = os.path.join(os.path.expanduser('~'), '.cache', 'fabserve', 'agent-%s-%s' % (digest, sys.implementation.cache_tag))
began = clock()
with open(path, 'rb') as handle:
    codes = marshal.load(handle)
loaded = clock()
boot = {}
exec(codes['boot'], boot)
boot['install'](codes)
before = set(sys.modules)
from fabserve_agent.dispatch import main
imported = clock()
reads, scans, signals, waits = {}, [0], [], [0, 0.0]

def kind(name):
    parts = name.split('/')[2:]
    if parts and parts[0].isdigit():
        parts[0] = 'PID'
    if len(parts) > 2 and parts[1] in ('fd', 'ns', 'task'):
        parts = parts[:2] + ['*']
    return '/proc/' + '/'.join(parts)

def counted(real, scan=False):
    def call(name, *args, **kwargs):
        if isinstance(name, str) and name.startswith('/proc'):
            if scan and name.rstrip('/') == '/proc':
                scans[0] += 1
            else:
                reads[kind(name)] = reads.get(kind(name), 0) + 1
        return real(name, *args, **kwargs)
    return call

def signalled(real):
    def call(pid, sig):
        if sig:
            signals.append((clock(), int(sig)))
        return real(pid, sig)
    return call

def waited(real):
    def call(*args):
        waits[0] += 1
        start = clock()
        try:
            return real(*args)
        finally:
            waits[1] += clock() - start
    return call

class Poll(object):
    def __init__(self):
        self.real = real_poll()
        self.register = self.real.register
        self.poll = waited(self.real.poll)

builtins.open = counted(builtins.open)
os.open, os.stat, os.lstat, os.readlink = (counted(os.open), counted(os.stat), counted(os.lstat),
                                           counted(os.readlink))
os.listdir = counted(os.listdir, scan=True)
os.kill, os.killpg = signalled(os.kill), signalled(os.killpg)
time.sleep = waited(time.sleep)
real_poll, select.poll = select.poll, Poll
working = clock()
try:
    code = main()
except SystemExit as exc:
    code = exc.code
done = clock()
import json, subprocess
starts = []
for _ in range(3):
    start = clock()
    subprocess.call([sys.executable, '-E', '-S', '-c', 'pass'])
    starts.append(clock() - start)
agent = sorted(name for name in set(sys.modules) - before if name.startswith('fabserve_agent'))
sys.stderr.write('@@breakdown@@ ' + json.dumps({
    'interpreter_start': sorted(starts)[1], 'unmarshal': loaded - began, 'imports': imported - loaded,
    'modules': agent, 'stdlib_modules': len([name for name in set(sys.modules) - before
                                             if not name.startswith('fabserve_agent')]),
    'work': done - working, 'exit': code, 'proc_reads': reads, 'proc_scans': scans[0],
    'signals': [[round(at - working, 4), sig] for at, sig in signals],
    'after_first_signal': done - signals[0][0] if signals else None,
    'waits': waits[0], 'waited': waits[1]}) + '\n')
"""
BOOT = "import sys,binascii;exec(binascii.a2b_base64(sys.argv[-1]))"


def host_command(agent_python: str, digest: str) -> str:
    """The shell command that runs PROGRAM on the host with the agent's hash."""
    word = base64.b64encode(PROGRAM.encode("ascii")).decode("ascii")
    return f"{agent_python} -E -S -c '{BOOT}' {digest} {word}"


def marked(stderr: str, mark: str) -> dict[str, Any] | None:
    """The JSON object on the last line of `stderr` that starts with `mark`; None without one."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(mark):
            found = json.loads(line[len(mark):])
            return found if isinstance(found, dict) else None
    return None


def parse(stderr: str) -> dict[str, Any] | None:
    """PROGRAM's findings, from the MARK line of its stderr; None without one."""
    return marked(stderr, MARK)


def agent_seconds(found: dict[str, Any]) -> float:
    """The agent's whole time on the host: its interpreter, loading, its work."""
    return found["interpreter_start"] + found["unmarshal"] + found["imports"] + found["work"]


# Packages the client imports, by the first part of their name; invoke's vendored
# yaml is yaml's. Everything else is the standard library (or a small dependency).
PACKAGES = ("fabric", "invoke", "paramiko", "yaml", "cryptography", "tasks", "fabserve", "fabfile", "bench")


def imports_by_package(stderr: str) -> dict[str, float]:
    """Seconds of `python -X importtime` output's self times summed by package
    (PACKAGES, else "other"): what the client's start-up spends on each."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if not match:
            continue
        name = match.group(2)
        root = "yaml" if ".vendor.yaml" in name else name.split(".")[0]
        key = "fabserve (ours)" if root in ("tasks", "fabserve", "fabfile") else (
            root if root in PACKAGES else "other (stdlib, ...)")
        totals[key] = totals.get(key, 0.0) + int(match.group(1)) / 1e6
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def run_on_host(ssh: Sequence[str], agent_python: str, digest: str, request: str) -> dict[str, Any]:
    """PROGRAM's findings for one call over `ssh` (argv up to the command), or {"error": ...}."""
    done = subprocess.run([*ssh, host_command(agent_python, digest)], input=request, capture_output=True,
                          text=True, timeout=120)
    found = parse(done.stderr)
    if found is None:
        return {"error": f"no breakdown (exit {done.returncode}): {done.stderr.strip()[-300:]}"}
    return found


# Runs a `fab` call (its arguments after -c's program) with the client's phases
# timed in the same run: fab's program imported, then each Connection.open (SSH
# connect, key exchange, auth) and each Connection.run (the command's round trip,
# the connect included), and the end; one CLIENT_MARK line on stderr at exit.
CLIENT_MARK = "@@client@@ "
CLIENT = """
import atexit, json, sys, time
began = time.perf_counter()
import fabric.main
from fabric import Connection
imported = time.perf_counter()
marks = {}

def timed(name, real):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            marks.setdefault(name, (start, time.perf_counter()))
    return call

Connection.open = timed('open', Connection.open)
Connection.run = timed('run', Connection.run)
atexit.register(lambda: sys.stderr.write('@@client@@ ' + json.dumps(dict(
    imports=imported - began, marks=dict((name, [start - began, end - began]) for name, (start, end) in marks.items()),
    total=time.perf_counter() - began)) + '\\n'))
sys.argv[0] = 'fab'
fabric.main.program.run()
"""


def parse_client(stderr: str) -> dict[str, Any] | None:
    """CLIENT's timings, from the CLIENT_MARK line of its stderr; None without one."""
    return marked(stderr, CLIENT_MARK)


def rows(verb: str, wall: float, client: dict[str, Any] | None,
         host: dict[str, Any]) -> list[tuple[str, float | None]]:
    """(what, seconds) of one call, in the order the time passes, from one run of
    CLIENT (wall: that run's, spawn to exit) and the agent's phases on the host.
    The command's round trip less the agent's time is the SSH channel, sshd's
    session and the login shell, and the result's way back."""
    out: list[tuple[str, float | None]] = [(f"{verb}: whole call (fab, wall of this run)", wall)]
    if client is None or "run" not in client["marks"]:
        return out + [("(no client timings)", None)]
    run_start, run_end = client["marks"]["run"]
    open_start, open_end = client["marks"].get("open", (run_start, run_start))
    connect = open_end - open_start
    out += [("client: interpreter start and exit", wall - client["total"]),
            ("client: imports of fab's program (fabric, invoke, paramiko, ...)", client["imports"]),
            ("client: fab set-up (the fabfile: fabserve's imports; config; tasks; -H)", run_start - client["imports"]),
            ("SSH connect + key exchange + auth", connect),
            ("command round trip (channel, agent, result)", run_end - run_start - connect)]
    if "error" not in host:
        out += [("  remote: interpreter start (-E -S)", host["interpreter_start"]),
                ("  remote: agent from cache: unmarshal", host["unmarshal"]),
                ("  remote: agent from cache: module execution + stdlib imports", host["imports"]),
                (f"  remote: {verb}'s own work", host["work"]),
                ("  the rest: SSH channel, sshd session + login shell, result back",
                 run_end - run_start - connect - agent_seconds(host))]
    out.append(("client: the result shown, exit", client["total"] - run_end))
    return out


def package_line(imports: dict[str, float]) -> str:
    """The client's imports by package, as -X importtime reports them (it inflates them)."""
    return "client imports by package (-X importtime): " + ", ".join(
        f"{name} {seconds * 1000:.0f} ms" for name, seconds in imports.items())


def host_lines(host: dict[str, Any]) -> list[str]:
    """What the agent did on the host, in words, for the report."""
    if "error" in host:
        return [host["error"]]
    reads = ", ".join(f"{name} x{count}" for name, count in sorted(host["proc_reads"].items(),
                                                                 key=lambda item: -item[1]))
    lines = [f"agent modules loaded: {len(host['modules'])} ({', '.join(name.split('.')[-1] for name in host['modules'])});"
             f" standard-library modules imported: {host['stdlib_modules']}",
             f"whole-/proc scans: {host['proc_scans']}; /proc reads: {sum(host['proc_reads'].values())} ({reads})"]
    if host["signals"]:
        sent = ", ".join(f"{sig} at {at * 1000:.1f} ms" for at, sig in host["signals"])
        lines.append(f"signals: {sent}; after the first: {host['after_first_signal'] * 1000:.1f} ms to the result")
    lines.append(f"waits (sleeps, polls): {host['waits']}, {host['waited'] * 1000:.1f} ms in all")
    return lines
