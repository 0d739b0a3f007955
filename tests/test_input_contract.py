"""The input contract end to end, through a real `fab` over the real sshd and in
local mode: bad input is one stderr line and exit 2 before anything connects; a
reader closing stdout early is not an error; and the visible output of start,
stop and status says exactly what happened."""

import os
import shlex
import subprocess
import sys

import pytest

from helpers import REPO, free_port, port_listening, wait_for, where


def one_line(result, code=2):
    """The run ended with `code` and exactly one stderr line, no traceback, no stdout; that line."""
    lines = result.stderr.splitlines()
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.stdout == ""
    return lines[0]


def host_of(mode):
    return "local" if mode == "local" else "fabserve-target"


@pytest.mark.parametrize("args,message", [
    (["status", "--port", "²"], "--port must be a number from 1 to 65535, not '²'"),
    (["logs", "--lines", "³"], "--lines must be a whole number, not '³'"),
    (["start", "--python", ""], "--python must be a path without NUL bytes or newlines, not ''"),
    (["status", "--project", "/tmp/\udcff"], r"--project must be valid UTF-8, not b'/tmp/\xff'"),
])
def test_bad_flags_are_one_line_before_connecting(run, mode, site, args, message):
    project = [] if "--project" in args else ["--project", str(site)]
    assert one_line(run(*args, *project, json=False)) == f"{host_of(mode)}: {message}"


@pytest.mark.parametrize("name,args", [("PORT", ["status"]), ("START_TIMEOUT", ["status"]),
                                       ("LINES", ["logs"]), ("STOP_TIMEOUT", ["stop"])])
def test_bad_variables_are_one_line_naming_the_variable(run, mode, site, name, args):
    result = run(*args, "--project", str(site), env={f"FABRIC_FABSERVE_{name}": "abc"}, json=False)
    line = one_line(result)
    assert line.startswith(f"{host_of(mode)}: fabserve.{name.lower()} must be ")
    assert line.endswith(f", not 'abc' (from FABRIC_FABSERVE_{name})")


def test_a_bad_concurrency_variable_is_one_line_even_for_one_host(run):
    result = run("status", "--project", "/srv/site", env={"FABRIC_FABSERVE_CONCURRENCY": "abc"}, json=False)
    assert one_line(result) == ("fabserve.concurrency must be a whole number of at least 1, not 'abc' "
                                "(from FABRIC_FABSERVE_CONCURRENCY)")


def test_variables_invoke_used_to_refuse_now_work(run, site):
    result = run("status", *where(site, free_port()), env={"FABRIC_FABSERVE_START_TIMEOUT": "1.5",
                                                             "FABRIC_FABSERVE_STRICT_HOST_KEYS": "0"})
    assert result.returncode == 3 and result.json["state"] == "stopped", result.stderr


def test_the_env_variable_reaches_the_server_and_a_bad_one_is_one_line(run, mode, site):
    port = free_port()
    variable = "FROM_VARIABLE='two words' OVERRIDDEN=variable"
    result = run("start", *where(site, port), "--env", "OVERRIDDEN=flag", env={"FABRIC_FABSERVE_ENV": variable})
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        environ = open(f"/proc/{result.json['pid']}/environ", "rb").read().split(b"\0")
        assert b"FROM_VARIABLE=two words" in environ and b"OVERRIDDEN=flag" in environ
    finally:
        assert run("stop", *where(site, port)).returncode == 0
    bad = run("start", *where(site, port), env={"FABRIC_FABSERVE_ENV": "A=1 oops"}, json=False)
    assert one_line(bad) == f"{host_of(mode)}: fabserve.env must be KEY=VALUE words, not 'oops' (from FABRIC_FABSERVE_ENV)"
    assert not port_listening(port)


def test_agent_python_with_a_bang_is_refused(run, mode, site):
    result = run("status", "--project", str(site), env={"FABRIC_FABSERVE_AGENT_PYTHON": "python3!"}, json=False)
    assert one_line(result) == (f"{host_of(mode)}: fabserve.agent_python must be an interpreter without '!', "
                                f"newlines or NUL bytes, not 'python3!' (from FABRIC_FABSERVE_AGENT_PYTHON)")


def user_file(target, path, text):
    """A file the test user can read (fab runs as them in local mode)."""
    path.write_text(text)
    os.chown(path, target.uid, -1)
    return path


def test_a_mapping_for_the_project_in_a_config_file_is_one_line(run, target, site):
    config = user_file(target, site / "bad.yaml", "fabserve:\n  project: {a: 1}\n")
    result = run("-f", str(config), "status", json=False)
    assert one_line(result) == f"fabserve.project must be a path, not {{'a': 1}} (from {config})"


def test_a_wrong_type_in_a_config_file_is_one_line(run, mode, target, site):
    config = user_file(target, site / "bad.yaml", "fabserve:\n  port: [8000]\n")
    result = run("-f", str(config), "status", "--project", str(site), json=False)
    assert one_line(result) == f"{host_of(mode)}: fabserve.port must be a number from 1 to 65535, not [8000] " \
                               f"(from {config})"


