"""The agent runs a whole start/status/stop cycle under every CPython >= 3.6 on
this machine. pyenv's interpreters live under /root, out of the test user's
reach, so these run as root inside a fresh PID namespace: a signal sent by a
bug cannot reach anything outside it. Every scenario under every interpreter runs
once per session, a few at a time (most of each is Django starting or a TTL
running out), and each test reads its own scenario's results."""

import glob
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bed.accounts import ProjectMaker
from bed.interpreters import target_interpreters
from helpers import free_port
from tasks import remote, settings, trees
from tasks.config import merged

MARKER_RESULTS = re.compile("^" + re.escape(remote.MARKER) + ".*$", re.M)


INTERPRETERS = target_interpreters()


#: Scenarios run at once: most of each is waiting for Django or for a TTL.
AT_ONCE = 4
#: The log's pushed lines, appended by the shell to the one instance's log.
PUSH = 'i=0; while [ $i -lt 1500 ]; do echo "pushed $i"; i=$((i+1)); done >> "$(echo {}/hosts/*/*/server.log)"'
#: The watchdog scenario's TTL in seconds: its start and first status come back well
#: before it even while the whole suite runs in workers at once.
TTL = 20
#: Waits (a minute at most) for the watchdog's last line in that log: the TTL is over.
EXPIRED = ('i=0; until grep -q "expired: the ttl ended" {}/hosts/*/*/server.log || [ $i -ge 600 ]; '
           'do sleep 0.1; i=$((i+1)); done')


def full_cycle(cmd, state):
    return [cmd("start"), cmd("status"), cmd("stop"), cmd("status")]


def ttl_and_log_cut(cmd, state):
    return [cmd("start", ttl=f"{TTL}s", stop_timeout="2"), PUSH.format(state), cmd("status", log_max="16K"),
            EXPIRED.format(state), cmd("status")]


def manage_and_http_check(cmd, state):
    return [cmd(action, check="/", args="check --deploy") for action in ("manage", "start", "status", "stop")]


SCENARIOS = (full_cycle, ttl_and_log_cut, manage_and_http_check)


def in_pid_namespace(lines, script):
    """The agent results printed by shell `lines`, run one after another in a
    fresh PID namespace, and its stderr. They run from a script file: each
    agent command is one argument of tens of KB, and several would pass the
    kernel's limit for one `sh -c` argument (MAX_ARG_STRLEN)."""
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", str(script)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    return [remote.parse_result(line) for line in MARKER_RESULTS.findall(done.stdout)], done.stderr


def run_scenario(scenario, version, project, python, work):
    state = work / "state"

    def cmd(action, **more):
        values = {"project": str(project), "port": port, "python": str(python), "state_dir": str(state), **more}
        line = remote.request_line(settings.request(action, merged({}, values), []))
        return f"{remote.command(INTERPRETERS[version])} <<'FABSERVE_REQUEST'\n{line}FABSERVE_REQUEST"

    port = free_port()
    return in_pid_namespace(scenario(cmd, state), work / "scenario.sh")


@pytest.fixture(scope="module")
def runs(target, as_user, tmp_path_factory):
    """(results, stderr) by (scenario name, interpreter), each in a project and state of its own."""
    maker = ProjectMaker(target, as_user)
    jobs = {}
    for scenario in SCENARIOS:
        for version in INTERPRETERS:
            work = Path(tmp_path_factory.mktemp(f"{scenario.__name__}-{version}"))
            jobs[scenario.__name__, version] = (scenario, version, maker("site"), target.python, work)
    try:
        with ThreadPoolExecutor(AT_ONCE) as pool:
            done = dict(zip(jobs, pool.map(lambda job: run_scenario(*job), jobs.values())))
        yield done
    finally:
        maker.cleanup()


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_full_cycle_under_each_interpreter(version, runs):
    results, stderr = runs["full_cycle", version]
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
    req = settings.request("status", merged({}, {"project": "/tmp"}), [])
    done = subprocess.run(["sh", "-c", remote.command(python2[0])], input=remote.request_line(req),
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "the target needs Python 3.6 or newer" in done.stderr
    assert remote.parse_result(done.stdout) is None


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_ttl_watchdog_and_log_cut_under_each_interpreter(version, runs):
    """The watchdog forked from Popen's preexec_fn, the collapse through ctypes and
    the parsers of the marker work the same under every interpreter."""
    results, stderr = runs["ttl_and_log_cut", version]
    assert [r["action"] for r in results] == ["start", "status", "status"], stderr
    start, status, after = results
    assert start["ok"] and start["state"] == "running" and 0 < start["expires_in"] <= TTL, start
    assert status["state"] == "running" and status["pids"] == start["pids"] and status["expires_at"]
    assert after["state"] == "stopped" and after["expires_at"] is None
    assert after["message"] == f"expired at {start['expires_at']} (ttl)"
    lines = open(start["log"]).read().splitlines()
    assert "log cut to its newest part" in lines[0] and "pushed 1499" in lines
    assert lines[-1].endswith(f"expired: the ttl ended at {start['expires_at']}, so the server was stopped")


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_manage_and_http_checks_under_each_interpreter(version, runs):
    results, stderr = runs["manage_and_http_check", version]
    assert [r["action"] for r in results] == ["manage", "start", "status", "stop"], stderr
    manage, start, status, stop = results
    assert manage["ok"] and manage["exit_status"] == 0, manage
    assert any("security.W" in line for line in manage["output_tail"])  # --deploy reached Django
    assert start["ok"] and start["http_status"] == 200, start
    assert status["state"] == "running" and status["http_status"] == 200
    assert stop["changed"] and stop["port_free"]


@pytest.mark.parametrize("version", sorted(INTERPRETERS))
def test_sync_writes_checks_and_refuses_under_each_interpreter(version, root, tmp_path):
    """sync's agent half (no processes of its own, so no PID namespace): an apply
    writes the tree and its link, the manifest alone then finds it up to date, a link
    out is refused (exit 2)."""
    src, project = tmp_path / "src", tmp_path / "site"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "run.sh").write_text("echo hi\n")
    (src / "pkg" / "run.sh").chmod(0o755)
    (src / "link").symlink_to("pkg/run.sh")
    files = trees.manifest(src, trees.listing(src))

    def agent(manifest, archive=None):
        req = settings.request("sync", merged({}, {"project": str(project), "state_dir": str(tmp_path / "state")}), [])
        line = remote.request_line(dict(req, manifest=manifest, archive=archive))
        done = subprocess.run(["sh", "-c", remote.command(INTERPRETERS[version])], input=line,
                              capture_output=True, text=True, timeout=60)
        return done.returncode, remote.parse_result(done.stdout), done.stderr

    code, applied, stderr = agent(files, trees.pack(src, files, sorted(files)))
    assert code == 0 and applied["files_sent"] == 2, (applied, stderr)
    assert (project / "pkg" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (project / "link").readlink() == Path("pkg/run.sh")
    code, again, _ = agent(files)
    assert code == 0 and again["message"] == "up to date" and "needed" not in again
    code, refused, _ = agent(dict(files, out=["link", 0, "../..", 0]))
    assert code == 2 and refused["refused"] is True
