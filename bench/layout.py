"""Where the benchmark's pieces are, the project every host serves, and the fan-out sizes."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STATE = Path("/var/tmp/fabserve-bench")  # shared across runs; readable by the bench users
RESULTS = BENCH / "results"
FAB = REPO / ".venv" / "bin" / "fab"
PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_VENV = BENCH / ".venv"
SYSTEM_PYTHON = Path("/usr/bin/python3")

DIY_FABFILE = BENCH / "diy" / "fabfile.py"
TRIVIAL_ROOT = BENCH / "trivial"
DJANGO_READY = BENCH / "django_ready.py"
MEASURE = BENCH / "measure.py"

PROJECT = "~/site"
PORT = 8000
FANOUT = (1, 5, 10, 20)


def fanout_sizes(hosts: int) -> list[int]:
    """The fan-out sizes a bed of `hosts` hosts runs: FANOUT up to it, and `hosts` itself."""
    sizes = [size for size in FANOUT if size <= hosts]
    if hosts not in sizes:
        sizes.append(hosts)
    return sizes
