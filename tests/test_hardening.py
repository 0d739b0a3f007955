"""Faults and bad inputs (GUIDE §8): nothing we did not start is signalled, nothing
injected runs, nothing is left half-written, and every failure says why in one line.
Real sshd, real Django projects, the unprivileged test user."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bed.procs import children, real_uid, stat_fields
from helpers import (REPO, alive, free_port, group_members, http_status, kill_pids, pids_with_cwd_under,
                     port_listening, wait_for, where)


def started(run, project, port, *extra):
    result = run("start", *where(project, port), *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.json


def starttime(pid):
    return int(stat_fields(pid)[19])


def boot_id():
    return open("/proc/sys/kernel/random/boot_id").read().strip()


def forge_state(as_user, data, pid, **meta):
    """Write a pidfile and metadata naming `pid`, as the test user would own them."""
    record = {"pid": pid, "starttime": starttime(pid), "boot_id": boot_id(), "token": "forged"} | meta
    script = 'printf "%s\\n" "$1" > "$2" && printf "%s" "$3" > "$4"'
    meta_path = os.path.join(os.path.dirname(data["pidfile"]), "server.json")
    result = as_user(["sh", "-c", script, "sh", str(pid), data["pidfile"], json.dumps(record), meta_path])
    assert result.returncode == 0, result.stderr


def no_server_in(project, target):
    return pids_with_cwd_under(project, target.uid) == []


# ----------------------------------------------------------------- atomicity


def test_ten_simultaneous_starts_make_exactly_one_server(run, site):
    port = free_port()
    results = [None] * 10

    def start(i):
        results[i] = run("start", *where(site, port))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    data = [r.json for r in results]
    assert sum(d["changed"] for d in data) == 1
    assert len({d["pid"] for d in data}) == 1
    assert len(group_members(data[0]["pid"])) == 2  # one parent, one reloader child
    assert run("stop", *where(site, port)).returncode == 0
    assert not port_listening(port)


# ------------------------------------------------------- identity, stale state


def test_pidfile_from_before_a_reboot_spares_the_process_it_names(run, site, as_user, spawn_as_user):
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    sleeper = spawn_as_user(["sleep", "600"])
    assert wait_for(lambda: children(sleeper.pid))
    victim = children(sleeper.pid)[0]
    forge_state(as_user, data, victim, boot_id="00000000-0000-0000-0000-000000000000")
    status = run("status", *where(site, port))
    assert status.returncode == 3 and "before the last reboot" in status.json["message"]
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and stop.json["changed"] is False
    assert alive(victim) and not os.path.exists(data["pidfile"])
    again = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    assert alive(victim) and not any(alive(pid) for pid in again["pids"])


def test_pidfile_naming_a_zombie_is_stale(run, site, as_user, spawn_as_user, target):
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    code = "import os, time\nif os.fork() == 0:\n    os._exit(0)\ntime.sleep(600)\n"
    parent = spawn_as_user([str(target.python), "-c", code])
    assert wait_for(lambda: any(p for p in children(parent.pid) for c in children(p)
                                if stat_fields(c)[0] == "Z"))
    python = children(parent.pid)[0]
    zombie = next(c for c in children(python) if stat_fields(c)[0] == "Z")
    forge_state(as_user, data, zombie)
    status = run("status", *where(site, port))
    assert status.returncode == 3 and f"process {zombie} is gone" in status.json["message"]
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and stop.json["changed"] is False
    assert alive(python) and not os.path.exists(data["pidfile"])


@pytest.mark.parametrize("make_link", ["state directory", "pidfile"])
def test_symlinked_state_is_refused(run, site, as_user, target, make_link):
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    elsewhere = target.home / f"elsewhere-{port}"
    as_user(["mkdir", "-m", "700", str(elsewhere)], check=True)
    path = data["state_dir"] if make_link == "state directory" else data["pidfile"]
    if make_link == "state directory":
        as_user(["rm", "-rf", path], check=True)
    as_user(["ln", "-s", str(elsewhere), path], check=True)
    for action in ("start", "stop", "status"):
        result = run(action, *where(site, port), json=False)
        assert result.returncode == 1, (action, result.stdout)
        assert result.stderr.strip().endswith(f"refusing {make_link} {path}: it is a symlink"), result.stderr
    assert no_server_in(site, target)
    as_user(["rm", "-rf", path, str(elsewhere)], check=True)


def test_world_writable_state_directory_is_refused(run, site, as_user, target):
    port = free_port()
    data = started(run, site, port)
    assert run("stop", *where(site, port)).returncode == 0
    as_user(["chmod", "777", data["state_dir"]], check=True)
    result = run("start", *where(site, port), json=False)
    assert result.returncode == 1
    assert f"refusing state directory {data['state_dir']}: writable by others (mode 777)" in result.stderr
    assert no_server_in(site, target)


@pytest.fixture
def roots_dir():
    """A directory of root's that the test user can enter but not write."""
    path = tempfile.mkdtemp(prefix="roots-", dir="/var/tmp/fabserve-test")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


