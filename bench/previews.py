"""The up case: `fab up` of a git tree that has not changed since the last up
(sync finds it up to date, setup finds the requirements installed, migrate has
nothing to apply, then the start), against `fab start` alone of the same
project; each from a stopped server. bench/ratios.py compares them pair by pair.

The tree is fabserve's example project in a local git repository, its
requirements installed from a local wheelhouse (the hosts reach no index). The
first up (untimed, once per run) ships it and builds its venv.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from bed.wheels import django_wheelhouse

from bench.layout import FAB, REPO
from bench.runner import Runner, execute

GROUP = "up"
PROJECT = "~/up-site"
PORT = "8100"
PIN = (REPO / "example" / "requirements.txt").read_text().strip()
#: The beds (by ssh_config) whose host had its first up: the venv is built once per run.
PREPARED: set[Path] = set()


@lru_cache(maxsize=1)
def tree() -> Path:
    """The example project as a git work tree, made once per run, requirements offline."""
    root = Path(tempfile.mkdtemp(prefix="fabserve-bench-up-")) / "site"
    atexit.register(shutil.rmtree, root.parent, True)
    shutil.copytree(REPO / "example", root, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    (root / "requirements.txt").write_text(f"--no-index\n--find-links {django_wheelhouse(PIN)}\n{PIN}\n")
    (root / ".gitignore").write_text("*.sqlite3\n__pycache__/\n")
    for words in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@example.com",
                        *words], check=True, capture_output=True)
    return root


def fab(runner: Runner, *words: str) -> list[str]:
    return [str(FAB), "-r", str(REPO), "-S", str(runner.bed.ssh_config), "-H", runner.host.alias, *words,
            "--project", PROJECT, "--port", PORT]


def up_cases(runner: Runner) -> None:
    """Once: the first up (untimed) and a stop; then, each from a stopped server,
    a timed start and stop, and a timed up of the unchanged tree and stop."""
    one = [runner.host]
    if runner.bed.ssh_config not in PREPARED:
        PREPARED.add(runner.bed.ssh_config)
        first = execute(fab(runner, "up", "--src", str(tree()), "--json"))
        stopped = execute(fab(runner, "stop", "--json"))
        if first.rc != 0 or stopped.rc != 0:
            runner.fail(runner.case("up_unchanged", "fab up, unchanged tree", GROUP), "up: the first up",
                        (first.output + stopped.output)[-500:])
            return
    runner.measure("up_start", "fab start (the up project)", GROUP, fab(runner, "start", "--json"), one)
    execute(fab(runner, "stop", "--json"))
    runner.measure("up_unchanged", "fab up, unchanged tree (sync, setup, migrate, start)", GROUP,
                   fab(runner, "up", "--src", str(tree()), "--json"), one)
    execute(fab(runner, "stop", "--json"))
