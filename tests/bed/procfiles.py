"""The three-process project of companion processes (issue 22): a bed Django project
given a `worker.py` (a loop printing a line every 0.2 s, standing in for Celery), a
`watch.py` (a loop that starts a child loop of its own, as npm does) and a Procfile
naming them. The tests and the benchmark both make it here."""

from __future__ import annotations

import os
from pathlib import Path

#: The interpreter the Procfile runs them with: the project's own, relative to the project
#: directory (each process's cwd), as fabserve's runserver uses it.
PYTHON = ".venv/bin/python"

WORKER = """\
import itertools
import time

for beat in itertools.count():
    print(f"worker beat {beat}", flush=True)
    time.sleep(0.2)
"""

WATCH = """\
import subprocess
import sys
import time

child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.2)"])
print(f"watch started child {child.pid}", flush=True)
while True:
    time.sleep(0.2)
"""

#: Each process's file and the Procfile line that runs it, in table order.
COMPANIONS = {"worker": ("worker.py", WORKER), "watch": ("watch.py", WATCH)}


def procfile_text(web: str | None = None, python: str = PYTHON) -> str:
    """The Procfile: `web` first when given (else fabserve's runserver is web), then worker and watch."""
    lines = ["# The tests' and the benchmark's companion processes (tests/bed/procfiles.py)"]
    if web is not None:
        lines.append(f"web: {web}")
    lines += [f"{name}: {python} {script}" for name, (script, _) in COMPANIONS.items()]
    return "\n".join(lines) + "\n"


def procfile_project(project: Path, owner: tuple[int, int], web: str | None = None, python: str = PYTHON) -> Path:
    """Write worker.py, watch.py and the Procfile into `project` (an existing Django
    project), each file owned by `owner` (uid, gid); return the project."""
    files = {script: source for script, source in COMPANIONS.values()}
    files["Procfile"] = procfile_text(web, python)
    for name, text in files.items():
        path = project / name
        path.write_text(text)
        os.chown(path, *owner)
    return project
