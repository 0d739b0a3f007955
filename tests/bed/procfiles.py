"""Django projects with companion processes beside runserver (issue 22): a worker
standing in for Celery, a watcher that forks a child of its own as npm does, and
the Procfile naming them. The tests (tests/test_processes.py) and the bench's
procs group make their projects with `procfile_project`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: A Celery worker's stand-in: its PORT first, then a line every 0.2 s. print() has no
#: flush: the lines reach the log as they are written only because fabserve gives every
#: process PYTHONUNBUFFERED=1.
WORKER = '''\
import os
import time

print("worker PORT", os.environ.get("PORT"))
tick = 0
while True:
    print("worker tick", tick)
    tick += 1
    time.sleep(0.2)
'''

#: A watcher's stand-in (npm, tailwind): a child of its own in its process group, then a
#: loop; its first line names both PIDs, so a test knows the child without searching.
WATCH = '''\
import os
import subprocess
import sys
import time

child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.2)"])
print("watch", os.getpid(), "child", child.pid, "PORT", os.environ.get("PORT"))
while True:
    time.sleep(0.2)
'''

#: The project's interpreter, as its Procfile names it: relative to the project, where
#: every process starts (the bed's projects and the bench's have a .venv).
PYTHON = ".venv/bin/python"
#: The Procfile's lines without `web` (fabserve's runserver is then web): the worker, then the watcher.
COMPANIONS: Mapping[str, str] = {"worker": f"{PYTHON} worker.py", "watch": f"{PYTHON} watch.py"}
#: A `web` line of the project's own: runserver on the PORT fabserve gives web, the instance's.
WEB = f"{PYTHON} manage.py runserver 127.0.0.1:$PORT"


def procfile_text(processes: Mapping[str, str]) -> str:
    """A Procfile of `processes` (name -> command, in order), with a comment and a blank
    line as people write them."""
    lines = [f"{name}: {command}" for name, command in processes.items()]
    return "# processes beside runserver (fabserve's test bed)\n\n" + "\n".join(lines) + "\n"


def procfile_project(project: Path, owner: tuple[int, int], processes: Mapping[str, str] = COMPANIONS) -> Path:
    """Write worker.py, watch.py and a Procfile of `processes` into the Django project
    `project`, owned by `owner` (uid, gid); the project."""
    files = {"worker.py": WORKER, "watch.py": WATCH, "Procfile": procfile_text(processes)}
    for name, text in files.items():
        path = project / name
        path.write_text(text)
        os.chown(path, *owner)
    return project
