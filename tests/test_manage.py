"""`manage "ARGS"` over the real sshd and locally, in a real Django project:
migrate creates the database, an unknown command is Django's own error, argv
reaches Django literally, a prompting command fails instead of hanging,
--timeout ends the command's whole group, a child that left the group is
ended too, and one SIGINT ends the command and its agent."""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import sys

import pytest

from bed.fab import ended, interrupt
from bed.procs import cmdline, parent, uid_processes
from helpers import REPO, alive, kill_pids, wait_for


def test_migrate_creates_the_database_and_streams_its_output(run, site, mode):
    result = run("manage", "migrate --noinput", "--project", str(site), json=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "Operations to perform:" in lines and any(line.endswith("... OK") for line in lines)
    host = "local" if mode == "local" else "fabserve-target"
    assert lines[-1] == f"{host}: manage.py migrate exited 0"
    with sqlite3.connect(site / "db.sqlite3") as db:
        assert db.execute("select count(*) from django_migrations").fetchone()[0] > 10

    again = run("manage", "migrate --noinput", "--project", str(site))
    assert again.returncode == 0
    answer = again.json
    assert answer["ok"] is True and answer["exit_status"] == 0 and answer["error"] is None
    assert answer["output_tail"][-1] == "  No migrations to apply."
    assert answer["message"] == "manage.py migrate exited 0"


def test_env_reaches_the_command_and_may_set_what_the_agent_sets(fab, site):
    code = "import os; print(os.environ['GREETING'], os.environ['PYTHONUNBUFFERED'])"
    result = fab("manage", shlex.join(["shell", "-c", code]), "--project", str(site),
                 "--env", "GREETING=hello", "--env", "PYTHONUNBUFFERED=0", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.json["output_tail"][-1] == "hello 0"


def test_an_unknown_command_exits_1_with_djangos_message(run, site):
    result = run("manage", "nosuchcommand", "--project", str(site), json=False)
    assert result.returncode == 1
    assert "Unknown command: 'nosuchcommand'" in result.stdout
    assert result.stderr.strip().endswith("manage failed: manage.py nosuchcommand exited with status 1")

    answer = run("manage", "nosuchcommand", "--project", str(site)).json
    assert answer["ok"] is False and answer["exit_status"] == 1
    assert "Unknown command: 'nosuchcommand'" in answer["output_tail"]


def test_arguments_reach_django_literally(fab, site):
    literal = "$(id) `id` ; x | y 'q' \"w\" \\ $HOME"
    args = shlex.join(["shell", "-c", f"print({literal!r})"])
    result = fab("manage", args, "--project", str(site), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.json["output_tail"][-1] == literal

    injected = fab("manage", "; id", "--project", str(site), "--json")
    assert injected.returncode == 1
    assert "Unknown command: ';'" in injected.json["output_tail"]
    assert not any("uid=" in line for line in injected.json["output_tail"])


def test_a_command_that_would_prompt_fails_instead_of_waiting(fab, site):
    # flush asks "Type 'yes' to continue": stdin is /dev/null, so the answer is end of file.
    result = fab("manage", "flush", "--project", str(site), "--timeout", "60", "--json", timeout=90)
    assert result.returncode == 1
    assert result.json["exit_status"] == 1 and "EOFError" in result.json["output_tail"][-1]
    assert result.json["error"] == "manage.py flush exited with status 1"


def test_timeout_ends_the_commands_whole_group(fab, site, target):
    # The command forks a child into its group, then both sleep: both must be gone.
    # One write each: manage's output is unbuffered, and print's two writes (the
    # text, then the newline) of the two processes could interleave on one line.
    code = 'import os, time; os.fork(); os.write(1, b"%d\\n" % os.getpid()); time.sleep(120)'
    # 10 s: Django's shell must start and fork within it, also on a busy machine.
    result = fab("manage", f"shell -c '{code}'", "--project", str(site), "--timeout", "10", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.json["error"] == "manage.py shell did not end within 10s; it was ended", result.json
    assert result.json["exit_status"] is None
    assert len([line for line in result.json["output_tail"] if line.isdigit()]) == 2, result.json["output_tail"]
    # the autouse check finds neither process left


@pytest.mark.parametrize("args,message", [("", "must name a manage.py command"),
                                          ("shell -c 'unclosed", "cannot be split into words")])
def test_bad_args_are_refused_before_connecting(fab, site, args, message):
    result = fab("manage", args, "--project", str(site))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_manage_without_a_command_is_a_usage_error(fab, site):
    result = fab("manage", "--project", str(site))
    assert (result.returncode, result.stdout) == (2, ""), result
    assert result.stderr == ("'manage' did not receive required positional arguments: 'args' "
                             "(python -m fabric --help manage shows its flags)\n")


def test_a_caller_gone_ends_the_command(target, site):
    code = "import time; print('ready', flush=True); time.sleep(120)"
    caller = subprocess.Popen([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config),
                               "-H", target.alias, "manage", shlex.join(["shell", "-c", code]), "--project",
                               str(site)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert "ready\n" in iter(caller.stdout.readline, "")  # after Django's own first line
        running = [pid for pid in uid_processes([target.uid]) if "time.sleep(120)" in cmdline(pid)]
        assert running
    finally:
        os.killpg(caller.pid, signal.SIGKILL)  # fab and its connection, gone without a word
        caller.wait()
    assert wait_for(lambda: not any(alive(pid) for pid in running), timeout=15)


def test_json_describes_the_projects_one_running_server_or_none(fab, site):
    from helpers import free_port, where
    alone = fab("manage", "check", "--project", str(site), "--json")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert alone.json["port"] is None and alone.json["pids"] == [] and alone.json["url"] is None, alone.json
    port = free_port()
    server = fab("start", *where(site, port), "--noreload", "--json")
    assert server.returncode == 0, server.stdout + server.stderr
    try:
        result = fab("manage", "check", "--project", str(site), "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        answer = result.json
        assert answer["port"] == port and answer["pids"] == server.json["pids"], answer
        assert answer["state"] == "running" and answer["url"] == server.json["url"]
        failed = fab("manage", "nosuchcommand", "--project", str(site), "--json").json
        assert failed["exit_status"] == 1 and failed["port"] in (None, port), failed
    finally:
        assert fab("stop", *where(site, port), "--json").returncode == 0


def test_a_child_that_left_the_group_is_ended_with_the_command(run, site):
    # A child in a session of its own: ending the command's group does not reach it.
    code = ("import subprocess; child = subprocess.Popen(['sleep', '1234'], start_new_session=True); "
            "print(child.pid)")
    result = run("manage", shlex.join(["shell", "-c", code]), "--project", str(site))
    child = int(result.json["output_tail"][-1]) if result.json.get("output_tail") else None
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert child is not None and not alive(child)
        assert result.json["message"] == (f"manage.py shell exited 0; pids {child} had left its process group "
                                          f"and were ended")
    finally:
        if child is not None and alive(child) and "sleep 1234" in cmdline(child):
            kill_pids([child])


def agent_chain(pid: int) -> list[int]:
    """`pid` and its ancestors that run the agent (a login shell that did not exec it included)."""
    chain = [pid]
    while (up := parent(chain[-1])) and "fabserve-agent" in cmdline(up):
        chain.append(up)
    return chain


def interrupt_manage(fab, local: bool, site, target, whom: str, *extra: str) -> None:
    """Run a command that prints a line and then stays silent, send one SIGINT, and
    check that fab exits 130 with one line and the command and its agent are gone."""
    marker = f"fabserve-sigint-{os.getpid()}-{local}-{whom}-{len(extra)}"
    code = f"import time; print('ready', flush=True); time.sleep(120)  # {marker}"
    def running() -> list[int]:  # the command's own process (locally fab's argv holds the marker too)
        return [pid for pid in uid_processes([target.uid]) if marker in cmdline(pid) and "manage.py" in cmdline(pid)]

    with ended(fab.spawn("manage", shlex.join(["shell", "-c", code]), "--project", str(site), *extra, local=local,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) as caller:
        if not extra:  # the line streams as it comes
            assert "ready\n" in iter(caller.stdout.readline, "")
        assert wait_for(running, timeout=60)
        command, = running()
        ours = agent_chain(command)
        assert len(ours) > 1, [cmdline(pid) for pid in ours]
        _, err = interrupt(caller, whom)
    host = "local" if local else target.alias
    assert caller.returncode == 130, err
    assert err == f"{host}: manage interrupted; the command was ended\n"
    assert wait_for(lambda: not any(alive(pid) for pid in ours), timeout=15), [cmdline(pid) for pid in ours]


def test_one_sigint_to_the_terminals_group_ends_the_command_and_the_agent(fab, mode, site, target):
    """Ctrl-C in a terminal: SIGINT to fab's whole foreground group (locally the agent
    is in it too, over SSH it is not)."""
    interrupt_manage(fab, mode == "local", site, target, "group")


def test_one_sigint_to_fab_alone_ends_a_local_command_and_its_agent(fab, site, target):
    """`kill -INT` of fab's PID: locally the agent gets no signal of its own."""
    interrupt_manage(fab, True, site, target, "fab")


def test_one_sigint_ends_a_json_manage_too(fab, site, target):
    """With --json nothing streams: the agent notices the closed channel by its stdout alone."""
    interrupt_manage(fab, False, site, target, "group", "--json")
