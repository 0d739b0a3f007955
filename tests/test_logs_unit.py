"""The agent's log reading on real files, without sshd: the tail read backwards in
blocks, the log's checks, the streamed output and the result line after it, and
`--follow` through a pipe (truncation in place, the reader going away)."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from invoke import Config, Context

from tasks import remote, settings
from tasks.agent import logfiles, protocol, state
from tasks.agent.logfiles import BLOCK, read_tail, tail_span, tail_text
from tasks.agent.protocol import MARKER
from tasks.config import merged
from tasks.runners import RUNNERS
from helpers import REPO



def reference(data: bytes, lines: int) -> list[str]:
    """What tail -n gives, as text lines: newline-terminated pieces, CR of CRLF dropped."""
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    shown = pieces[-lines:] if lines > 0 else []
    return [piece.decode("utf-8", "replace").removesuffix("\r") for piece in shown]


def tail_of(data: bytes, lines: int, start: int = 0) -> list[str]:
    return read_tail(io.BytesIO(data), lines, start)


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n", b"one", b"one\n", b"one\ntwo", b"one\ntwo\n",
                                  b"one\n\nthree\n", b"one\r\ntwo\r\n", b"one\r\ntwo"])
@pytest.mark.parametrize("lines", [0, 1, 2, 3, 10])
def test_the_tail_is_the_last_lines_as_tail_n_counts_them(data: bytes, lines: int) -> None:
    assert tail_of(data, lines) == reference(data, lines)


def test_an_empty_file_has_no_lines() -> None:
    assert tail_span(io.BytesIO(b""), 5) == (0, 0, 0)
    assert tail_of(b"", 5) == []


def test_a_missing_final_newline_still_ends_the_last_line() -> None:
    assert tail_of(b"a\nb\nc", 2) == ["b", "c"]
    assert tail_of(b"a\nb\nc\n", 2) == ["b", "c"]


def test_crlf_lines_lose_their_cr_and_count_once() -> None:
    assert tail_of(b"a\r\nb\r\nc\r\n", 2) == ["b", "c"]


def test_lines_are_split_at_newlines_only() -> None:
    # A form feed or a lone CR (a progress bar) stays inside its line, as for tail -n.
    assert tail_of(b"a\x0cb\nc\rd\n", 2) == ["a\x0cb", "c\rd"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert tail_of(b"ok\n\xff\xfe bad\n", 1) == ["\ufffd\ufffd bad"]


@pytest.mark.parametrize("shift", [-2, -1, 0, 1, 2])
def test_a_block_boundary_inside_a_line_splits_nothing(shift: int) -> None:
    # The newline before the last line sits around BLOCK bytes from the end.
    long_line = b"x" * (BLOCK + shift) + b"\n"
    data = b"first\n" + b"second\n" + long_line
    assert tail_of(data, 1) == [long_line[:-1].decode()]
    assert tail_of(data, 2) == ["second", long_line[:-1].decode()]
    assert tail_of(data, 3) == ["first", "second", long_line[:-1].decode()]


def test_many_blocks_of_short_lines_give_exactly_the_count_asked() -> None:
    data = b"".join(f"line {index}\n".encode() for index in range(100_000))
    for lines in (1, 4095, 4096, 65_537, 99_999, 100_000, 100_001):
        tail = tail_of(data, lines)
        assert tail == reference(data, lines)
        offset, end, count = tail_span(io.BytesIO(data), lines)
        assert count == len(tail) and end == len(data)
        assert data[offset:].count(b"\n") == count


def test_the_tail_reads_only_the_blocks_it_needs() -> None:
    data = b"".join(f"line {index}\n".encode() for index in range(200_000))

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            Counting.read_bytes += len(chunk)
            return chunk

    handle = Counting(data)
    tail_span(handle, 10)
    assert Counting.read_bytes <= BLOCK + 1


def test_start_offset_bounds_the_tail() -> None:
    data = b"old 1\nold 2\nnew 1\nnew 2\n"
    start = data.index(b"new 1")
    assert tail_of(data, 10, start) == ["new 1", "new 2"]
    assert tail_of(data, 1, start) == ["new 2"]
    assert tail_span(io.BytesIO(data), 10, start) == (start, len(data), 2)
    assert tail_of(data, 10, len(data)) == []


def test_read_tail_leaves_the_file_at_its_end() -> None:
    handle = io.BytesIO(b"a\nb\nc\n")
    read_tail(handle, 1)
    assert handle.tell() == 6


def test_tail_text_keeps_only_the_count_asked() -> None:
    assert tail_text(b"a\nb\nc\n", 2) == ["b", "c"]
    assert tail_text(b"a\nb\nc\n", 0) == []


# --- the agent as a program: checks, the streamed tail and its result line


def request(state: Path, project: Path, **extra: Any) -> dict[str, Any]:
    req = settings.request("logs", merged({}, {"project": str(project), "state_dir": str(state)}), [])
    req.update(extra)
    return req


@pytest.fixture
def instance(tmp_path: Path) -> state.Instance:
    project = tmp_path / "site"
    project.mkdir()
    (project / "manage.py").write_text("")
    req = request(tmp_path / "state", project)
    inst = state.Instance(state.Host(state.Request(req)), state.Request(req))
    os.makedirs(inst.dir, mode=0o700)
    os.chmod(inst.base, 0o700)
    return inst


def write_log(inst: state.Instance, data: bytes) -> Path:
    log = Path(inst.log)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return log


# The agent's entry, run from the checkout.
AGENT_ARGV = [sys.executable, "-c", "import sys; from tasks.agent.dispatch import main; sys.exit(main())"]


def request_line(req: dict[str, Any]) -> bytes:
    """The request as the agent reads it from its stdin."""
    return json.dumps(req).encode() + b"\n"


def run_agent(inst: state.Instance, **extra: Any) -> tuple[int, bytes, dict[str, Any] | None]:
    """(exit code, what came before the result line, the result)."""
    req = dict(inst.req.fields(), **extra)
    done = subprocess.run(AGENT_ARGV, input=request_line(req), capture_output=True, timeout=60, cwd=REPO)
    before, _, line = done.stdout.rpartition(MARKER.encode())
    result = json.loads(line) if line else None
    return done.returncode, before, result


def test_streamed_tail_is_the_raw_lines_then_the_result(instance: state.Instance) -> None:
    write_log(instance, b"one\ntwo\r\nthree\n")
    code, before, result = run_agent(instance, stream=True, lines=2)
    assert code == 0 and before == b"two\r\nthree\n"
    assert result["ok"] and result["message"] == f"2 lines of {instance.log}"
    assert "lines" not in result and result["state"] == protocol.STOPPED


def test_streamed_tail_of_a_log_without_final_newline_ends_its_line(instance: state.Instance) -> None:
    write_log(instance, b"one\ntwo")
    code, before, result = run_agent(instance, stream=True, lines=5)
    assert code == 0 and before == b"one\ntwo\n" and result["message"].startswith("2 lines")


def test_json_tail_carries_the_lines_in_the_result(instance: state.Instance) -> None:
    write_log(instance, b"one\ntwo\nthree\n")
    code, before, result = run_agent(instance, lines=2)
    assert code == 0 and before.strip() == b""
    assert result["lines"] == ["two", "three"]


def test_no_log_yet_is_a_failed_result_also_when_streaming(instance: state.Instance) -> None:
    for extra in ({"stream": True}, {"follow": True}, {}):
        code, before, result = run_agent(instance, **extra)
        assert code == 1 and before.strip() == b""
        assert result["error"] == f"no log yet at {instance.log}"


def test_a_symlinked_log_is_refused_for_tail_and_follow(instance: state.Instance, tmp_path: Path) -> None:
    elsewhere = tmp_path / "secret"
    elsewhere.write_text("not the server's\n")
    os.symlink(elsewhere, instance.log)
    for extra in ({"stream": True}, {"follow": True}, {}):
        code, before, result = run_agent(instance, **extra)
        assert code == 1 and b"not the server's" not in before
        assert result["error"] == f"refusing log {instance.log}: it is a symlink"


def test_a_log_writable_by_others_is_refused(instance: state.Instance) -> None:
    os.chmod(write_log(instance, b"x\n"), 0o622)
    code, _, result = run_agent(instance, follow=True)
    assert code == 1 and result["error"] == f"refusing log {instance.log}: writable by others (mode 622)"


def test_a_fifo_in_place_of_the_log_is_refused_without_blocking(instance: state.Instance) -> None:
    os.mkfifo(instance.log, 0o600)
    code, _, result = run_agent(instance, follow=True)
    assert code == 1 and result["error"] == f"refusing log {instance.log}: not a regular file"


def test_follow_refuses_a_state_directory_writable_by_others(instance: state.Instance) -> None:
    write_log(instance, b"x\n")
    os.chmod(instance.dir, 0o777)
    code, _, result = run_agent(instance, follow=True)
    assert code == 1 and result["error"].startswith(f"refusing state directory {instance.dir}: writable by others")


def punched_log(inst: state.Instance, count: int = 2000) -> Path:
    """The instance's log of `count` numbered lines, cut to its newest part by punching a hole."""
    log = write_log(inst, b"".join(b"line %d\n" % number for number in range(count)))
    assert logfiles.cut_log(str(log), 8192, ("punch",)) > 0
    return log


