"""Running `fab` against the target: over SSH, or in local mode as the target's user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
