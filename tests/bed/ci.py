"""A CI runner for the jobs docs/ci.md gives, against the test bed: the job's
`.fab/bin/fabserve` is this checkout's `fabserve` command, and the host the
jobs name, preview.example.com, is the target's sshd with its key pinned as the
jobs pin it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .package import checkout_command
from .target import Target

DOCUMENTED_HOST = "preview.example.com"


class Runner:
    """A job's working directory (`workdir`: its checkout) and HOME; fabserve in
    the checkout's .fab/, or in HOME's for a checkout given, which up ships."""

    def __init__(self, base: Path, target: Target, workdir: Path | None = None) -> None:
        self.target = target
        self.workdir = workdir or base / "job"
        self.home = base / "home"
        tools = base / "tools"
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        kind, blob = (target.ssh_config.parent / "host_ed25519.pub").read_text().split()[:2]
        (self.home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{target.port} {kind} {blob}\n")
        (self.home / ".ssh" / "config").write_text(
            f"Host {DOCUMENTED_HOST}\n    HostName 127.0.0.1\n    Port {target.port}\n"
            f"    IdentityFile {target.key}\n    IdentitiesOnly yes\n")
        # Jobs that ship their checkout (given as `workdir`) install fabserve outside it, in ~/.fab.
        checkout_command((self.home if workdir else self.workdir) / ".fab" / "bin" / "fabserve", tools)

    def step(self, script: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a job's shell step as the job would (bash -e, no stdin), its host the target's user."""
        path = self.workdir.parent / f"step-{abs(hash(script))}.sh"
        path.write_text(script.replace("deploy@", f"{self.target.user}@") + "\n")
        clean = {key: value for key, value in os.environ.items() if not key.startswith("FABRIC_")}
        return subprocess.run(["bash", "-e", str(path)], cwd=self.workdir, env={**clean, **env, "HOME": str(self.home)},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
