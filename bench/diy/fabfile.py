"""How people manage runserver over SSH today, without fabserve: a plain Fabric
fabfile with `nohup ... &`, `ps | grep` and `kill`.

The benchmark runs the same three shell commands through Ansible too
(`-m shell` and `-m raw`), so all three tools do exactly the same work on the
host. Each is one POSIX sh command line (Ansible's shell module runs /bin/sh);
the port probes use bash's /dev/tcp. `start` waits until the port answers and
`stop` until it is free, so they do what fabserve's start and stop promise.
"""

import time
import urllib.request

from fabric import task

PROJECT = "~/site"
BIND = "127.0.0.1:8000"
PROBE = "bash -c ': </dev/tcp/127.0.0.1/8000' 2>/dev/null"
# The [m] keeps grep from matching itself (and the shell that runs this line).
FIND = f"ps -u \"$(id -u)\" -o pid=,args= | grep '[m]anage.py runserver {BIND}'"

START = (
    f"cd {PROJECT} || exit 1; "
    f"nohup .venv/bin/python manage.py runserver {BIND} >>runserver.log 2>&1 </dev/null & "
    f"i=0; until {PROBE}; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.05; done"
)
STATUS = FIND
STOP = (
    f"pids=$({FIND} | awk '{{print $1}}'); "
    "[ -z \"$pids\" ] || kill $pids; "
    f"i=0; while {PROBE}; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.05; done"
)


MIGRATE = f"cd {PROJECT} && .venv/bin/python manage.py migrate --noinput"
TUNNEL_PORT = 16980  # the local end of ci_flow's forward_local


@task
def start(c):
    """nohup runserver in the background, then wait for the port."""
    c.run(START, hide=True, in_stream=False)


@task
def status(c):
    """ps | grep: exit 0 when a runserver process is there."""
    c.run(STATUS, hide=True, in_stream=False)


@task
def stop(c):
    """kill what ps | grep found, then wait until the port is free."""
    c.run(STOP, hide=True, in_stream=False)


@task
def ci_flow(c):
    """The CI flow by hand: migrate, start as above, forward_local with the
    customary sleep (it binds in a thread after the block began, fabric #2290),
    one request through it, stop as above."""
    c.run(MIGRATE, hide=True, in_stream=False)
    c.run(START, hide=True, in_stream=False)
    try:
        with c.forward_local(TUNNEL_PORT, remote_port=8000):
            time.sleep(1)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            # Read to the end: a socket closed with unread data is reset, and
            # forward_local's thread then fails the task on leaving the block.
            with opener.open(f"http://127.0.0.1:{TUNNEL_PORT}/", timeout=30) as response:
                response.read()
                print("fetched", response.status)
    finally:
        c.run(STOP, hide=True, in_stream=False)