def test_a_punched_log_shows_its_marker_then_its_kept_lines_and_no_hole(instance: state.Instance) -> None:
    log = punched_log(instance)
    with open(log, "rb") as handle:
        hole = logfiles.hole_end(handle.fileno())
        kept = handle.read()[hole:].decode().splitlines()
    code, _, result = run_agent(instance, lines=100_000)
    assert code == 0 and result["lines"][1:] == kept and kept[-1] == "line 1999"
    assert result["lines"][0].startswith("--- fabserve ") and result["lines"][0].endswith(f"kept from byte {hole}")
    assert result["message"] == f"{len(kept) + 1} lines of {log}"
    code, before, result = run_agent(instance, stream=True, lines=100_000)
    assert code == 0 and b"\0" not in before and before.decode().splitlines()[1:] == kept
    code, _, result = run_agent(instance, lines=3)
    assert result["lines"] == ["line 1997", "line 1998", "line 1999"]


def test_a_read_meeting_a_hole_punched_meanwhile_goes_on_after_it(instance: state.Instance) -> None:
    log = write_log(instance, b"".join(b"line %d\n" % number for number in range(2000)))
    with open(log, "rb") as handle:
        assert logfiles.cut_log(str(log), 8192, ("punch",)) > 0  # after the reader chose where to begin
        hole = logfiles.hole_end(handle.fileno())
        read = b"".join(logfiles.kept_bytes(handle, 0, log.stat().st_size))
    assert read == log.read_bytes()[hole:] and read.startswith(b"line ")


