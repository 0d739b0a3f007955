"""The agent's refusal to signal itself, run in a process of the test's own: no root, no sshd."""

import json
import subprocess
import sys

from helpers import REPO, free_port
from tasks import remote


def test_pidfile_naming_the_agent_itself_is_never_signalled(tmp_path):
    """The agent runs in a process whose pidfile and metadata name that very
    process (exec keeps the PID), as leader of its own group: a perfect trap."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "manage.py").write_text("")
    state = tmp_path / "state"
    request = {"action": "stop", "project": str(project), "port": free_port(), "addr": "127.0.0.1",
               "python": None, "settings": None, "env": {}, "noreload": False, "start_timeout": 5.0,
               "stop_timeout": 1.0, "lines": 10, "follow": False, "state_dir": str(state)}
    agent_cmd = remote.command(sys.executable)
    trap = (
        "import json, os, subprocess, sys\n"
        "sys.path.insert(0, {repo!r})\n"
        "from tasks.agent import procfs, state\n"
        "req = json.loads({req!r})\n"
        "inst = state.Instance(state.Host(state.Request(req)), state.Request(req))\n"
        "state.private_dir(inst.base); state.private_dir(inst.dir)\n"
        "me = os.getpid()\n"
        "meta = {{'pid': me, 'starttime': procfs.proc_stat(me)['starttime'], 'boot_id': procfs.boot_id()}}\n"
        "state.write_atomic(inst.meta_path, json.dumps(meta))\n"
        "state.write_atomic(inst.pidfile, str(me))\n"
        "os.execv('/bin/sh', ['sh', '-c', {cmd!r}])\n"
    ).format(repo=str(REPO), req=json.dumps(request), cmd="exec " + agent_cmd)
    proc = subprocess.run([sys.executable, "-c", trap], input=remote.request_line(request), capture_output=True,
                          text=True, timeout=60, start_new_session=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)  # not killed by a signal
    result = remote.parse_result(proc.stdout)
    assert result["changed"] is False and "not a server we started" in result["message"]
