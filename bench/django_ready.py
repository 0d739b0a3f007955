"""Django's own ready time: launch `manage.py runserver` and time it until the
port accepts a connection. No SSH and no fabserve: this is the floor that
fabserve's `start` adds its overhead to.

Run as root inside the host's network namespace; the server runs as the
host's user, launched the way fabserve's agent launches it (own session,
PYTHONUNBUFFERED, the project's .venv interpreter). Prints {"seconds": S}.

usage: django_ready.py USER PROJECT PORT
"""

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time

POLL = 0.005
TIMEOUT = 60


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def main(user, project, port):
    account = pwd.getpwnam(user)
    if project.startswith("~/"):  # the host user's home, not root's
        project = os.path.join(account.pw_dir, project[2:])
    port = int(port)
    if answers(port):
        sys.exit(f"port {port} is already taken")
    env = {"HOME": account.pw_dir, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8",
           "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    argv = [os.path.join(project, ".venv", "bin", "python"), os.path.join(project, "manage.py"),
            "runserver", f"127.0.0.1:{port}"]
    began = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=project, env=env, user=account.pw_uid, group=account.pw_gid,
                            extra_groups=[], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not answers(port):
            if proc.poll() is not None:
                sys.exit(f"runserver exited with {proc.returncode} before the port answered")
            if time.perf_counter() - began > TIMEOUT:
                sys.exit(f"the port did not answer within {TIMEOUT} s")
            time.sleep(POLL)
        seconds = time.perf_counter() - began
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
        deadline = time.monotonic() + 10
        while answers(port) and time.monotonic() < deadline:
            time.sleep(POLL)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(*sys.argv[1:])
