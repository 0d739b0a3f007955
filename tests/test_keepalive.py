"""ssh_config's ServerAliveInterval, which Fabric ignores, reaches the connection:
an sshd of its own at LogLevel DEBUG1 (it logs each global request) counts the
keepalives a quiet `manage` command's connection sends, as the test user."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bed import procs
from bed.net import free_port
from bed.run import run_in_group
from bed.sshd import keygen, ssh_config, sshd_config, start_sshd, wait_for_sshd, write_sshd_config
from helpers import REPO

KEEPALIVE = "rtype keepalive@lag.net"
ALIAS = "fabserve-keepalive"


@pytest.fixture
def debug_sshd(target, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(port, log) of an sshd on 127.0.0.1 that lets the target's key in as its user."""
    port = free_port()
    config = write_sshd_config(tmp_path / "sshd_config", sshd_config(
        listen="127.0.0.1", port=port, host_key=keygen(tmp_path / "host_ed25519", "keepalive host"),
        users=[target.user], log_level="DEBUG1"))
    log = tmp_path / "sshd.log"
    sshd = start_sshd(config, log)
    try:
        wait_for_sshd(sshd, "127.0.0.1", port, log)
        yield port, log
    finally:
        procs.terminate(sshd)


def quiet_manage(target, site: Path, port: int, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A manage command that prints nothing for 3.5 s, through a client config with `extra` lines."""
    text = ssh_config(alias=ALIAS, hostname="127.0.0.1", port=port, user=target.user, key=target.key)
    path.write_text(text + "".join(f"    {line}\n" for line in extra))
    code = 'import time; time.sleep(3.5); print("done")'
    return run_in_group([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(path), "-H", ALIAS, "manage",
                         f"shell -c '{code}'", "--project", str(site)], cwd=REPO, env=dict(os.environ), timeout=60,
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def keepalives(log: Path) -> int:
    return log.read_text(errors="replace").count(KEEPALIVE)


def test_server_alive_interval_sends_keepalives_on_a_quiet_connection(target, site, debug_sshd, tmp_path):
    port, log = debug_sshd
    plain = quiet_manage(target, site, port, tmp_path / "plain_config")
    assert plain.returncode == 0 and "done" in plain.stdout, plain.stdout + plain.stderr
    assert keepalives(log) == 0  # without the option, as with OpenSSH: none

    alive = quiet_manage(target, site, port, tmp_path / "alive_config", "ServerAliveInterval 1")
    assert alive.returncode == 0 and "done" in alive.stdout, alive.stdout + alive.stderr
    assert keepalives(log) >= 2, log.read_text()[-2000:]


def test_a_server_alive_interval_that_is_no_number_is_one_line(target, site, debug_sshd, tmp_path):
    port, _ = debug_sshd
    bad = quiet_manage(target, site, port, tmp_path / "bad_config", "ServerAliveInterval soon")
    assert bad.returncode == 1 and bad.stdout == "", bad.stdout + bad.stderr
    assert bad.stderr.strip() == (f"{ALIAS}: manage failed: ServerAliveInterval in ssh_config must be a whole "
                                  f"number of seconds, not 'soon'")