def test_two_100_kb_env_values_reach_the_command(run, mode, site):
    """The request travels on the agent's stdin: together they would not fit one
    argument of its command (Linux's MAX_ARG_STRLEN, 128 KiB)."""
    code = "import os; print(len(os.environ['BIG']), len(os.environ['MORE']))"
    result = run("manage", shlex.join(["shell", "-c", code]), "--project", str(site),
                 "--env", "BIG=" + "x" * 100_000, "--env", "MORE=" + "y" * 100_000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.json["output_tail"][-1] == "100000 100000"


def two_aliases(target, tmp_path):
    """An ssh_config naming the target twice, as hosts a and b."""
    config = target.ssh_config.read_text()
    block = config[config.index(f"Host {target.alias}"):]
    path = tmp_path / "ssh_config"
    path.write_text(block.replace(f"Host {target.alias}", "Host a") + block.replace(f"Host {target.alias}", "Host b"))
    return path


@pytest.mark.parametrize("hosts,code", [("a", 3), ("a,b", 3)])
def test_a_reader_that_closes_stdout_early_is_no_error(target, tmp_path, site, hosts, code):
    """`fab ... | head -1`: the second `status` batch writes after the reader is gone."""
    ssh_config = two_aliases(target, tmp_path)
    instance = where(site, free_port())
    proc = subprocess.Popen([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(ssh_config), "-H", hosts,
                             "status", *instance, "status", *instance], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert first.endswith(": not running\n")
    assert proc.returncode == code, stderr
    assert stderr == ""


def test_a_failed_start_says_start_failed_once(run, target, site):
    fake = user_file(target, site / "exit127", "#!/bin/sh\nexit 127\n")
    fake.chmod(0o755)
    result = run("start", *where(site, free_port()), "--python", "./exit127", json=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].endswith(": start failed: server exited with status 127")
    assert "start failed: start failed" not in result.stderr


def test_stop_reports_whether_it_stopped_its_own_server(run, site, spawn_as_user):
    port = free_port()
    assert run("start", *where(site, port)).returncode == 0
    own = run("stop", *where(site, port))
    assert own.returncode == 0 and own.json["managed"] is True and own.json["changed"] is True

    spawn_as_user([site / ".venv" / "bin" / "python", "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=site)
    assert wait_for(lambda: port_listening(port), timeout=30)
    adopted = run("stop", *where(site, port))
    assert adopted.returncode == 0 and adopted.json["managed"] is False and adopted.json["changed"] is True
    assert not port_listening(port)
    assert run("stop", *where(site, port)).json["managed"] is None  # nothing was running


def test_human_status_of_a_hand_started_server_says_so_and_shows_no_pidfile(run, site, spawn_as_user):
    port = free_port()
    spawn_as_user([site / ".venv" / "bin" / "python", "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=site)
    assert wait_for(lambda: port_listening(port), timeout=30)
    status = run("status", *where(site, port), json=False)
    assert status.returncode == 0, status.stderr
    assert status.stdout.rstrip().endswith("; not started by fabserve")
    assert "pidfile" not in status.stdout
    assert run("stop", *where(site, port)).returncode == 0


def test_human_status_keeps_the_stale_pidfile_note(run, site):
    port = free_port()
    data = run("start", *where(site, port)).json
    meta = os.path.join(os.path.dirname(data["pidfile"]), "server.json")
    with open(meta, "r+") as handle:  # in place: the file stays the user's own
        text = handle.read().replace('"boot_id": "', '"boot_id": "0')
        handle.seek(0)
        handle.write(text)
    status = run("status", *where(site, port), json=False)
    assert status.returncode == 0, status.stderr
    assert "; not started by fabserve; stale pidfile: pidfile is from before the last reboot" in status.stdout
    assert run("stop", *where(site, port)).returncode == 0


def test_a_relative_state_dir_is_reported_absolute(run, target, site):
    result = run("status", *where(site, free_port()), env={"FABRIC_FABSERVE_STATE_DIR": "rel/state"})
    assert result.returncode == 3, result.stderr
    assert result.json["state_dir"].startswith(f"{target.home}/rel/state/")
    assert os.path.isabs(result.json["pidfile"]) and os.path.isabs(result.json["log"])


def test_the_stop_hint_repeats_the_ssh_config(fab, target, site):
    port = free_port()
    started = fab("start", *where(site, port))
    assert started.returncode == 0, started.stderr
    hint = started.stdout.splitlines()[-1]
    assert hint == (f"fabserve-target: stop it with: fab -r {REPO} -S {target.ssh_config} -H fabserve-target "
                    f"stop --project {site} --port {port}")
    words = hint.split(": stop it with: ")[1].split()
    stopped = subprocess.run([sys.executable, "-m", "fabric", *words[1:]], cwd=REPO, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and stopped.stdout.startswith("fabserve-target: stopped pids "), stopped.stderr
    assert not port_listening(port)
