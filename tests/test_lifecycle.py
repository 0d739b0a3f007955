"""start / status / logs / restart / stop against a real Django project, over a
real OpenSSH sshd and locally (no -H), as an unprivileged user."""

import os
import re
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import (REPO, alive, free_port, group_members, http_status, kill_pids, port_listening, wait_for,
                     where)
from tasks.agent.state import instance_name


def started(run, project, port, *extra):
    result = run("start", *where(project, port), *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    data = result.json
    assert data["state"] == "running" and data["ok"] and len(data["pids"]) == 2
    return data


def assert_gone(data, port, host=None):
    assert not any(alive(pid) for pid in data["pids"]), data["pids"]
    assert group_members(data["pid"]) == []
    assert not port_listening(port, host)


def test_start_status_stop_round_trip(run, site, mode):
    port = free_port()
    data = started(run, site, port)
    assert http_status(data["url"]) == 200
    for key in ("host", "action", "ok", "changed", "state", "pid", "pids", "url", "pidfile", "log",
                "message", "error"):
        assert key in data
    assert data["changed"] is True and data["error"] is None
    assert data["host"] == ("local" if mode == "local" else "fabserve-target")
    assert group_members(data["pid"]) == sorted(data["pids"])  # parent and reloader child, one group

    status = run("status", *where(site, port))
    assert status.returncode == 0
    assert status.json["pids"] == data["pids"] and status.json["uptime"] >= 0

    stop = run("stop", *where(site, port))
    assert stop.returncode == 0, stop.stderr
    assert stop.json["changed"] is True and stop.json["state"] == "stopped"
    assert_gone(data, port)
    assert not os.path.exists(data["pidfile"])

    after = run("status", *where(site, port))
    assert after.returncode == 3 and after.json["state"] == "stopped"


def test_state_directory_is_private_to_the_user(run, site, target):
    data = started(run, site, free_port())
    state_dir = os.path.dirname(data["pidfile"])
    info = os.stat(state_dir)
    assert info.st_uid == target.uid and info.st_mode & 0o777 == 0o700
    assert os.stat(data["pidfile"]).st_mode & 0o777 == 0o600
    assert run("stop", *where(site, data["port"])).returncode == 0


def test_human_output_is_one_line_per_host(run, site, mode, target, product):
    port = free_port()
    out = run("start", *where(site, port), json=False)
    assert out.returncode == 0, out.stderr
    host = "local" if mode == "local" else "fabserve-target"
    assert out.stdout.startswith(f"{host}: started on http://127.0.0.1:{port}/")
    # The hint repeats the -r and -S that fab was given (see tests/bed/fab.py).
    hosts = f"-r {product} " if mode == "local" else f"-r {REPO} -S {target.ssh_config} -H fabserve-target "
    hint = re.escape(f"fab {hosts}stop --project {site} --port {port}")
    assert re.search(rf"\n{host}: stop it with: (\S*/)?{hint}\n", out.stdout), out.stdout
    status = run("status", *where(site, port), json=False)
    assert status.stdout.startswith(f"{host}: running on http://127.0.0.1:{port}/, pids ")
    stop = run("stop", *where(site, port), json=False)
    assert stop.stdout.startswith(f"{host}: stopped pids ") and stop.stderr == ""
    again = run("status", *where(site, port), json=False)
    assert again.returncode == 3 and again.stdout.strip() == f"{host}: not running"


def test_start_twice_is_one_server(run, site):
    port = free_port()
    first = started(run, site, port)
    second = run("start", *where(site, port))
    assert second.returncode == 0
    assert second.json["changed"] is False and "already running" in second.json["message"]
    assert second.json["pids"] == first["pids"]
    assert run("stop", *where(site, port)).returncode == 0


def test_stop_twice_exits_zero(run, site):
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).json["changed"] is True
    again = run("stop", *where(site, port))
    assert again.returncode == 0 and again.json["changed"] is False
    assert_gone(data, port)


def test_restart_replaces_the_processes(run, site, mode):
    port = free_port()
    before = started(run, site, port)
    after = run("restart", *where(site, port))
    assert after.returncode == 0, after.stderr
    assert after.json["changed"] is True and after.json["state"] == "running"
    assert after.json["message"].startswith(f"restarted on {after.json['url']}")
    assert not set(after.json["pids"]) & set(before["pids"])
    assert not any(alive(pid) for pid in before["pids"])
    assert http_status(after.json["url"]) == 200
    human = run("restart", *where(site, port), json=False)
    host = "local" if mode == "local" else "fabserve-target"
    assert human.returncode == 0 and human.stdout.startswith(f"{host}: restarted on {after.json['url']}"), human
    assert run("stop", *where(site, port)).returncode == 0


