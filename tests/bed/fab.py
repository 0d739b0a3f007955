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
        target = self._target
        if local:
            cmd = runuser_argv(target.user, [target.venv / "bin" / "fab", "-r", self._product, *args])
            cwd, full_env = target.home, user_env(target.user, target.home, env)
        else:
            cmd = [sys.executable, "-m", "fabric", "-r", str(REPO), "-S", str(target.ssh_config),
                   "-H", target.alias, *args]
            cwd, full_env = REPO, os.environ | (env or {})
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
