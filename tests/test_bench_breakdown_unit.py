"""The time breakdown's arithmetic and parsing (bench/breakdown.py): the host
program's line found among a login shell's chatter, the client's imports summed
by package, the rows of a call adding up to its wall time, and the agent's work
said in words. No root, no sshd; the host program itself runs on a real agent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import breakdown
from tasks import payload, remote, settings
from tasks.config import merged

HOST = {"interpreter_start": 0.015, "unmarshal": 0.002, "imports": 0.02, "work": 0.01,
        "modules": ["fabserve_agent", "fabserve_agent.verbs"], "stdlib_modules": 30, "exit": 0,
        "proc_reads": {"/proc/PID/stat": 180, "/proc/net/tcp": 1}, "proc_scans": 1,
        "signals": [[0.004, 15]], "after_first_signal": 0.05, "waits": 2, "waited": 0.04}


def test_the_line_is_found_after_other_output_and_its_absence_is_none() -> None:
    text = f"motd\nsome warning\n{breakdown.MARK}{json.dumps(HOST)}\n"
    assert breakdown.parse(text) == HOST
    assert breakdown.parse("Traceback ...\nError\n") is None


def test_imports_are_summed_by_package_from_their_self_times() -> None:
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |     paramiko.util",
        "import time:       300 |        400 |   paramiko",
        "import time:        50 |         50 |       invoke.vendor.yaml.reader",
        "import time:       200 |        700 | invoke",
        "import time:        70 |         70 |   tasks.agent.protocol",
        "import time:        30 |        100 | tasks",
        "import time:        40 |         40 | json",
    ])
    found = breakdown.imports_by_package(stderr)
    assert found == {"paramiko": pytest.approx(0.0004), "invoke": pytest.approx(0.0002),
                     "fabserve (ours)": pytest.approx(0.0001), "yaml": pytest.approx(0.00005),
                     "other (stdlib, ...)": pytest.approx(0.00004)}
    assert list(found)[0] == "paramiko"  # the largest first


CLIENT = {"imports": 0.2, "marks": {"run": [0.3, 0.45], "open": [0.31, 0.37]}, "total": 0.47}


def test_the_client_s_line_is_found_and_its_absence_is_none() -> None:
    assert breakdown.parse_client(f"warning\n{breakdown.CLIENT_MARK}{json.dumps(CLIENT)}\n") == CLIENT
    assert breakdown.parse_client("Traceback\n") is None


def test_the_rows_split_one_run_s_wall_time_in_the_order_it_passes() -> None:
    rows = breakdown.rows("stop", 0.5, CLIENT, HOST)
    found = dict(rows)
    assert found["stop: whole call (fab, wall of this run)"] == 0.5
    assert found["client: interpreter start and exit"] == pytest.approx(0.03)
    assert found["client: imports of fab's program (fabric, invoke, paramiko, ...)"] == 0.2
    assert found["client: fab set-up (the fabfile: fabserve's imports; config; tasks; -H)"] == pytest.approx(0.1)
    assert found["SSH connect + key exchange + auth"] == pytest.approx(0.06)
    assert found["command round trip (channel, agent, result)"] == pytest.approx(0.09)
    assert found["  remote: stop's own work"] == 0.01
    # The round trip less the agent's 47 ms on the host.
    assert found["  the rest: SSH channel, sshd session + login shell, result back"] == pytest.approx(0.043)
    assert found["client: the result shown, exit"] == pytest.approx(0.02)
    top = [seconds for what, seconds in rows[1:] if not what.startswith("  ")]
    assert sum(top) == pytest.approx(0.5)  # the top-level rows add up to the wall time


def test_without_timings_the_rows_say_so_and_without_the_host_s_they_keep_the_client_s() -> None:
    assert breakdown.rows("status", 0.5, None, HOST)[-1] == ("(no client timings)", None)
    rows = breakdown.rows("status", 0.5, CLIENT, {"error": "no breakdown"})
    assert not any(what.startswith("  remote") for what, _ in rows) and rows[-1][0] == "client: the result shown, exit"
    assert breakdown.host_lines({"error": "no breakdown"}) == ["no breakdown"]


def test_the_package_line_lists_the_imports_in_milliseconds() -> None:
    assert breakdown.package_line({"paramiko": 0.05, "yaml": 0.0123}) == (
        "client imports by package (-X importtime): paramiko 50 ms, yaml 12 ms")


def test_the_host_lines_name_the_modules_the_scans_the_reads_and_the_signals() -> None:
    lines = breakdown.host_lines(HOST)
    assert lines[0].startswith("agent modules loaded: 2 (fabserve_agent, verbs)")
    assert lines[1] == "whole-/proc scans: 1; /proc reads: 181 (/proc/PID/stat x180, /proc/net/tcp x1)"
    assert lines[2] == "signals: 15 at 4.0 ms; after the first: 50.0 ms to the result"
    assert lines[3] == "waits (sleeps, polls): 2, 40.0 ms in all"


def test_the_host_program_times_a_real_agent_call_and_counts_its_proc_reads(tmp_path) -> None:
    """PROGRAM through sh, as a login shell runs it, on the agent cached by a real call first."""
    values = merged({}, {"project": str(tmp_path / "site"), "state_dir": str(tmp_path / "state")})
    request = remote.request_line(settings.request("status", values, None))
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    python = sys.executable
    first = subprocess.run(["sh", "-c", remote.command(python)], input=request, capture_output=True, text=True,
                           env=env, timeout=60)
    assert remote.parse_result(first.stdout) is not None, first.stderr
    done = subprocess.run(["sh", "-c", breakdown.host_command(python, payload.payload()[0])], input=request,
                          capture_output=True, text=True, env=env, timeout=60)
    found = breakdown.parse(done.stderr)
    assert found is not None, done.stderr
    assert found["exit"] == 3 and "fabserve_agent.verbs" in found["modules"]  # stopped: status exits 3
    assert "fabserve_agent.manage" not in found["modules"] and found["signals"] == []
    assert all(found[phase] > 0 for phase in ("interpreter_start", "unmarshal", "imports", "work"))
