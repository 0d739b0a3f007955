"""The big-log cases: `fab logs --lines 100000` on a 100 MB server log, and the same
tail through OpenSSH (`ssh host tail -n 100000 LOG`), the floor it is measured against."""

from __future__ import annotations

import json
import shlex

from bench.hosts import Host
from bench.runner import Check, Runner, execute
from bench.samples import Sample

LOG_BYTES = 100 * 1000 * 1000
TAIL_LINES = 100_000
# Run by the host's own user over SSH: appends numbered 100-byte lines in 1 MiB
# writes until the log holds LOG_BYTES, so every repetition tails the same size.
FILL = """
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
line = b"%09d " + b"x" * 90 + b"\\n"
per_write = (1 << 20) // 100
with open(path, "ab") as handle:
    done = handle.seek(0, os.SEEK_END) // 100
    while handle.tell() < size:
        handle.write(b"".join(line % (done + index) for index in range(per_write)))
        done += per_write
"""


def server_log(runner: Runner, host: Host) -> str | None:
    """The log of the instance the other cases start and stop, as fabserve reports it."""
    result = execute(runner.fab([host], "status", "--json"))
    try:
        return json.loads(result.output.strip().splitlines()[-1])["log"]
    except (ValueError, KeyError, IndexError):
        return None


def lines_shown(count: int) -> Check:
    def check(sample: Sample) -> str | None:
        shown = sample.output.count("\n")
        return None if shown == count else f"{shown} lines shown, not {count}"
    return check


def big_log(runner: Runner) -> None:
    """Grow the server log of the instance the fabserve operations start to LOG_BYTES
    (untimed), then time both tails."""
    host = runner.host
    path = server_log(runner, host)
    grown = execute(runner.ssh(host, shlex.join(["python3", "-c", FILL, path, str(LOG_BYTES)]))) if path else None
    if grown is None or grown.rc != 0:
        runner.fail(runner.case("fabserve_logs", f"fabserve logs {TAIL_LINES} of 100 MB", "logs"), "big log",
                    f"cannot grow {path or 'the log'}: {grown.output[-500:] if grown else ''}")
        return
    one = [host]
    runner.measure("fabserve_logs", f"fabserve logs {TAIL_LINES} of 100 MB", "logs",
                   runner.fab(one, "logs", "--lines", str(TAIL_LINES)), one, check=lines_shown(TAIL_LINES))
    runner.measure("ssh_tail", f"ssh host tail -n {TAIL_LINES}, 100 MB", "logs",
                   runner.ssh(host, shlex.join(["tail", "-n", str(TAIL_LINES), path])), one,
                   check=lines_shown(TAIL_LINES))