def test_logs_show_django_output(run, site):
    port = free_port()
    data = started(run, site, port)
    http_status(data["url"])
    logs = run("logs", *where(site, port), "--lines", "50")
    assert logs.returncode == 0
    assert any("Starting development server at http://127.0.0.1:%d/" % port in line for line in logs.json["lines"])
    plain = run("logs", *where(site, port), "--lines", "1", json=False)
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == 1
    assert run("stop", *where(site, port)).returncode == 0


def test_stale_pidfile_of_a_dead_process_does_not_block_start(run, site):
    port = free_port()
    data = started(run, site, port)
    kill_pids(data["pids"])
    assert wait_for(lambda: not any(alive(pid) for pid in data["pids"]))
    assert os.path.exists(data["pidfile"])
    status = run("status", *where(site, port))
    assert status.returncode == 3 and "stale pidfile" in status.json["message"]
    again = started(run, site, port)
    assert again["pid"] != data["pid"]
    assert run("stop", *where(site, port)).returncode == 0


def test_pidfile_naming_an_unrelated_live_process_spares_it(run, site, spawn_as_user, as_user):
    port = free_port()
    data = started(run, site, port)
    kill_pids(data["pids"])
    assert wait_for(lambda: not any(alive(pid) for pid in data["pids"]))
    bystander = spawn_as_user(["sleep", "600"])
    assert wait_for(lambda: len(group_members(bystander.pid)) == 2)  # runuser and its sleep
    sleeper = max(group_members(bystander.pid), key=lambda pid: os.stat(f"/proc/{pid}").st_uid)
    # The pidfile now names a live process of the same user that we did not start.
    as_user(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(sleeper), data["pidfile"]])
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and stop.json["changed"] is False
    assert alive(sleeper)
    assert not os.path.exists(data["pidfile"])


PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def test_garbage_pidfile_signals_nothing_and_start_replaces_it(run, site, as_user):
    """Each content in turn, on one instance (its first start only tells where the pidfile is)."""
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    for content in ("0", "1", "-1", "-123", "", "abc", "12 34", str(PID_MAX + 1)):
        as_user(["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", content, data["pidfile"]])
        status = run("status", *where(site, port))
        assert status.returncode == 3 and "corrupt" in status.json["message"], (content, status.stdout)
        cleanup = run("stop", *where(site, port))
        assert cleanup.returncode == 0 and cleanup.json["changed"] is False, (content, cleanup.stdout)
        assert not os.path.exists(data["pidfile"]), content
        as_user(["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", content, data["pidfile"]])
        again = started(run, site, port)
        assert run("stop", *where(site, port)).returncode == 0, content
        assert_gone(again, port)


def test_orphaned_reloader_child_is_found_and_stopped(run, site):
    port = free_port()
    data = started(run, site, port)
    parent, child = data["pid"], [pid for pid in data["pids"] if pid != data["pid"]][0]
    os.kill(parent, signal.SIGKILL)
    assert wait_for(lambda: not alive(parent))
    assert alive(child) and http_status(data["url"]) == 200  # the child keeps serving
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and stop.json["changed"] is True
    assert child in stop.json["pids"]
    assert wait_for(lambda: not alive(child), timeout=2)
    assert not port_listening(port)