def test_state_directory_owned_by_another_user_is_refused(run, site, roots_dir, target):
    foreign = roots_dir / "foreign"
    foreign.mkdir(mode=0o755)
    env = {"FABRIC_FABSERVE_STATE_DIR": str(foreign)}
    result = run("start", *where(site, free_port()), json=False, env=env)
    assert result.returncode == 1
    assert f"refusing state directory {foreign}: owned by uid 0, not {target.uid}" in result.stderr
    assert no_server_in(site, target)


def test_unwritable_state_directory_fails_before_launching(run, site, roots_dir, target):
    state = roots_dir / "state"
    result = run("start", *where(site, free_port()), json=False, env={"FABRIC_FABSERVE_STATE_DIR": str(state)})
    assert result.returncode == 1
    assert f"cannot create state directory {state}: Permission denied" in result.stderr
    assert no_server_in(site, target)


def test_full_state_filesystem_fails_before_launching(run, site, tiny_tmpfs, as_user, target):
    port = free_port()
    env = {"FABRIC_FABSERVE_STATE_DIR": str(tiny_tmpfs / "state")}
    as_user(["sh", "-c", 'cat /dev/zero > "$1/fill"', "sh", str(tiny_tmpfs)])
    result = run("start", *where(site, port), env=env)
    assert result.returncode == 1
    assert "No space left on device" in result.json["error"], result.json
    assert no_server_in(site, target)
    assert not port_listening(port)
    assert not os.path.exists(result.json["pidfile"])


# ------------------------------------------------------------------ processes


def ignore_term(project):
    """Make the server deaf to TERM. Only without the autoreloader: that one
    installs its own TERM handler after the settings are loaded."""
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\nimport signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n")


def test_server_ignoring_term_is_killed_after_the_grace(run, site):
    ignore_term(site)
    port = free_port()
    data = started(run, site, port, "--noreload")
    began = time.monotonic()
    stop = run("stop", *where(site, port), "--timeout", "2")
    assert stop.returncode == 0, stop.stdout
    assert time.monotonic() - began >= 2  # TERM alone did nothing
    assert stop.json["killed"] is True and "with SIGKILL after 2s grace" in stop.json["message"]
    assert not any(alive(pid) for pid in data["pids"]) and not port_listening(port)


#: Becomes root for good (real, effective and saved UID) and waits: no signal
#: the test user sends reaches it, KILL included (EPERM).
SURVIVOR_C = r"""
#define _GNU_SOURCE
#include <unistd.h>
int main(void) {
    if (setresuid(0, 0, 0) != 0)
        return 1;
    for (;;)
        pause();
}
"""


@pytest.fixture
def survivor_site(site, tmp_path):
    """A project whose server, at start, starts a setuid-root helper in its own
    process group and environment (the token too): the one member stop cannot end.
    Yields (project, the file the helper's PID is written to); kills the helper
    as root by that PID and removes the binary."""
    source = tmp_path / "survivor.c"
    source.write_text(SURVIVOR_C)
    helper = site / "survivor"
    subprocess.run(["gcc", "-O2", "-o", str(helper), str(source)], check=True, capture_output=True, text=True)
    os.chmod(helper, 0o4755)  # root's, setuid: the test user runs it, cannot signal it
    pidfile = site / "survivor.pid"
    settings = site / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + (
        "\nimport os, subprocess\n"
        "if os.environ.get('FABSERVE_TOKEN'):  # the server fabserve starts, not a manage command\n"
        f"    open({str(pidfile)!r}, 'w').write(str(subprocess.Popen([{str(helper)!r}]).pid))\n"))
    try:
        yield site, pidfile
    finally:
        if pidfile.exists():
            kill_pids([int(pidfile.read_text())])
        helper.unlink()


def test_a_process_that_survives_kill_makes_stop_exit_1_naming_it(run, survivor_site):
    site, pidfile = survivor_site
    port = free_port()
    data = started(run, site, port, "--noreload")
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text())
    survivor = int(pidfile.read_text())
    # setresuid done: the test user can no longer signal it (a nosuid mount or no_new_privs would stop it here).
    assert wait_for(lambda: real_uid(survivor) == 0), f"helper {survivor} did not become root"
    assert group_members(data["pid"]) == sorted([data["pid"], survivor])
    stop = run("stop", *where(site, port), "--timeout", "1")
    assert stop.returncode == 1, stop.stdout + stop.stderr
    assert stop.json["ok"] is False and stop.json["state"] == "failed", stop.json
    assert stop.json["changed"] is True  # the server's own processes are gone
    assert stop.json["message"] == f"still running after SIGKILL: pids {survivor}", stop.json
    assert stop.json["pids"] == [survivor] and alive(survivor) and not alive(data["pid"])
    assert not port_listening(port)  # the server itself is gone: only the helper stayed


