"""The parts of --ttl and bounded logs that need no server: the duration and size
parsers, the bad values' one-line errors, log rotation, and the cut on real files,
also while another process appends to the log."""

import os
import re
import subprocess
import sys
import time

import pytest

from tasks import settings
from tasks.agent import logfiles, ttl
from tasks.config import merged

LINE = "line %06d " + "x" * 40 + "\n"


@pytest.mark.parametrize("value,seconds", [("30m", 1800), ("2h", 7200), ("1d", 86400), ("3s", 3), ("3", 3),
                                           (" 90s ", 90), (45, 45), ("366d", 366 * 86400)])
def test_durations_are_whole_seconds(value, seconds):
    assert settings.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["0", 0, "0s", "5x", "", "-1", "1.5h", "2 h", "²", True, 2.5, "367d", "1w"])
def test_bad_durations_are_refused(value):
    with pytest.raises(settings.Invalid):
        settings.parse_duration(value)


@pytest.mark.parametrize("value,size", [("50M", 50 << 20), ("4K", 4096), ("4096", 4096), ("1g", 1 << 30),
                                        (8192, 8192), ("512k", 512 << 10)])
def test_sizes_are_bytes(value, size):
    assert settings.parse_size(value) == size


@pytest.mark.parametrize("value", ["4095", "1K", "5x", "1.5M", "-1", "", "50MB", True, None])
def test_bad_sizes_are_refused(value):
    with pytest.raises(settings.Invalid):
        settings.parse_size(value)


@pytest.mark.parametrize("flags,config,message", [
    ({"ttl": "0"}, {}, "--ttl must be more than 0 seconds and at most 366d, not '0'"),
    ({"ttl": "5x"}, {}, "--ttl must be a duration such as 30m, 2h or 1d (a bare number is seconds), not '5x'"),
    ({}, {"log_keep": -1}, "fabserve.log_keep must be a whole number, not -1"),
    ({}, {"log_max": "1.5M"}, "fabserve.log_max must be a size in bytes, or with K, M or G, such as 50M, "
                              "not '1.5M'"),
])
def test_bad_lifetime_values_are_one_line_usage_errors(flags, config, message):
    values = merged(config, {"project": "/srv/site", **flags})
    with pytest.raises(settings.UsageError) as caught:
        settings.request("start", values, [])
    assert str(caught.value) == message


def test_the_request_carries_ttl_log_keep_log_max_and_previous():
    req = settings.request("start", merged({}, {"project": "/srv/site", "ttl": "2h"}), [])
    assert (req["ttl"], req["log_keep"], req["log_max"]) == (7200, 5, 50 << 20)
    logs = settings.request("logs", merged({}, {"project": "/srv/site", "previous": True}), [])
    assert logs["previous"] is True and logs["ttl"] is None


