"""fab's connection failures that need neither root nor an sshd, end to end."""

import pytest

from helpers import fab_plain, free_port

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