def test_reloaded_child_is_stopped_too(run, site):
    port = free_port()
    data = started(run, site, port)
    first_child = next(pid for pid in data["pids"] if pid != data["pid"])
    (site / "mysite" / "urls.py").write_text((site / "mysite" / "urls.py").read_text() + "\n# touched\n")
    assert wait_for(lambda: not alive(first_child), timeout=20)
    assert wait_for(lambda: len(group_members(data["pid"])) == 2 and http_status(data["url"]) == 200, timeout=20)
    new_child = next(pid for pid in group_members(data["pid"]) if pid != data["pid"])
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and new_child in stop.json["pids"]
    assert not alive(new_child) and not alive(data["pid"]) and not port_listening(port)


def test_other_users_identical_server_and_a_log_follower_survive(run, site, spawn_as_user, spawn_as_other,
                                                                 other_user, target):
    port = free_port()
    data = started(run, site, port)
    # The other user runs the very same command line; a settings module that
    # sleeps keeps it alive without needing the port.
    sleepy = os.path.join(other_user.pw_dir, "sleepy.py")
    with open(sleepy, "w") as handle:
        handle.write("import time\ntime.sleep(600)\n")
    os.chmod(sleepy, 0o644)
    twin = spawn_as_other([target.python, site / "manage.py", "runserver", f"127.0.0.1:{port}"],
                          env={"PYTHONPATH": other_user.pw_dir, "DJANGO_SETTINGS_MODULE": "sleepy"})
    follower = spawn_as_user(["tail", "-f", data["log"]])
    assert wait_for(lambda: len(group_members(twin.pid)) == 2 and len(group_members(follower.pid)) == 2)
    bystanders = group_members(twin.pid) + group_members(follower.pid)
    os.unlink(data["pidfile"])  # make stop search /proc
    stop = run("stop", *where(site, port))
    assert stop.returncode == 0 and sorted(stop.json["pids"]) == sorted(data["pids"])
    assert all(alive(pid) for pid in bystanders)


def test_stop_converges_after_the_connection_drops_mid_grace(fab, site, target):
    ignore_term(site)
    port = free_port()
    first = fab("start", *where(site, port), "--noreload", "--json")
    assert first.returncode == 0
    data = first.json
    cmd = [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config), "-H", target.alias,
           "stop", *where(site, port), "--timeout", "8"]
    earlier = set(agents_of(target.uid))
    stopper = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        sessions = []
        assert wait_for(lambda: sessions.extend(sessions_above(agents_of(target.uid), earlier)) or sessions,
                        timeout=30)
        session = sessions[0]
        time.sleep(0.5)  # inside the grace: TERM sent and ignored
        assert all(alive(pid) for pid in data["pids"])
        os.kill(session, signal.SIGKILL)
        _, err = stopper.communicate(timeout=60)
        assert stopper.returncode == 1 and "stop failed" in err, err
    finally:
        if stopper.poll() is None:
            os.killpg(stopper.pid, signal.SIGKILL)
    again = fab("stop", *where(site, port), "--json")
    assert again.returncode == 0, again.stderr
    assert not any(alive(pid) for pid in data["pids"]) and not port_listening(port)
    assert fab("status", *where(site, port)).returncode == 3


def sessions_above(agents, earlier):
    """The per-connection sshd processes above agents not in `earlier`: killing
    one drops that connection. An agent of an earlier call may still be exiting,
    and any of them may vanish while its ancestry is read."""
    sessions = []
    for pid in agents:
        if pid in earlier:
            continue
        try:
            while pid > 1:
                if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sshd: "):
                    sessions.append(pid)
                    break
                pid = int(stat_fields(pid)[1])
        except (OSError, TypeError):
            continue
    return sessions


def agents_of(uid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and b"fabserve-agent" in open(
                        f"/proc/{name}/cmdline", "rb").read():
                    found.append(int(name))
            except OSError:
                continue
    return found


# ------------------------------------------------------------- input, quoting


def test_env_values_reach_the_server_literally(run, site, target):
    marker = target.home / "PWNED"
    values = {
        "QUOTES": "it's \"quoted\"",
        "SUBST": f"$(touch {marker})",
        "TICKS": f"`touch {marker}`",
        "SEMI": f"x; touch {marker}",
        "NEWLINE": "two\nlines",
        "DASH": "-rf /",
    }
    flags = [arg for key, value in values.items() for arg in ("--env", f"{key}={value}")]
    port = free_port()
    data = started(run, site, port, *flags)
    environ = open(f"/proc/{data['pid']}/environ", "rb").read().split(b"\0")
    for key, value in values.items():
        assert f"{key}={value}".encode() in environ
    assert run("stop", *where(site, port)).returncode == 0
    assert not marker.exists()


def test_project_path_with_a_newline_is_rejected_before_connecting(run, target):
    result = run("start", "--project", "/srv/a\nb", json=False)
    assert result.returncode == 2
    assert "--project must be a path without NUL bytes or newlines" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_project_path_with_a_leading_dash(run, make_project, target):
    odd = make_project("-rf x")
    port = free_port()
    data = started(run, odd, port)
    assert data["project"] == str(odd) and http_status(data["url"]) == 200
    assert run("stop", *where(odd, port)).returncode == 0
    assert not port_listening(port)
