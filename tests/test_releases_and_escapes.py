"""Wrong answers the hardening round fixed, over a real sshd and locally, with
real Django projects: a release symlink that moves under a running server,
processes a server forked that left its group, and the address given at start."""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import pytest

from helpers import alive, free_port, http_status, kill_pids, port_listening, wait_for, where

# Views that fork the way servers in the wild do: a setsid() fork keeping the
# listening socket (and nothing else), a start_new_session child, and a
# setsid() fork that drops the token and execs, keeping only the socket.
VIEWS = '''
import os, socket, subprocess, sys, time
from django.http import HttpResponse
from django.urls import path


def keep_only_the_listener(inheritable):
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        finally:
            sock.close()
        if listening:
            os.set_inheritable(fd, inheritable)
        else:
            os.close(fd)


def fork(request):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        keep_only_the_listener(False)
        time.sleep(600)
        os._exit(0)
    return HttpResponse(str(pid))


def spawn(request):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    return HttpResponse(str(child.pid))


def holder(request):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        keep_only_the_listener(True)
        env = {key: value for key, value in os.environ.items() if key != "FABSERVE_TOKEN"}
        os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"], env)
    return HttpResponse(str(pid))


urlpatterns += [path("fork/", fork), path("spawn/", spawn), path("holder/", holder)]
'''


def session_of(pid: int) -> int:
    text = open(f"/proc/{pid}/stat").read()
    return int(text[text.rindex(")") + 2:].split()[3])


def started(run, *args: str) -> dict:
    result = run("start", *args)
    assert result.returncode == 0 and result.json["state"] == "running", result.stdout + result.stderr
    return result.json


# ----------------------------------------------------------------- releases


@pytest.fixture
def app(make_project, as_user) -> Path:
    """/…/app with releases/v1 and releases/v2 (two Django projects) and current -> releases/v1."""
    v1 = make_project("app/releases/v1")
    app = v1.parent.parent
    as_user(["cp", "-a", "--", str(v1), str(app / "releases" / "v2")], check=True)
    as_user(["ln", "-s", "releases/v1", str(app / "current")], check=True)
    return app


def switch(as_user, app: Path, release: str) -> None:
    as_user(["ln", "-sfn", f"releases/{release}", str(app / "current")], check=True)
    assert os.path.realpath(app / "current") == str(app / "releases" / release)


def cwds(pids: list[int]) -> set[str]:
    return {os.readlink(f"/proc/{pid}/cwd") for pid in pids}


def test_after_a_release_switch_status_and_stop_still_find_the_old_release(run, app, as_user):
    port = free_port()
    current = app / "current"
    first = started(run, *where(current, port))
    assert first["project"] == str(app / "releases" / "v1") and cwds(first["pids"]) == {first["project"]}
    switch(as_user, app, "v2")
    status = run("status", *where(current, port))
    assert status.returncode == 0 and status.json["state"] == "running", status.stdout
    assert sorted(status.json["pids"]) == sorted(first["pids"])
    assert status.json["project"] == str(app / "releases" / "v1")
    assert f"{current} now resolves to {app / 'releases' / 'v2'}: restart to switch" in status.json["message"]
    stop = run("stop", *where(current, port))
    assert stop.returncode == 0 and stop.json["changed"] is True, stop.stdout
    assert sorted(stop.json["pids"]) == sorted(first["pids"])
    assert not any(alive(pid) for pid in first["pids"]) and not port_listening(port)


def test_restart_after_a_release_switch_stops_the_old_release_and_starts_the_new(run, app, as_user):
    port = free_port()
    current = app / "current"
    first = started(run, *where(current, port))
    switch(as_user, app, "v2")
    restart = run("restart", *where(current, port))
    assert restart.returncode == 0 and restart.json["state"] == "running", restart.stdout + restart.stderr
    assert sorted(restart.json["stopped_pids"]) == sorted(first["pids"])
    assert not any(alive(pid) for pid in first["pids"])
    assert restart.json["project"] == str(app / "releases" / "v2")
    assert cwds(restart.json["pids"]) == {str(app / "releases" / "v2")}
    assert http_status(restart.json["url"]) == 200
    assert run("stop", *where(current, port)).returncode == 0
    assert not any(alive(pid) for pid in restart.json["pids"])


# ------------------------------------------------------- escaped processes


@pytest.fixture
def forking_site(site, target) -> Path:
    urls = site / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + VIEWS)
    os.chown(urls, target.uid, -1)
    return site


