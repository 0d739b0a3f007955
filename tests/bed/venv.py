"""Virtualenvs for the test accounts, one per requirements content, shared by sessions."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from .run import run_checked
from .state import STATE_DIR, state_lock

SYSTEM_PYTHON = Path("/usr/bin/python3")
_STAMP = ".complete"


def venv_path(base_dir: Path, requirements: Sequence[Path]) -> Path:
    """base_dir/venv-<hash>: the hash is of the requirements files' content, in order."""
    digest = hashlib.sha256()
    for path in requirements:
        digest.update(path.read_bytes())
    return base_dir / f"venv-{digest.hexdigest()[:12]}"


def is_complete(path: Path) -> bool:
    return (path / _STAMP).exists()


def build_venv(path: Path, requirements: Sequence[Path], python: Path = SYSTEM_PYTHON) -> Path:
    """Build the venv at path with requirements installed, readable by every account,
    unless a complete one is there; returns path. Callers sharing path hold a lock.

    Built in place: a renamed venv would keep its old path in every script's shebang
    (bin/fab, bin/django-admin). The default python is Debian's, not pyenv's: the
    test accounts cannot enter /root."""
    if is_complete(path):
        return path
    if path.exists():
        shutil.rmtree(path)  # left half-built by an interrupted run
    run_checked([python, "-m", "venv", path])
    requirement_args = [arg for req in requirements for arg in ("-r", req)]
    run_checked([path / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 *requirement_args])
    run_checked(["chmod", "-R", "a+rX", path])
    (path / _STAMP).write_text("ok\n")
    return path


def shared_venv(requirements: Sequence[Path]) -> Path:
    """A venv of Debian's python with `requirements`, in STATE_DIR, built once per
    their content and shared by every session and account."""
    path = venv_path(STATE_DIR, requirements)
    if not is_complete(path):
        with state_lock():
            build_venv(path, requirements)
    return path
