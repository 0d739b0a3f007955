"""The installed package's cases: `fabserve -H host status` from a wheel in a fresh
virtualenv, run from a directory outside the checkout, beside `fab -H host status`
in the checkout; and the import time of each (`python -X importtime`)."""

from __future__ import annotations

import shutil
import sys
from functools import lru_cache
from pathlib import Path

from bed import BedError
from bed.package import Installed, build_wheel, install

from bench.layout import PORT, PROJECT, PYTHON, REPO, STATE
from bench.runner import Runner, execute
from bench.samples import Sample

PACKAGE_DIR = STATE / "package"
# The interpreter the checkout's .venv was made from: both clients then run on the same Python.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


@lru_cache(maxsize=1)
def installed() -> Installed:
    """The wheel of this checkout in a new virtualenv, built once per run (untimed)."""
    shutil.rmtree(PACKAGE_DIR, ignore_errors=True)
    (PACKAGE_DIR / "elsewhere").mkdir(parents=True)
    return install(build_wheel(PACKAGE_DIR / "build"), PACKAGE_DIR / "venv", python=BASE_PYTHON)


def import_seconds(python: Path, module: str, cwd: Path) -> float | None:
    """The cumulative import time `python -X importtime` reports for `module`, in seconds."""
    result = execute([python, "-X", "importtime", "-c", f"import {module}"], cwd=cwd)
    for line in result.output.splitlines():
        fields = [field.strip() for field in line.removeprefix("import time:").split("|")]
        if result.rc == 0 and len(fields) == 3 and fields[2] == module and fields[1].isdigit():
            return int(fields[1]) / 1e6
    return None


def import_case(runner: Runner, name: str, label: str, python: Path, module: str, cwd: Path) -> None:
    case = runner.case(name, label, "package", client=False)
    seconds = import_seconds(python, module, cwd)
    if seconds is None:
        runner.fail(case, label, f"no import time for {module}")
    else:
        runner.add(case, Sample(seconds, 0, 0))


def installed_cases(runner: Runner) -> None:
    """Right after the checkout's `fab status` (the server runs): the installed command's."""
    host = runner.host
    try:
        package = installed()
    except BedError as exc:
        runner.fail(runner.case("installed_status", "fabserve status (installed)", "package"),
                    "installed package", str(exc))
        return
    runner.measure("installed_status", "fabserve status (installed)", "package",
                   [package.fabserve, "-S", runner.bed.ssh_config, "-H", host.alias, "status",
                    "--project", PROJECT, "--port", str(PORT)], [host], cwd=PACKAGE_DIR / "elsewhere")
    import_case(runner, "import_installed", "import fabserve (installed)", package.python,
                "fabserve", PACKAGE_DIR / "elsewhere")
    import_case(runner, "import_checkout", "import tasks (checkout)", PYTHON, "tasks", REPO)
