"""Running `fab` against the target: over SSH, or in local mode as the target's user."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procs
from .run import run_in_group
from .target import REPO, Target
from .users import runuser_argv, user_env


@dataclass(frozen=True)
class FabResult:
    """Outcome of one `fab` invocation."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        """stdout as JSON lines: the object if there is exactly one line, else the list."""
        documents = [json.loads(line) for line in self.stdout.splitlines() if line.strip()]
        return documents[0] if len(documents) == 1 else documents


class FabRunner:
    """Runs `fab`: remote mode over SSH to the target, or local mode as the test user."""

    def __init__(self, target: Target, product: Path) -> None:
        self._target = target
        self._product = product
        self.remote_host = target.alias

    def __call__(
        self,
        *args: str,
        local: bool = False,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> FabResult:
        cmd, cwd, full_env = self.command(args, local, env)
        result = run_in_group(
            cmd,
            cwd=cwd,
            env=full_env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return FabResult(result.returncode, result.stdout, result.stderr)

    def command(self, args: tuple[str, ...], local: bool,
                env: dict[str, str] | None = None) -> tuple[list[str], Path, dict[str, str]]:
        """argv, cwd and environment of `fab args` in the mode asked."""
        target = self._target
        if local:
            argv = runuser_argv(target.user, [target.venv / "bin" / "fab", "-r", self._product, *args])
            return argv, target.home, user_env(target.user, target.home, env)
        return ([sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config),
                 "-H", target.alias, *args], REPO, os.environ | (env or {}))

    def spawn(self, *args: str, local: bool = False, **popen: Any) -> subprocess.Popen[Any]:
        """`fab args` started and not waited for, leading a process group of its own as a
        terminal's foreground job does (Ctrl-C: SIGINT to that whole group); stdin /dev/null."""
        argv, cwd, env = self.command(args, local)
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                **popen)


def interrupt(caller: subprocess.Popen[Any], whom: str, timeout: float = 60) -> tuple[Any, Any]:
    """One Ctrl-C to a `spawn`ed fab: SIGINT to its whole group as a terminal sends
    it (`whom` "group"), or to fab alone (the caller's one child under runuser);
    then its stdout and stderr once it exits."""
    if whom == "group":
        os.killpg(caller.pid, signal.SIGINT)
    else:
        fab_pid, = procs.children(caller.pid)
        os.kill(fab_pid, signal.SIGINT)
    return caller.communicate(timeout=timeout)


@contextlib.contextmanager
def ended(caller: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """`caller`, whose whole group is killed on the way out if it still runs (a failed test)."""
    try:
        yield caller
    finally:
        if caller.poll() is None:
            os.killpg(caller.pid, signal.SIGKILL)
            caller.wait()


def fab_on_hosts(hosts: list[Any], workdir: Path, *words: str, timeout: float = 120) -> dict[str, dict]:
    """`fab -H` every namespaced host in `hosts` (tests/bed/hosts.py) with `words` and
    --json, as a client with HOME `workdir` that accepts the hosts' keys on first
    sight; each host's result by host. Asserts that it exited 0 with one line per host."""
    ssh_config = workdir / "ssh_config"
    ssh_config.write_text(f"Host 10.*\n    StrictHostKeyChecking accept-new\n"
                          f"    UserKnownHostsFile {workdir / 'known_hosts'}\n    IdentitiesOnly yes\n")
    names = ",".join(f"{host.user}@{host.address}" for host in hosts)
    argv = [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(ssh_config), "-i", str(hosts[0].key),
            "-H", names, *words, "--json"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"})
    assert done.returncode == 0, done.stdout + done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(hosts)
    return {result["host"]: result for result in results}