def test_decoys_survive_stop(run, site, make_project, spawn_as_user, target):
    port, other_port = free_port(), free_port()
    ours = started(run, site, port)
    same_project_other_port = started(run, site, other_port)
    other = make_project("other")
    other_project = started(run, other, port, "--addr", "127.0.0.2")  # same port number, other address
    python = str(target.python)
    decoys = [
        spawn_as_user(["tail", "-f", "manage.py", "runserver"], cwd=site),
        spawn_as_user(["bash", "-c", f"exec -a vim {python} -c 'import time; time.sleep(600)' "
                                     f"manage.py runserver {port}"], cwd=site),
        spawn_as_user([python, "-c", "import time; time.sleep(600)", "manage.py", "runserver", str(port)],
                      cwd=site),
        spawn_as_user(["bash", "-c", f"sleep 600; grep 'manage.py runserver {port}'"], cwd=site),
    ]
    decoy_pids = [pid for proc in decoys for pid in group_members(proc.pid)]
    assert len(decoy_pids) >= len(decoys)
    # Lose the pidfile so stop has to search by command line, cwd and port.
    os.unlink(ours["pidfile"])
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and stop.json["changed"] is True
    assert sorted(stop.json["pids"]) == sorted(ours["pids"])
    assert_gone(ours, port, "127.0.0.1")
    for survivor in decoy_pids + same_project_other_port["pids"] + other_project["pids"]:
        assert alive(survivor), survivor
    assert http_status(same_project_other_port["url"]) == 200
    assert http_status(other_project["url"]) == 400  # answering: DisallowedHost, 127.0.0.2 is not in DEBUG's hosts
    assert run("stop", *where(site, other_port)).returncode == 0
    assert run("stop", *where(other, port), "--timeout", "5").returncode == 0


def test_project_path_with_spaces_quotes_and_shell_syntax(run, make_project, target):
    marker = target.home / "PWNED"
    odd = make_project(f"it's a \"site\" $(touch {marker}) `touch {marker}`; -x")
    port = free_port()
    data = started(run, odd, port)
    assert data["project"] == str(odd)
    assert http_status(data["url"]) == 200
    assert run("status", *where(odd, port)).returncode == 0
    assert run("stop", *where(odd, port)).returncode == 0
    assert_gone(data, port)
    assert not marker.exists()


# A listener that keeps its port, as daphne does after its own bind failed.
LISTENER = "import socket, sys, time; s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); " \
           "s.listen(); time.sleep(600)"


def test_port_held_before_start_fails_at_once_naming_its_holder_and_launches_nothing(
        run, site, spawn_as_user, target):
    # Root's listener (this test's): a user's agent cannot see its process, only its socket's owner.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = run("start", *where(site, port), "--timeout", "60")
        assert result.returncode == 1
        error = f"port {port} on 127.0.0.1 is already in use by another user's process (user root); nothing was started"
        assert result.json["error"] == error
        assert not os.path.exists(result.json["pidfile"]) and not os.path.exists(result.json["log"])  # not launched
        holder.getsockname()  # still ours, still open
        human = run("start", *where(site, port), "--timeout", "60", json=False)
        assert human.returncode == 1 and human.stderr.splitlines()[0].endswith(f": start failed: {error}")
    finally:
        holder.close()

    # The user's own listener on the wildcard address, which holds 127.0.0.1's port too: pid and user.
    port = free_port()
    spawn_as_user([str(target.python), "-c", LISTENER, "0.0.0.0", str(port)])
    assert wait_for(lambda: port_listening(port), timeout=10)
    result = run("start", *where(site, port), "--timeout", "60")
    assert result.returncode == 1
    named = re.fullmatch(rf"port {port} on 127\.0\.0\.1 is already in use by pid ([0-9]+) \(\S*python\S* -c "
                         rf"import socket, .*\) of user {target.user}; nothing was started", result.json["error"])
    assert named, result.json["error"]
    assert alive(int(named.group(1))) and not os.path.exists(result.json["log"])


def test_a_port_taken_while_the_server_starts_up_fails_the_start_at_once(fab, site, target):
    # A slow start-up (settings that sleep) leaves time for another program to bind the port
    # after start found it free: the server could only fail its bind, or linger as daphne does.
    settings = site / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\nimport time\ntime.sleep(3)\n")
    port = free_port()
    logs = target.home / ".local" / "state" / "fabserve" / "hosts"
    holder = socket.socket()
    try:
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(fab, "start", *where(site, port), "--noreload", "--timeout", "60", "--json")
            # The log's first line is written once the port was checked, before the launch. (This
            # instance's own: an earlier test's project may have had the same name and port.)
            assert wait_for(lambda: list(logs.glob(f"*/{instance_name(str(site), port)}/server.log")), timeout=60)
            holder.bind(("127.0.0.1", port))
            holder.listen()
            result = starting.result()
    finally:
        holder.close()
    assert result.returncode == 1
    assert result.json["error"] == (f"port {port} on 127.0.0.1 was taken by another user's process (user root) "
                                    f"before the server could bind it")
    assert not os.path.exists(result.json["pidfile"])


