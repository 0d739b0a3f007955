"""What another local user can learn of a `--env` secret, over the real sshd and
locally: a second unprivileged account reads every command line of the test
user's processes (/proc/PID/cmdline, ps) while a server with a TTL starts, a
`manage` command and a `status` run, and decodes each word as an attacker would
(base64, then zlib). The secret is in none of them, the TTL watchdog's command
line is short, and the state files holding the env are the user's alone."""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
import stat
import subprocess
import uuid
import zlib
from pathlib import Path

from bed.procs import cmdline
from bed.target import OTHER_USER
from bed.users import runuser_argv
from helpers import free_port, group_members, where

# Run as the other account: every command line of the test user's processes it
# can see, gathered until its stdin closes, as hex (one JSON list on the last line).
SCANNER = r"""
import json, os, select, sys
uid = int(sys.argv[1])
seen = set()
def scan():
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                if os.stat('/proc/' + name).st_uid == uid:
                    with open('/proc/%s/cmdline' % name, 'rb') as handle:
                        seen.add(handle.read())
            except OSError:
                pass
scan()
print('ready', flush=True)
while not select.select([sys.stdin], [], [], 0.002)[0]:
    scan()
scan()
print(json.dumps(sorted(line.hex() for line in seen)))
"""
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{12,}={0,2}")
WATCHDOG_ARGV_MAX = 256  # bytes: an interpreter, four options and a one-line program


def readings(data: bytes) -> list[bytes]:
    """`data` and what an attacker decodes from it: each base64 run, and that
    run zlib-decompressed."""
    found = [data]
    for match in BASE64_RUN.finditer(data):
        run = match.group(0)
        try:
            raw = base64.b64decode(run + b"=" * (-len(run) % 4))
        except binascii.Error:
            continue
        found.append(raw)
        try:
            found.append(zlib.decompress(raw))
        except zlib.error:
            pass
    return found


def leaks(data: bytes, secret: bytes) -> bool:
    return any(secret in reading for reading in readings(data))


def as_other(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(runuser_argv(OTHER_USER, argv), cwd="/", capture_output=True, timeout=60, **kwargs)


def test_no_command_line_carries_an_env_secret(run, site, target, other_user):
    secret = f"fabserve-secret-{uuid.uuid4().hex}"
    port = free_port()
    scanner = subprocess.Popen(runuser_argv(OTHER_USER, ["/usr/bin/python3", "-c", SCANNER, str(target.uid)]),
                               cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert scanner.stdout.readline() == "ready\n"
        started = run("start", *where(site, port), "--ttl", "1h", "--env", f"SECRET={secret}")
        assert started.returncode == 0, started.stdout + started.stderr
        data = started.json
        code = "import os, time; time.sleep(1); print(len(os.environ['SECRET']))"
        managed = run("manage", shlex.join(["shell", "-c", code]), "--project", str(site), "--env", f"SECRET={secret}")
        assert managed.returncode == 0 and managed.json["output_tail"][-1] == str(len(secret)), managed.stdout
        # Configured env travels in every request, a status's too.
        status = run("status", *where(site, port), env={"FABRIC_FABSERVE_ENV": f"SECRET={secret}"})
        assert status.returncode == 0, status.stdout + status.stderr
        ps = as_other(["ps", "-eo", "pid,user,args", "--width", "100000"], text=True)
        assert ps.returncode == 0, ps.stderr
    finally:
        out, _ = scanner.communicate("", timeout=60)
    seen = [bytes.fromhex(line) for line in json.loads(out.splitlines()[-1])]
    # The client's own command line (local mode: fab runs as the test user) holds
    # the --env word the user typed: theirs to keep, not fabserve's to hide.
    client = str(target.venv / "bin" / "fab").encode()
    ours = [line for line in seen if client not in line]
    assert any(b"fabserve-agent" in line for line in ours), "the scanner saw no agent run"
    assert not [line[:200] for line in ours if leaks(line, secret.encode())]
    assert any(b"fabserve-watchdog" in line for line in ours), "the scanner saw no watchdog"
    shown = [line for line in ps.stdout.splitlines() if client.decode() not in line]
    assert not [line[:200] for line in shown if leaks(line.encode(), secret.encode())]

    watchdogs = [pid for pid in group_members(data["pid"]) if pid not in data["pids"]]
    assert len(watchdogs) == 1, (group_members(data["pid"]), data["pids"])
    title = Path(f"/proc/{watchdogs[0]}/cmdline").read_bytes()
    assert b"fabserve-watchdog" in title and len(title) <= WATCHDOG_ARGV_MAX, cmdline(watchdogs[0])

    # Where the env does live: the server's environment and instance.json, both the user's alone.
    assert f"SECRET={secret}".encode() in Path(f"/proc/{data['pid']}/environ").read_bytes().split(b"\0")
    state = Path(data["state_dir"])
    assert secret in (state / "instance.json").read_text()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("instance.json", "server.json", "server.pid", "server.log"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    for path in (f"/proc/{data['pid']}/environ", state / "instance.json"):
        denied = as_other(["cat", str(path)])
        assert denied.returncode != 0 and secret.encode() not in denied.stdout, path
    assert run("stop", *where(site, port)).returncode == 0
