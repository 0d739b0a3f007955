"""OpenSSH for the test bed: host and client keys, sshd_config and ssh_config text,
starting an sshd (optionally inside a network namespace) and waiting for it."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import BedError, procs, wait_for
from .net import accepts
from .run import run_checked

SSHD = Path("/usr/sbin/sshd")
SSH = Path("/usr/bin/ssh")
IP = Path("/usr/sbin/ip")
PRIVSEP_DIR = Path("/run/sshd")


def keygen(path: Path, comment: str) -> Path:
    """A new passphrase-less ed25519 key at path (and path.pub); returns path."""
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
    return path


def sshd_config(*, listen: str, port: int, host_key: Path, users: Sequence[str],
                log_level: str = "VERBOSE") -> str:
    """An sshd_config that lets only users in, by key only. VERBOSE logs one
    "Accepted publickey" per connection and "Starting session:" per command."""
    options = [
        f"ListenAddress {listen}",
        f"Port {port}",
        f"HostKey {host_key}",
        "PidFile none",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin no",
        f"AllowUsers {' '.join(users)}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "StrictModes yes",
        "UseDNS no",
        f"LogLevel {log_level}",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp internal-sftp",
    ]
    return "\n".join(options) + "\n"


def write_sshd_config(path: Path, text: str) -> Path:
    """Write an sshd_config and have sshd -t check it (BedError if it is refused)."""
    path.write_text(text)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    run_checked([SSHD, "-t", "-f", path])
    return path


def ssh_config(*, alias: str, hostname: str, port: int, user: str, key: Path) -> str:
    """A client ssh_config Host block for alias that trusts whatever host key it meets."""
    options = [
        f"Host {alias}",
        f"    HostName {hostname}",
        f"    Port {port}",
        f"    User {user}",
        f"    IdentityFile {key}",
        "    IdentitiesOnly yes",
        "    StrictHostKeyChecking no",
        "    UserKnownHostsFile /dev/null",
        "    LogLevel ERROR",
    ]
    return "\n".join(options) + "\n"


def start_sshd(config: Path, log: Path, netns: str | None = None, program: Path = SSHD) -> subprocess.Popen[bytes]:
    """sshd -D -e -f config, output appended to log, inside network namespace netns if
    given (`ip netns exec` execs sshd, so the PID is sshd's own). It gets SIGTERM if
    the thread that started it ends. program: a link to sshd whose name becomes
    the PAM service's."""
    enter = [str(IP), "netns", "exec", netns] if netns else []
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [*enter, str(program), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=procs.die_with_parent(),
        )


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({log}: {error})"


def wait_for_sshd(proc: subprocess.Popen[bytes], address: str, port: int, log: Path,
                  timeout: float = 10) -> None:
    """Wait until address:port accepts connections; BedError with the log's tail if
    sshd exits or does not come up within timeout."""
    wait_for(lambda: proc.poll() is not None or accepts(address, port), timeout=timeout)
    if proc.poll() is not None or not accepts(address, port):
        raise BedError(f"sshd did not come up on {address}:{port}:\n{log_tail(log)}")
