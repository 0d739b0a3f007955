"""fabserve as users install it: a wheel built from the checkout, in a fresh
virtualenv; or, where building one would only cost time, the `fabserve` command
run from the checkout's own code."""

from __future__ import annotations

import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from . import BedError
from .run import run_checked
from .target import REPO
from .venv import SYSTEM_PYTHON

#: What the build reads: pyproject.toml names the rest.
BUILD_INPUTS = ("pyproject.toml", "README.md", "requirements.txt", "tasks")
#: Seconds for pip to fetch the build backend and the pinned dependencies.
PIP_TIMEOUT = 300


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding the installed package."""

    venv: Path
    python: Path
    fabserve: Path  # the console script
    fab: Path  # Fabric's own, installed as a dependency
    package: Path  # site-packages/fabserve

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file and directory of the installed package and its metadata,
        relative to site-packages, with its mtime (ns) and size."""
        site = self.package.parent
        found: dict[str, tuple[int, int]] = {}
        for top in [self.package, *site.glob("fabserve-*.dist-info")]:
            for path in [top, *top.rglob("*")]:
                info = path.lstat()
                found[str(path.relative_to(site))] = (info.st_mtime_ns, info.st_size)
        return found


def checkout_command(command: Path, tools: Path) -> Path:
    """`command`, a `fabserve` command that imports the checkout's tasks/ as the
    package fabserve (linked into `tools`/site-packages), run by this Python."""
    packages = tools / "site-packages"
    packages.mkdir(parents=True, exist_ok=True)
    if not (packages / "fabserve").exists():
        (packages / "fabserve").symlink_to(REPO / "tasks")
    command.parent.mkdir(parents=True, exist_ok=True)
    command.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(packages)!r})\n"
                       "from fabserve.program import program\nprogram.run()\n")
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    return command


def build_wheel(out_dir: Path) -> Path:
    """The checkout's wheel, built by pip in out_dir from a copy of BUILD_INPUTS,
    so the checkout gets no build/ or *.egg-info of its own; pip fetches the
    pinned build backend from the package index."""
    source = out_dir / "source"
    source.mkdir(parents=True)
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = out_dir / "wheels"
    run_checked([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                 "-w", wheels, source], timeout=PIP_TIMEOUT)
    built = sorted(wheels.glob("fabserve-*.whl"))
    if len(built) != 1:
        raise BedError(f"pip wheel made {[path.name for path in built]}, not one fabserve wheel")
    return built[0]


def install(wheel: Path, venv: Path, python: Path = SYSTEM_PYTHON) -> Installed:
    """A new virtualenv at venv (made by `python`) with the wheel and its pinned
    dependencies, readable by every account."""
    run_checked([python, "-m", "venv", venv])
    run_checked([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
                timeout=PIP_TIMEOUT)
    run_checked(["chmod", "-R", "a+rX", venv])
    purelib = run_checked([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    return Installed(venv=venv, python=venv / "bin" / "python", fabserve=venv / "bin" / "fabserve",
                     fab=venv / "bin" / "fab", package=Path(purelib.stdout.strip()) / "fabserve")
