"""fab's connection failures that need neither root nor an sshd, end to end."""

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, fab_plain, free_port

# fab runs with a HOME of the test's own: under accept-new it records host keys.
pytestmark = pytest.mark.usefixtures("own_home")


def test_unreachable_host_is_one_line_and_exit_1():
    host = f"nobody@127.0.0.1:{free_port()}"
    result = fab_plain("-H", host, "status", "--project", "/srv/site", "--json")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and '"error": "cannot connect: Connection refused"' in lines[0]
    human = fab_plain("-H", host, "status", "--project", "/srv/site")
    assert human.returncode == 1
    assert human.stderr.strip() == f"{host}: status failed: cannot connect: Connection refused"


#: The `fabserve` command as its console script runs it, from the checkout.
FABSERVE = (sys.executable, "-c", "import sys; sys.argv[0] = 'fabserve'; from tasks.program import program; program.run()")


def fabserve_plain(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*FABSERVE, *args], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, **kwargs)


@pytest.mark.parametrize("argv, line", [
    (["nosuch"], "No idea what 'nosuch' is! ({program} --list shows the tasks)"),
    (["start", "--nosuch"], "No idea what '--nosuch' is! ({program} --help start shows its flags)"),
    (["manage"], "'manage' did not receive required positional arguments: 'args' "
                 "({program} --help manage shows its flags)"),
    (["--help", "nosuch"], "No idea what 'nosuch' is! ({program} --list shows the tasks)"),
    (["status", "--port"], "Flag <Argument: port (o)> needed value and was not given one! "
                           "({program} --help status shows its flags)"),
])
def test_usage_errors_invoke_catches_are_one_line_exit_2_with_a_hint(argv, line):
    for program, result in (("python -m fabric", fab_plain(*argv)), ("fabserve", fabserve_plain(*argv))):
        assert (result.returncode, result.stdout) == (2, ""), (program, result)
        assert result.stderr == line.format(program=program) + "\n", program


def test_task_help_names_the_program_and_a_placeholder_for_env():
    for program, run in (("python -m fabric", fab_plain), ("fabserve", fabserve_plain)):
        manage = run("--help", "manage")
        assert manage.returncode == 0, manage.stderr
        assert manage.stdout.startswith(f"Usage: {program} [--core-opts] manage [--options]")
        assert f'e.g. {program} manage "migrate --noinput"' in manage.stdout
        start = run("--help", "start")
        assert re.search(r"^  -e KEY=VALUE, --env=KEY=VALUE +KEY=VALUE set in", start.stdout, re.MULTILINE), start.stdout
    # The tunnel's --run help says which program exits with CMD's status.
    assert "fabserve exits" in " ".join(fabserve_plain("--help", "tunnel").stdout.split())


def test_help_into_a_closed_pipe_is_no_traceback():
    fab = (sys.executable, "-m", "fabric", "-r", str(REPO))
    # Buffered, as a user's stdout is: the whole help fits the buffer, whose last flush meets the closed pipe.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    # `fab --version` and a bare `fab --help` end before fab loads fabfile.py: only
    # Fabric's own code runs for them, so only the fabserve command is asked to.
    cases = [(fab, ("--help", "manage")), (fab, ("--list",))]
    cases += [(FABSERVE, args) for args in (("--help", "manage"), ("--help",), ("--list",), ("--version",))]
    for argv, args in cases:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line: `| head -0`
        with os.fdopen(write, "w") as closed:
            result = subprocess.run([*argv, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=closed,
                                    stderr=subprocess.PIPE, text=True, timeout=60, env=env)
        assert (result.returncode, result.stderr) == (0, ""), (argv, args, result.stderr)