def fetch(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return int(response.read())


def test_stop_ends_forks_that_left_the_group_with_the_socket_or_the_token(run, forking_site):
    port = free_port()
    server = started(run, *where(forking_site, port))
    forked = fetch(f"{server['url']}fork/")
    spawned = fetch(f"{server['url']}spawn/")
    for pid in (forked, spawned):
        assert wait_for(lambda: session_of(pid) == pid), pid  # out of the server's group and session
    assert forked not in server["pids"] and spawned not in server["pids"]
    stop = run("stop", *where(forking_site, port))
    assert stop.returncode == 0 and stop.json["port_free"] is True, stop.stdout + stop.stderr
    assert {forked, spawned} <= set(stop.json["pids"])
    assert not any(alive(pid) for pid in [*server["pids"], forked, spawned])
    assert not port_listening(port)
    status = run("status", *where(forking_site, port))
    assert status.returncode == 3 and status.json["pids"] == [], status.stdout


def test_expiry_ends_forks_that_left_the_group_with_the_token_too(fab, forking_site):
    """With nobody calling: fab has exited and its SSH session is closed."""
    port = free_port()
    flags = where(forking_site, port)
    result = fab("start", *flags, "--ttl", "5s", "--timeout", "30", "--json", env={"FABRIC_FABSERVE_STOP_TIMEOUT": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    server = result.json
    forked = fetch(f"{server['url']}fork/")
    spawned = fetch(f"{server['url']}spawn/")
    for pid in (forked, spawned):
        assert wait_for(lambda: session_of(pid) == pid), pid
    everyone = [*server["pids"], forked, spawned]
    assert wait_for(lambda: not any(alive(pid) for pid in everyone), timeout=5 + 30), \
        [pid for pid in everyone if alive(pid)]
    assert not port_listening(port)

    def last_line() -> str:
        """fabserve's last line: a fork's own output (a traceback as TERM ends it) may come after it."""
        return [line for line in Path(server["log"]).read_text().splitlines() if line.startswith("--- fabserve")][-1]

    # The watchdog writes it once what it ended is gone, so it may come a moment after them.
    expired = f"expired: the ttl ended at {server['expires_at']}, so the server was stopped"
    assert wait_for(lambda: expired in last_line(), timeout=10), last_line()
    last = last_line()
    named = re.search(r"; pids ([0-9 ]+) had left the server's process group", last)
    assert named and sorted(map(int, named.group(1).split())) == sorted([forked, spawned]), last
    assert fab("status", *flags).returncode == 3


def test_stop_names_a_holder_of_the_port_without_the_token_and_leaves_it(run, forking_site):
    port = free_port()
    server = started(run, *where(forking_site, port))
    holder = fetch(f"{server['url']}holder/")
    try:
        assert wait_for(lambda: b"FABSERVE_TOKEN=" not in open(f"/proc/{holder}/environ", "rb").read()
                        and session_of(holder) == holder)
        stop = run("stop", *where(forking_site, port))
        assert stop.returncode == 1 and stop.json["ok"] is False and stop.json["port_free"] is False, stop.stdout
        assert f"port {port} is still held by pid {holder} (" in stop.json["error"]
        assert not any(alive(pid) for pid in server["pids"])
        assert alive(holder) and port_listening(port)
    finally:
        kill_pids([holder])
    assert wait_for(lambda: not port_listening(port))
    assert run("status", *where(forking_site, port)).returncode == 3


# ------------------------------------------------------------------- address


def test_a_plain_status_start_and_restart_use_the_address_given_at_start(run, site):
    port = free_port()
    server = started(run, *where(site, port), "--addr", "127.0.0.2")
    # Django answers 400 there (ALLOWED_HOSTS): it answers, on that address.
    assert server["url"] == f"http://127.0.0.2:{port}/" and http_status(server["url"]) == 400
    status = run("status", *where(site, port))
    assert status.returncode == 0 and status.json["state"] == "running", status.stdout
    assert status.json["url"] == server["url"]
    again = run("start", *where(site, port))
    assert again.returncode == 0 and again.json["changed"] is False and again.json["url"] == server["url"]
    restart = run("restart", *where(site, port))
    assert restart.returncode == 0 and restart.json["url"] == server["url"], restart.stdout
    assert http_status(server["url"]) == 400
    assert run("stop", *where(site, port)).returncode == 0
    assert not port_listening(port)
