"""`logs` end to end, over the real sshd and in local mode: a 100 MB log's last
100000 lines, the log's checks, `logs --follow` across a truncation in place, and
one SIGINT ending a follow on both sides."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bed.fab import ended, interrupt
from bed.users import runuser_argv, user_env
from helpers import REPO, alive, free_port, wait_for, where

LINES = 100_000
# Written as the test user: 1 MiB chunks of numbered lines, 100 of them, then a last line of its own.
FILL = """
import sys
path, chunks = sys.argv[1], int(sys.argv[2])
line = b"%09d " + b"x" * 90 + b"\\n"
per_chunk = (1 << 20) // len(line % 0)
with open(path, "ab") as log:
    for chunk in range(chunks):
        base = chunk * per_chunk
        log.write(b"".join(line % (base + index) for index in range(per_chunk)))
    log.write("the last line, ünïcödé\\n".encode())
"""


def stopped_instance(run, site) -> tuple[list[str], Path]:
    """An instance that ran once and stopped, so its log exists: its flags and log."""
    flags = where(site, free_port())
    start = run("start", *flags)
    assert start.returncode == 0, start.stderr + start.stdout
    assert run("stop", *flags).returncode == 0
    return flags, Path(start.json["log"])


def test_logs_of_a_100_mb_log_give_exactly_the_lines_asked(run, site, as_user):
    flags, log = stopped_instance(run, site)
    filled = as_user(["python3", "-c", FILL, str(log), "100"])
    assert filled.returncode == 0, filled.stderr
    assert log.stat().st_size > 100_000_000

    plain = run("logs", *flags, "--lines", str(LINES), json=False)
    assert plain.returncode == 0, plain.stderr
    shown = plain.stdout.split("\n")
    assert shown[-1] == ""  # every line ends with a newline
    assert len(shown) - 1 == LINES
    assert shown[-2] == "the last line, ünïcödé"
    assert shown[0].endswith("x" * 90) and int(shown[-3].split()[0]) - int(shown[0].split()[0]) == LINES - 2

    data = run("logs", *flags, "--lines", str(LINES))
    assert data.returncode == 0, data.stderr
    assert data.json["ok"] and data.json["state"] == "stopped"
    assert len(data.json["lines"]) == LINES and data.json["lines"] == shown[:-1]
    assert data.json["message"] == f"{LINES} lines of {log}"


def test_json_logs_refuse_more_lines_than_one_object_can_carry_before_connecting(run, site):
    result = run("logs", *where(site, free_port()), "--lines", "1000001")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().endswith("--lines must be at most 1000000 with --json (the lines travel in one "
                                          "object), not 1000001; without --json they stream")
    assert len(result.stderr.strip().splitlines()) == 1


def test_logs_refuse_a_symlinked_log(run, site, as_user):
    flags, log = stopped_instance(run, site)
    secret = log.parent.parent / "not-the-log"
    assert as_user(["sh", "-c", 'echo private > "$1" && ln -sf "$1" "$2"', "sh", str(secret), str(log)]).returncode == 0
    try:
        for extra in ([], ["--follow"]):
            result = run("logs", *flags, *extra, json=False)
            assert result.returncode == 1 and "private" not in result.stdout
            assert len(result.stderr.strip().splitlines()) == 1
            assert result.stderr.strip().endswith(f": logs failed: refusing log {log}: it is a symlink")
    finally:
        secret.unlink()


def start_follower(fab, target, flags: list[str]) -> tuple[subprocess.Popen, queue.Queue]:
    cmd = [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config), "-H", target.alias,
           "logs", *flags, "--follow", "--lines", "2"]
    follower = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    return follower, lines


def wait_line(lines: queue.Queue, text: str, timeout: float = 30) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(text in line for line in seen):
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            pass
    return seen


def followers_of(log: Path) -> list[int]:
    """The agents that hold `log` open: its followers (other tests' agents never do)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (b"fabserve-agent" in Path(f"/proc/{name}/cmdline").read_bytes()
                    and any(os.readlink(f"/proc/{name}/fd/{fd}") == str(log) for fd in os.listdir(f"/proc/{name}/fd"))):
                found.append(int(name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("cut", [["truncate", "-s", "0"], ["sh", "-c", ': > "$0"']])
def test_follow_goes_on_from_the_start_of_a_log_truncated_in_place(fab, target, site, as_user, cut):
    flags = where(site, free_port())
    assert fab("start", *flags, "--json").returncode == 0
    log = Path(fab("status", *flags, "--json").json["log"])
    assert as_user(["sh", "-c", 'printf "before 1\\nbefore 2\\n" >> "$1"', "sh", str(log)]).returncode == 0
    follower, lines = start_follower(fab, target, flags)
    try:
        assert any("before 2" in line for line in wait_line(lines, "before 2")), "the tail comes first"
        assert as_user([*cut, str(log)]).returncode == 0
        assert log.stat().st_size == 0
        assert as_user(["sh", "-c", 'echo "after the cut" >> "$1"', "sh", str(log)]).returncode == 0
        seen = wait_line(lines, "after the cut")
        assert any(line.rstrip("\n") == "after the cut" for line in seen), seen
        agents = followers_of(log)
        assert len(agents) == 1
    finally:
        os.killpg(follower.pid, signal.SIGTERM)
        follower.wait(timeout=10)
    # Its SSH session gone, the follower on the target ends too, with no new log line.
    assert wait_for(lambda: not any(alive(pid) for pid in agents), timeout=10)
    assert fab("stop", *flags).returncode == 0


def follow_argv(target, product, mode: str, flags: list[str]) -> tuple[list[str], Path, dict[str, str]]:
    """`fab logs --follow` as the run fixture would start it in mode: argv, cwd, environment."""
    args = ["logs", *flags, "--follow", "--lines", "2"]
    if mode == "local":
        argv = runuser_argv(target.user, [target.venv / "bin" / "fab", "-r", product, *args])
        return argv, target.home, user_env(target.user, target.home, None)
    return ([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config), "-H", target.alias,
             *args], REPO, dict(os.environ))


def follow_two_lines(run, mode, target, product, site, as_user) -> tuple[list[str], Path, subprocess.Popen[bytes]]:
    """A started server whose log holds two lines, and `fab logs --follow --lines 2`
    of it with its stdout a pipe: (flags, log, follower)."""
    flags = where(site, free_port())
    assert run("start", *flags).returncode == 0
    log = Path(run("status", *flags).json["log"])
    assert as_user(["sh", "-c", 'printf "before 1\\nbefore 2\\n" >> "$1"', "sh", str(log)]).returncode == 0
    argv, cwd, env = follow_argv(target, product, mode, flags)
    return flags, log, subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)


