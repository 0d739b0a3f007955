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


def test_the_rows_add_up_to_the_wall_time_with_the_rest_last() -> None:
    imports = {"fabric": 0.3, "fabserve (ours)": 0.1}  # as -X importtime measured them, inflated
    rows = dict(breakdown.rows("stop", 0.5, 0.2, imports, 0.06, HOST))
    assert rows["stop: whole call (fab, wall)"] == 0.5
    assert rows["client start-up: interpreter + imports (fab's program, the fabfile)"] == 0.2
    # The start-up split in -X importtime's proportions: 3 to 1.
    assert rows["  of which fabric (its share of -X importtime)"] == pytest.approx(0.15)
    assert rows["  of which fabserve (ours) (its share of -X importtime)"] == pytest.approx(0.05)
    assert rows["remote: stop's own work"] == 0.01
    rest = rows["the rest: fab set-up, channel, sshd session + shell, result back"]
    assert rest == pytest.approx(0.5 - 0.2 - 0.06 - breakdown.agent_seconds(HOST))
    assert breakdown.agent_seconds(HOST) == pytest.approx(0.047)


def test_without_the_host_s_phases_the_rows_stop_at_the_client_s() -> None:
    rows = breakdown.rows("status", 0.5, 0.2, {"fabric": 0.2}, None, {"error": "no breakdown"})
    assert [what for what, _ in rows][-1] == "SSH connect + key exchange + auth"
    assert breakdown.host_lines({"error": "no breakdown"}) == ["no breakdown"]


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
