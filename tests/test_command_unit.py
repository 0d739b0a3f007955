"""The agent's command line: one line that every login shell passes on unchanged,
the request on its stdin.

sshd hands the command to the user's login shell. csh and tcsh reject a newline
inside single quotes and expand `!` even there, so the command must be one line
whose only quoted words are the interpreter and the -c program, and the rest
plain hex and base64. These run as any user; no sshd.
"""

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zlib

import pytest

from tasks import agent, payload, remote, settings
from tasks.config import merged

# Hex and base64: no character that any of the shells treats specially.
PLAIN_WORD = re.compile(r"[A-Za-z0-9+/]+=*")
SHELLS = ("sh", "bash", "dash", "zsh", "fish", "tcsh", "csh")
HOSTILE = "it's a $(touch {marker}) `touch {marker}` !! !$ \\ \"x\" ; & | * ~"


def status_request(project, state_dir="/tmp/fabserve-state"):
    values = merged({}, {"project": str(project), "state_dir": str(state_dir)})
    return settings.request("status", values, [])


def test_the_program_is_one_line_with_nothing_a_shell_expands_inside_single_quotes():
    assert re.fullmatch(r"[\w .,;()#-]+", payload.BOOTSTRAP), payload.BOOTSTRAP
    assert payload.BOOTSTRAP.endswith("# fabserve-agent")  # what ps shows of the agent


def test_the_command_is_one_line_of_plain_words_after_the_interpreter_and_program():
    python = "/opt/my python's/bin/python3"
    cmd = remote.command(python)
    assert "\n" not in cmd and "\r" not in cmd and "!" not in cmd
    head = f"{shlex.quote(python)} -E -S -c '{payload.BOOTSTRAP}' "
    assert cmd.startswith(head)
    words = cmd[len(head):].split(" ")
    assert len(words) == 3
    assert all(PLAIN_WORD.fullmatch(word) for word in words), [word[:40] for word in words]


def test_the_words_decode_to_the_agent_and_the_loader_and_the_request_is_the_stdin_line():
    req = status_request(f"/srv/{HOSTILE}")
    python = "/usr/bin/python3"
    words = shlex.split(remote.command(python))
    assert words[:5] == [python, "-E", "-S", "-c", payload.BOOTSTRAP]
    digest, package, loader = words[5:]
    joined = zlib.decompress(base64.b64decode(package))
    assert digest == hashlib.sha256(joined).hexdigest()[:16]
    parts = joined.decode("utf-8").split("\0")
    assert parts[::2] == list(agent.MODULES)  # every module, in the order each imports those before it
    for name, source in zip(parts[::2], parts[1::2]):
        assert source == payload.blanked((payload.PACKAGE_DIR / f"{name}.py").read_text())
    assert zlib.decompress(base64.b64decode(loader)).decode("ascii") == payload.LOADER
    assert json.loads(remote.request_line(req)) == req


def shell_path(name):
    """The shell's path; a missing one skips here, but fails in CI (bin/setup --test installs them)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (bin/setup --test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


@pytest.mark.parametrize("shell", SHELLS)
def test_each_shell_runs_the_agent_with_the_request_unchanged(shell, tmp_path):
    path = shell_path(shell)
    marker = tmp_path / "PWNED"
    project = f"{tmp_path}/{HOSTILE.format(marker=marker)}"
    cmd = remote.command(sys.executable)
    line = remote.request_line(status_request(project, tmp_path / "state"))
    # Twice: the first call compiles and caches the agent, the second loads the cache.
    for _ in range(2):
        done = subprocess.run([path, "-c", cmd], capture_output=True, text=True, input=line,
                              cwd=tmp_path, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        result = remote.parse_result(done.stdout)
        assert result is not None, done.stderr
        assert result["action"] == "status" and result["state"] == "stopped"
        assert result["project"] == project
        assert done.returncode == 3 and done.stderr == ""
    assert not marker.exists()
    assert len(list((tmp_path / ".cache" / "fabserve").iterdir())) == 1