def test_broken_project_fails_within_timeout_and_leaves_nothing(run, site):
    urls = site / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + "\ndef (\n")
    port = free_port()
    result = run("start", *where(site, port), "--timeout", "4")
    assert result.returncode == 1
    assert "nothing answered on port" in result.json["error"]
    assert any("SyntaxError" in line for line in result.json["log_tail"])
    assert not os.path.exists(result.json["pidfile"])
    status = run("status", *where(site, port))
    assert status.returncode == 3


@pytest.mark.parametrize("port", ["abc", "0", "65536", "8000;id", "-1"])
def test_bad_port_is_a_usage_error(run, site, port):
    result = run("status", "--project", str(site), f"--port={port}", json=False)
    assert result.returncode == 2
    assert "--port must be a number from 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_project_and_interpreter_are_one_line_errors(run, target, site):
    missing = run("start", "--project", str(target.home / "nope"), "--port", str(free_port()), json=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith(f"project directory {target.home / 'nope'} does not exist")
    no_python = run("start", *where(site, free_port()), "--python", "/nonexistent/python", json=False)
    assert no_python.returncode == 1
    assert "interpreter /nonexistent/python not found" in no_python.stderr
    assert len(no_python.stderr.strip().splitlines()) == 1


def test_a_failed_start_on_python3_for_want_of_a_venv_in_the_project_says_so(run, make_project):
    # The project's venv lives elsewhere: python3 on PATH has no Django.
    project = make_project("site")
    (project / ".venv").unlink()
    port = free_port()
    result = run("start", *where(project, port))
    assert result.returncode == 1
    assert result.json["error"] == (f"server exited with status 1; no .venv/ or venv/ in {project}, "
                                    f"used python3; pass --python")
    assert any("Couldn't import Django" in line for line in result.json["log_tail"]), result.json["log_tail"]
    human = run("start", *where(project, port), json=False)
    assert human.returncode == 1
    assert human.stderr.splitlines()[0].endswith(f"no .venv/ or venv/ in {project}, used python3; pass --python")
    # python3 given: the user's choice, no hint.
    given = run("start", *where(project, port), "--python", "python3")
    assert given.returncode == 1 and given.json["error"] == "server exited with status 1"


def server_facts(pid):
    """argv and environment of a server process, as the kernel has them."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        argv = handle.read().decode().split("\0")[:-1]
    with open(f"/proc/{pid}/environ", "rb") as handle:
        env = dict(item.split("=", 1) for item in handle.read().decode().split("\0") if "=" in item)
    return argv, env


def test_restart_reruns_the_interpreter_env_settings_and_check_it_was_started_with(run, make_project, target):
    # Django is installed only in the venv outside the project: python3 on PATH cannot serve it.
    project = make_project("site")
    (project / ".venv").unlink()
    settings = project / "mysite" / "restart_settings.py"
    settings.write_text("from .settings import *  # noqa: F401,F403\n")
    os.chown(settings, target.uid, -1)
    python = str(target.venv / "bin" / "python")
    port = free_port()
    first = started(run, project, port, "--python", python, "--env", "FABSERVE_PROBE=kept",
                    "--settings", "mysite.restart_settings", "--check", "/")

    def reran(data):
        assert data["python"] == python and data["http_status"] == 200, data
        assert http_status(data["url"]) == 200
        for pid in data["pids"]:
            argv, env = server_facts(pid)
            assert argv[0] == python, argv  # the reloader's child is sys.executable: the venv's, too
            assert "--settings=mysite.restart_settings" in argv and env.get("FABSERVE_PROBE") == "kept", argv

    reran(first)
    again = run("restart", *where(project, port))
    assert again.returncode == 0, again.stderr + again.stdout
    assert not set(again.json["pids"]) & set(first["pids"])
    reran(again.json)
    # Stopped, it is restarted as it was last started, too.
    assert run("stop", *where(project, port)).returncode == 0
    after_stop = run("restart", *where(project, port))
    assert after_stop.returncode == 0, after_stop.stderr + after_stop.stdout
    reran(after_stop.json)
    # A setting given to restart replaces the recorded one.
    changed = run("restart", *where(project, port), "--env", "FABSERVE_PROBE=new")
    assert changed.returncode == 0, changed.stderr + changed.stdout
    assert all(server_facts(pid)[1].get("FABSERVE_PROBE") == "new" for pid in changed.json["pids"])
    assert changed.json["python"] == python
    assert run("stop", *where(project, port)).returncode == 0