# --- follow through a pipe


def read_until(stream: Any, text: bytes, timeout: float = 10) -> bytes:
    """Bytes read from a non-blocking pipe until `text` shows up (or the time is up)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        chunk = stream.read()
        if chunk:
            seen += chunk
        else:
            time.sleep(0.05)
    return seen


@pytest.fixture
def follower(instance: state.Instance) -> Any:
    write_log(instance, b"old 1\nold 2\nold 3\n")
    proc = subprocess.Popen(AGENT_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdin.write(request_line(dict(instance.req.fields(), follow=True, lines=2)))
    proc.stdin.close()
    os.set_blocking(proc.stdout.fileno(), False)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def append(inst: state.Instance, data: bytes) -> None:
    with open(inst.log, "ab") as handle:
        handle.write(data)


def test_follow_shows_the_tail_then_what_is_appended(instance: state.Instance, follower: Any) -> None:
    assert read_until(follower.stdout, b"old 3\n") == b"old 2\nold 3\n"
    append(instance, b"new 1\n")
    assert read_until(follower.stdout, b"new 1\n") == b"new 1\n"


@pytest.mark.parametrize("cut", ["truncate", "redirect"])
def test_follow_continues_from_the_start_of_a_log_truncated_in_place(instance: state.Instance, follower: Any,
                                                                     cut: str) -> None:
    assert read_until(follower.stdout, b"old 3\n").endswith(b"old 3\n")
    if cut == "truncate":
        os.truncate(instance.log, 0)
    else:
        subprocess.run(["sh", "-c", ': > "$1"', "sh", instance.log], check=True)
    # Shorter than what was read before, so the shrink shows whenever the follower looks.
    append(instance, b"after\n")
    assert read_until(follower.stdout, b"after\n") == b"after\n"
    assert follower.poll() is None


def numbered(first: int, count: int) -> bytes:
    return b"".join(b"new %d\n" % number for number in range(first, first + count))


def test_follow_goes_on_across_a_punched_cut_showing_nothing_twice(instance: state.Instance,
                                                                  follower: Any) -> None:
    assert read_until(follower.stdout, b"old 3\n").endswith(b"old 3\n")
    append(instance, numbered(0, 2000))
    assert read_until(follower.stdout, b"new 1999\n").endswith(b"new 1999\n")
    assert logfiles.cut_log(instance.log, 8192, ("punch",)) > 0
    append(instance, b"after\n")
    assert read_until(follower.stdout, b"after\n") == b"after\n"


def test_a_follower_behind_a_punched_cut_goes_on_from_the_kept_lines(instance: state.Instance,
                                                                      follower: Any) -> None:
    """What the cut dropped before the follower read it is gone; it must not be
    shown as the hole's NUL bytes."""
    assert read_until(follower.stdout, b"old 3\n").endswith(b"old 3\n")
    os.kill(follower.pid, signal.SIGSTOP)  # our own child, held while the log moves on without it
    try:
        append(instance, numbered(0, 2000))
        assert logfiles.cut_log(instance.log, 8192, ("punch",)) > 0
        append(instance, b"after\n")
    finally:
        os.kill(follower.pid, signal.SIGCONT)
    seen = read_until(follower.stdout, b"after\n")
    with open(instance.log, "rb") as handle:
        kept = handle.read()[logfiles.hole_end(handle.fileno()):]
    assert seen == kept and seen.startswith(b"new ") and seen.endswith(b"new 1999\nafter\n")


