"""The unit tier as an account that cannot read root's home (`nobody`), from a copy of
the checkout with a venv of Debian's python: what a contributor without root runs.
CI runs it (`.ci/run`) because root's suite cannot see what such a user hits, e.g.
a test module that reads /root at collection time.

    PYTHONPATH=tests .venv/bin/python -m bed.unprivileged

Exits 0 when the tier passed with at least one test run, 1 otherwise (root only)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .state import ensure_dir
from .users import runuser_argv, user_env
from .venv import shared_venv

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "nobody"
REQUIREMENTS = (REPO / "requirements.txt", REPO / "requirements-test.txt")
#: Left out of the copy: interpreters, caches and history the tier must not need.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache")
#: The count in pytest's summary line, e.g. "593 passed, 291 deselected in 17.74s".
PASSED = re.compile(r"\b(\d+) passed\b")


def unit_venv() -> Path:
    """The tests' requirements in a venv of Debian's python, shared like the target's."""
    return shared_venv(REQUIREMENTS)


def run_unit_tier(venv: Path, account: str = ACCOUNT) -> tuple[int, str]:
    """pytest -m unit as account in a copy of the checkout only it reads: (its exit status, its output)."""
    with tempfile.TemporaryDirectory(prefix="unit-as-nobody-", dir=ensure_dir()) as work:
        tree = Path(work) / "repo"
        shutil.copytree(REPO, tree, symlinks=True, ignore=NOT_COPIED)
        subprocess.run(["chmod", "-R", "a+rX", work], check=True)
        # One process (-n 0): .ci/run runs this beside the whole suite, whose workers keep
        # every CPU busy; workers of its own would only add their start-up.
        argv = runuser_argv(account, [venv / "bin" / "python", "-m", "pytest", "-m", "unit", "-q", "-n", "0",
                                      "-p", "no:cacheprovider"])
        env = user_env(account, "/nonexistent", {"PYTHONDONTWRITEBYTECODE": "1"})
        done = subprocess.run(argv, cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
    return done.returncode, done.stdout


def verdict(status: int, output: str) -> str | None:
    """None when pytest exited 0 and its summary line counts a test passed, else why not."""
    summary = output.rstrip().rpartition("\n")[2]
    passed = PASSED.search(summary)
    if status == 0 and passed is not None and int(passed.group(1)) > 0:
        return None
    return f"unit tier as {ACCOUNT}: pytest exited {status}, {passed.group(1) if passed else 'no'} tests passed"


def main() -> int:
    status, output = run_unit_tier(unit_venv())
    failed = verdict(status, output)
    if failed is not None:
        sys.stdout.write(output)
        print(failed, file=sys.stderr)
        return 1
    print(f"unit tier as {ACCOUNT}: {output.rstrip().rpartition(chr(10))[2].strip('= ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