def test_follow_ends_quietly_with_exit_0_when_its_reader_closes(run, mode, target, product, site, as_user):
    """`fab logs --follow | head -1`: the client and the agent following the log both end."""
    flags, log, follower = follow_two_lines(run, mode, target, product, site, as_user)
    try:
        first = follower.stdout.readline()
        agents = followers_of(log)
        follower.stdout.close()
        # Lines written after the reader left: the next write finds the pipe closed.
        for index in range(3):
            assert as_user(["sh", "-c", f'echo "after {index}" >> "$1"', "sh", str(log)]).returncode == 0
        _, stderr = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGTERM)
            follower.wait(timeout=10)
    assert first == b"before 1\n"
    assert len(agents) == 1
    assert follower.returncode == 0, stderr
    assert stderr == b""
    assert wait_for(lambda: not any(alive(pid) for pid in agents), timeout=10)
    assert run("stop", *flags).returncode == 0


def test_an_idle_follow_ends_too_when_its_reader_closes(run, mode, target, product, site, as_user):
    """No line comes after the reader left, so no write can find the pipe closed:
    fab notices on its own, and the agent following the log ends with it."""
    flags, log, follower = follow_two_lines(run, mode, target, product, site, as_user)
    try:
        assert follower.stdout.readline() == b"before 1\n"
        assert follower.stdout.readline() == b"before 2\n"
        agents = followers_of(log)
        follower.stdout.close()
        _, stderr = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGTERM)
            follower.wait(timeout=10)
    assert len(agents) == 1
    assert follower.returncode == 0 and stderr == b"", stderr
    assert wait_for(lambda: not any(alive(pid) for pid in agents), timeout=10)
    assert run("stop", *flags).returncode == 0



def interrupt_a_follow(fab, local: bool, site, as_user, whom: str) -> None:
    """Follow a running server's log, send one SIGINT once the tail came, and check that
    fab exits 0 with nothing more to say and the agent following the log is gone."""
    flags = where(site, free_port())
    assert fab("start", *flags, "--json", local=local).returncode == 0
    log = Path(fab("status", *flags, "--json", local=local).json["log"])
    assert as_user(["sh", "-c", 'printf "before 1\\nbefore 2\\n" >> "$1"', "sh", str(log)]).returncode == 0
    with ended(fab.spawn("logs", *flags, "--follow", "--lines", "2", local=local,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)) as follower:
        assert follower.stdout.readline() == b"before 1\n"
        assert follower.stdout.readline() == b"before 2\n"
        agents = followers_of(log)
        assert len(agents) == 1
        out, err = interrupt(follower, whom)
    assert follower.returncode == 0, err
    assert out == b"" and err == b""
    assert wait_for(lambda: not any(alive(pid) for pid in agents), timeout=15)
    assert fab("stop", *flags, local=local).returncode == 0


def test_one_sigint_to_the_terminals_group_ends_a_follow_with_exit_0(fab, mode, site, as_user):
    """Ctrl-C in a terminal: SIGINT to fab's whole foreground group (locally the agent
    following the log is in it too, over SSH it is not)."""
    interrupt_a_follow(fab, mode == "local", site, as_user, "group")


def test_one_sigint_to_fab_alone_ends_a_local_follow_with_exit_0(fab, site, as_user):
    """`kill -INT` of fab's PID: locally the agent gets no signal of its own."""
    interrupt_a_follow(fab, True, site, as_user, "fab")