def test_follow_ends_once_nothing_reads_its_output(instance: state.Instance, follower: Any) -> None:
    assert read_until(follower.stdout, b"old 3\n").endswith(b"old 3\n")
    follower.stdout.close()
    # No new log line is needed: the follower polls its stdout between reads.
    follower.wait(timeout=10)
    assert follower.returncode == 0


# --- the client: the streamed output passed through, the result kept back


def passed_through(chunks: list[str], prefix: str = "") -> tuple[str, dict[str, Any] | None]:
    out = io.StringIO()
    saved, sys.stdout = sys.stdout, out
    try:
        stream = remote.Passthrough(prefix)
        for chunk in chunks:
            stream.write(chunk)
        result = stream.close()
    finally:
        sys.stdout = saved
    return out.getvalue(), result


def result_line(**fields: Any) -> str:
    return f"{MARKER}{json.dumps(fields)}\n"


def test_passthrough_shows_the_lines_and_keeps_the_result_whatever_the_chunks() -> None:
    text = "one\ntwo\r\nthree\n" + result_line(ok=True, message="3 lines")
    for size in (1, 2, 5, 7, len(text)):
        chunks = [text[index:index + size] for index in range(0, len(text), size)]
        shown, result = passed_through(chunks)
        assert shown == "one\ntwo\r\nthree\n" and result == {"ok": True, "message": "3 lines"}


def test_passthrough_prefixes_every_line() -> None:
    shown, result = passed_through(["a\nb", "\n" + result_line(ok=True)], prefix="web1: ")
    assert shown == "web1: a\nweb1: b\n" and result == {"ok": True}


def test_a_log_line_that_looks_like_a_result_is_shown_when_lines_follow_it() -> None:
    fake = result_line(ok=False)
    shown, result = passed_through(["x\n", fake, "y\n", result_line(ok=True)])
    assert shown == "x\n" + fake + "y\n" and result == {"ok": True}


def test_a_follower_without_a_result_shows_everything() -> None:
    shown, result = passed_through(["x\n", f"{MARKER}not json\n"])
    assert shown == f"x\n{MARKER}not json\n" and result is None
    shown, result = passed_through(["x\nunfinished"])
    assert shown == "x\nunfinished\n" and result is None


def test_login_shell_chatter_before_the_result_on_its_line_is_dropped() -> None:
    assert passed_through(["hello from rc" + result_line(ok=True)]) == ("", {"ok": True})


def test_the_runners_keep_utf8_split_between_reads_and_all_of_a_large_output() -> None:
    text = "ü€-" * 300_000  # 1.8 MB of 6-byte groups: invoke's 1000-byte reads end inside characters
    c = Context(Config(overrides={"runners": RUNNERS}))
    program = "import sys; sys.stdout.buffer.write('\\u00fc\\u20ac-'.encode() * 300000)"
    done = c.run(shlex.join([sys.executable, "-c", program]), hide=True, in_stream=False)
    assert done.stdout == text


def test_the_runners_keep_nothing_an_out_stream_consumes() -> None:
    c = Context(Config(overrides={"runners": RUNNERS}))
    sink = remote.Passthrough("")
    saved, sys.stdout = sys.stdout, io.StringIO()
    try:
        done = c.run(shlex.join([sys.executable, "-c", "print('a'); print('b')"]), hide="stderr",
                     in_stream=False, out_stream=sink)
        sink.close()
        shown = sys.stdout.getvalue()
    finally:
        sys.stdout = saved
    assert shown == "a\nb\n" and done.stdout == ""
