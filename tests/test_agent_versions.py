"""The agent runs a whole start/status/stop cycle under every CPython >= 3.6 on
this machine. pyenv's interpreters live under /root, out of the test user's
reach, so these run as root inside a fresh PID namespace: a signal sent by a
bug cannot reach anything outside it."""

import glob
import re
import subprocess

import pytest

from helpers import free_port
from tasks import options, remote

MARKER_RESULTS = re.compile("^" + re.escape(remote.MARKER) + ".*$", re.M)


def interpreters():
    found = {"system": "/usr/bin/python3"}
    for path in sorted(glob.glob("/root/.pyenv/versions/*/bin/python3")):
        version = path.split("/")[-3]
        if re.match(r"^3\.(\d+)\.\d+$", version) and int(version.split(".")[1]) >= 6:
            found[version] = path
    return found


INTERPRETERS = interpreters()


def in_pid_namespace(lines, tmp_path):
    """The agent results printed by shell `lines`, run one after another in a
    fresh PID namespace, and its stderr. They run from a script file: each
    agent command is one argument of tens of KB, and several would pass the
    kernel's limit for one `sh -c` argument (MAX_ARG_STRLEN)."""
    script = tmp_path / "cycle.sh"
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", str(script)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    return [remote.parse_result(line) for line in MARKER_RESULTS.findall(done.stdout)], done.stderr


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_full_cycle_under_each_interpreter(version, make_project, target, tmp_path):
    project = make_project("site")
    port = free_port()
    values = options.merged({}, {"project": str(project), "port": port, "python": str(target.python),
                                 "state_dir": str(tmp_path / "state")})

    def cmd(action):
        return remote.command(options.request(action, values, [], local=False), INTERPRETERS[version])

    results, stderr = in_pid_namespace([cmd(action) for action in ("start", "status", "stop", "status")], tmp_path)
    assert [r["action"] for r in results] == ["start", "status", "stop", "status"], stderr
    start, status, stop, after = results
    assert start["ok"] and start["state"] == "running" and len(start["pids"]) == 2, start
    assert status["state"] == "running" and status["pids"] == start["pids"]
    assert stop["changed"] and sorted(stop["pids"]) == sorted(start["pids"])
    assert after["state"] == "stopped"


def test_python2_is_refused_in_words(root):
    python2 = sorted(glob.glob("/root/.pyenv/versions/2.*/bin/python"))
    if not python2:
        pytest.skip("no Python 2 interpreter on this machine")
    req = options.request("status", options.merged({}, {"project": "/tmp"}), [], local=False)
    done = subprocess.run(["sh", "-c", remote.command(req, python2[0])], capture_output=True, text=True)
    assert done.returncode == 1
    assert "the target needs Python 3.6 or newer" in done.stderr
    assert remote.parse_result(done.stdout) is None


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_ttl_watchdog_and_log_cut_under_each_interpreter(version, make_project, target, tmp_path):
    """The watchdog forked from Popen's preexec_fn, the collapse through ctypes and
    the parsers of the marker work the same under every interpreter."""
    project = make_project("site")
    state = tmp_path / "state"
    values = options.merged({}, {"project": str(project), "port": free_port(), "python": str(target.python),
                                 "state_dir": str(state), "ttl": "5s", "stop_timeout": "2"})

    def cmd(action, **more):
        return remote.command(options.request(action, options.merged(values, more), [], local=False),
                              INTERPRETERS[version])

    push = 'i=0; while [ $i -lt 1500 ]; do echo "pushed $i"; i=$((i+1)); done >> "$(echo {}/hosts/*/*/server.log)"'
    results, stderr = in_pid_namespace(
        [cmd("start"), push.format(state), cmd("status", log_max="16K"), "sleep 8", cmd("status")], tmp_path)
    assert [r["action"] for r in results] == ["start", "status", "status"], stderr
    start, status, after = results
    assert start["ok"] and start["state"] == "running" and 0 < start["expires_in"] <= 5, start
    assert status["state"] == "running" and status["pids"] == start["pids"] and status["expires_at"]
    assert after["state"] == "stopped" and after["expires_at"] is None
    lines = open(start["log"]).read().splitlines()
    assert "log cut to its newest part" in lines[0] and "pushed 1499" in lines
    assert lines[-1].endswith("expired: the ttl ended, so the server was stopped")


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_manage_and_http_checks_under_each_interpreter(version, make_project, target, tmp_path):
    project = make_project("site")
    values = options.merged({}, {"project": str(project), "port": free_port(), "python": str(target.python),
                                 "state_dir": str(tmp_path / "state"), "check": "/", "args": "check --deploy"})

    def cmd(action):
        return remote.command(options.request(action, values, [], local=False), INTERPRETERS[version])

    results, stderr = in_pid_namespace([cmd(action) for action in ("manage", "start", "status", "stop")], tmp_path)
    assert [r["action"] for r in results] == ["manage", "start", "status", "stop"], stderr
    manage, start, status, stop = results
    assert manage["ok"] and manage["exit_status"] == 0, manage
    assert any("security.W" in line for line in manage["output_tail"])  # --deploy reached Django
    assert start["ok"] and start["http_status"] == 200, start
    assert status["state"] == "running" and status["http_status"] == 200
    assert stop["changed"] and stop["port_free"]