def test_rotation_keeps_log_keep_previous_runs(tmp_path):
    log = tmp_path / "server.log"
    for name, text in (("server.log", "run 4"), ("server.log.1", "run 3"), ("server.log.2", "run 2"),
                       ("server.log.7", "old")):
        (tmp_path / name).write_text(text)
    logfiles.rotate_logs(str(tmp_path), str(log), 2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["server.log.1", "server.log.2"]
    assert (tmp_path / "server.log.1").read_text() == "run 4" and (tmp_path / "server.log.2").read_text() == "run 3"
    logfiles.rotate_logs(str(tmp_path), str(log), 5)  # no current log: the others move up
    assert sorted(path.name for path in tmp_path.iterdir()) == ["server.log.2", "server.log.3"]
    (tmp_path / "server.log").write_text("run 5")
    logfiles.rotate_logs(str(tmp_path), str(log), 0)
    assert list(tmp_path.iterdir()) == []


def write_lines(path, first, count):
    with open(path, "a") as handle:
        handle.write("".join(LINE % number for number in range(first, first + count)))


def numbers(lines):
    return [int(line.split()[1]) for line in lines]


# Each way a cut can take (cut_log's `ways`; none left: the copy).
WAYS = {"collapse": ("collapse",), "punch": ("punch",), "copy": ()}


def shown(log):
    """The log's lines as readers show them: after a punched cut its marker line,
    then the lines after the hole."""
    data = log.read_bytes()
    with open(log, "rb") as handle:
        hole = logfiles.hole_end(handle.fileno())
    if hole:
        data = data[:data.index(b"\n") + 1] + data[hole:]
    return data.decode().splitlines()


def kept_size(log):
    """The log's bytes less a punched cut's hole."""
    with open(log, "rb") as handle:
        return os.fstat(handle.fileno()).st_size - logfiles.hole_end(handle.fileno())


@pytest.mark.parametrize("way", WAYS)
def test_a_cut_keeps_the_newest_lines_whole_behind_one_marker(tmp_path, way):
    log = tmp_path / "server.log"
    write_lines(log, 0, 2000)
    size = log.stat().st_size
    assert logfiles.cut_log(str(log), 1 << 20, WAYS[way]) == 0 and log.stat().st_size == size  # under the cap
    dropped = logfiles.cut_log(str(log), 16384, WAYS[way])
    lines = shown(log)
    assert dropped > size - 16384 and kept_size(log) <= 8192 + 4096
    assert lines[0].startswith("--- fabserve ") and "log cut to its newest part" in lines[0]
    kept = numbers(lines[1:])
    assert kept == list(range(kept[0], 2000)) and len(kept) > 100  # whole lines, the newest, in order
    assert all(line == LINE.rstrip("\n") % number for line, number in zip(lines[1:], kept))


@pytest.mark.parametrize("way", WAYS)
def test_a_byte_keeps_its_place_for_a_follower_across_cuts(tmp_path, way):
    log = tmp_path / "server.log"
    for cut in range(2):  # the second cut counts the first one's bytes too
        write_lines(log, 2000 * cut, 2000)
        recent = (LINE % (2000 * cut + 1990)).encode()
        with open(log, "rb") as handle:
            before, offset = logfiles.log_base(handle.fileno()), handle.read().index(recent)
        assert logfiles.cut_log(str(log), 16384, WAYS[way]) > 0
        with open(log, "rb") as handle:
            handle.seek(offset + before - logfiles.log_base(handle.fileno()))
            assert handle.readline() == recent


def test_a_punched_cut_frees_the_front_and_moves_no_byte(tmp_path):
    log = tmp_path / "server.log"
    for cut in range(3):
        write_lines(log, 2000 * cut, 2000)
        data = log.read_bytes()
        assert logfiles.cut_log(str(log), 16384, ("punch",)) > 0
        after = log.read_bytes()
        with open(log, "rb") as handle:
            hole, base = logfiles.hole_end(handle.fileno()), logfiles.log_base(handle.fileno())
        # Nothing moved: the size is the same, the kept lines are where they were
        # written, and the hole reads as NUL bytes up to the first of them.
        assert len(after) == len(data) and after[hole:] == data[hole:] and base == 0
        assert data[hole - 1:hole] == b"\n" and after[logfiles.PUNCHED_MARK:hole].count(0) == hole - logfiles.PUNCHED_MARK
        mark = after[:logfiles.PUNCHED_MARK].rstrip(b" \n").decode()
        assert mark.endswith(f"; {hole} bytes dropped in all; kept from byte {hole}")
        assert log.stat().st_blocks * 512 < len(after) // 2  # the hole takes no space
    assert numbers(shown(log)[1:])[-1] == 5999


def test_a_cut_that_fails_after_a_punch_was_refused_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    """The marker a punch writes first is undone when the file system refuses the
    punch, so a copy that then fails too leaves every byte where it was."""
    log = tmp_path / "server.log"
    write_lines(log, 0, 2000)
    data = log.read_bytes()

    def failing_copy(fd, source, end, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logfiles, "punch", lambda fd, start, end: False)
    monkeypatch.setattr(logfiles, "copy_within", failing_copy)
    assert logfiles.cut_log(str(log), 16384, ("punch",)) == 0 and log.read_bytes() == data


def test_a_symlinked_or_other_file_is_never_cut(tmp_path):
    real = tmp_path / "real"
    write_lines(real, 0, 2000)
    link = tmp_path / "server.log"
    link.symlink_to(real)
    size = real.stat().st_size
    assert logfiles.cut_log(str(link), 4096) == 0 and real.stat().st_size == size
    os.mkfifo(tmp_path / "fifo")
    assert logfiles.cut_log(str(tmp_path / "fifo"), 4096) == 0


# Appends numbered lines of one length with O_APPEND, as the server's stdout
# does, as fast as it can, until told to stop; prints the last number.
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
number = 0
while not os.path.exists(sys.argv[2]):
    os.write(fd, (sys.argv[3] % number).encode())
    number += 1
os.write(fd, (sys.argv[3] % number).encode())
print(number)
"""
RACED = "line %09d " + "x" * 40 + "\n"  # one length for every number a fast writer reaches
RACED_LINE = re.compile(r"^line ([0-9]{9}) x{40}$")


def race(log, cuts):
    """Cut `log` over and over while a writer appends to it as fast as it can,
    until `cuts` cuts were made; what readers then find (see accounted)."""
    done = log.with_name("done")
    log.write_bytes(b"")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(done), RACED],
                              stdout=subprocess.PIPE, text=True)
    made = 0
    deadline = time.monotonic() + 120  # bounds a broken run only; the count ends a good one
    try:
        while made < cuts and time.monotonic() < deadline:
            made += logfiles.cut_log(str(log), 65536) > 0
    finally:
        done.touch()
        last = int(writer.communicate(timeout=60)[0])
    assert made == cuts, f"only {made} cuts: the writer was too slow for the cuts to race it"
    return accounted(log, last)


def accounted(log, last):
    """Where each numbered line (RACED) the log shows is, against where it was
    written (line N at N times the line's length), with the bytes the markers say
    were dropped counted: a line lost by any cut, or written twice, moves every
    line after it; a cut that splits or garbles a line shows too."""
    length = len(RACED % 0)
    with open(log, "rb") as handle:
        base, hole = logfiles.log_base(handle.fileno()), logfiles.hole_end(handle.fileno())
        data = handle.read()
    offset = hole or data.index(b"\n") + 1
    misplaced, garbled = 0, []
    for line in data[offset:].decode("utf-8", "replace").splitlines(keepends=True):
        found = RACED_LINE.match(line)
        if found is None:
            garbled.append(line)
        elif int(found.group(1)) * length != offset + base:
            misplaced += 1
        offset += len(line)
    return {"marker": data.startswith(b"--- fabserve ") and b"log cut to its newest part" in data.split(b"\n")[0],
            "lost lines": ((last + 1) * length - (len(data) + base)) / length,
            "misplaced": misplaced, "garbled": garbled[:3]}


LOSSLESS = {"marker": True, "lost lines": 0, "misplaced": 0, "garbled": []}


def can(way, directory):
    """Whether the file system under `directory` can cut a file's front `way` in place."""
    probe = directory / "probe"
    probe.write_bytes(b"x" * 3 * 65536)
    with open(probe, "r+b") as handle:
        if way == "collapse":
            return logfiles.collapse_front(handle.fileno(), 65536)
        return logfiles.punch(handle.fileno(), 0, 65536)


def test_cuts_while_a_writer_appends_lose_no_line_where_the_front_is_freed_in_place(tmp_path):
    """Where the file system collapses ranges or punches holes (all local Linux
    ones fabserve meets) no line may go missing; the copy's one window is in
    docs/how-it-works.md ("Logs are bounded"), and tests/test_lifetimes.py races
    each file system it can make."""
    assert can("collapse", tmp_path) or can("punch", tmp_path), "this file system frees no front in place"
    assert race(tmp_path / "server.log", 50) == LOSSLESS


def test_lines_longer_than_the_marker_room_keep_their_places_too(tmp_path):
    log = tmp_path / "server.log"
    long_line = "long %06d " + "y" * 500 + "\n"
    log.write_text("".join(long_line % number for number in range(400)))
    recent = (long_line % 390).encode()
    offset = log.read_bytes().index(recent)
    assert logfiles.cut_log(str(log), 65536) > 0
    with open(log, "rb") as handle:
        assert handle.readline().startswith(b"--- fabserve ")
        handle.seek(offset - logfiles.log_base(handle.fileno()))
        assert handle.readline() == recent


def test_a_log_ending_with_the_expiry_line_says_when_the_ttl_ended(tmp_path):
    log = tmp_path / "server.log"
    inst = type("Inst", (), {"log": str(log)})()
    assert ttl.expired_at(inst) is None  # no log yet
    log.write_text("--- fabserve 2026-12-07 10:00:00 python manage.py runserver\nserving\n")
    assert ttl.expired_at(inst) is None
    with open(log, "ab") as handle:
        logfiles.log_line(ttl.expiry_line(1796162400, "its watchdog was gone, so status stopped pids 5 6"),
                       handle.fileno())
    assert ttl.expired_at(inst) == "2026-12-01T22:00:00Z (ttl)"
    with open(log, "a") as handle:
        handle.write("started again\n")
    assert ttl.expired_at(inst) is None  # only the last line counts: something came after


def test_the_expiry_is_never_read_from_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "server.log")
    inst = type("Inst", (), {"log": str(tmp_path / "server.log")})()
    assert ttl.expired_at(inst) is None  # returns at once: no writer is waited for


def test_list_shows_a_row_its_ttl_ended_as_expired():
    from tasks import listing
    assert listing.state_of({"state": "stopped", "message": "expired at 2026-12-01T22:00:00Z (ttl)"}) == "expired"
    assert listing.state_of({"state": "stopped", "message": "not running"}) == "stopped"
    assert listing.state_of({"state": "running", "message": "running on http://127.0.0.1:8000/"}) == "running"
