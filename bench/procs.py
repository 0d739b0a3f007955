"""Companion processes (issue 22): start (until ready) and stop (until every process
is gone) of a three-process instance, the test bed's procfile project (a Procfile
with `worker` and `watch`, fabserve's runserver as `web`), against a one-process
instance of the same project without a Procfile, back to back in each repetition.
bench/ratios.py compares them pair by pair.

Both projects are copies of the host's ~/site, made once per run (untimed), and
served on a port of their own, one after the other.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bed import procs
from bed.procfiles import COMPANIONS, procfile_project

from bench.hosts import Host
from bench.layout import FAB, REPO
from bench.runner import Check, Runner
from bench.samples import Sample

GROUP = "procs"
PORT = 8300
#: The project of each instance, by its number of processes, under the host's home.
PROJECTS = {1: "procs-one", 3: "procs-three"}
NAMES = ["web", *COMPANIONS]
#: The beds (by ssh_config) whose host has had its projects made this run.
PREPARED: set[Path] = set()


def project(host: Host, processes: int) -> Path:
    return host.home / PROJECTS[processes]


def prepare(host: Host) -> None:
    """Both projects anew, as the host's user's own: copies of ~/site (its .venv link
    included), the three-process one with the bed's Procfile, worker.py and watch.py."""
    owner = (host.uid, host.gid)
    for processes in PROJECTS:
        path = project(host, processes)
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(host.project, path, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3"))
        for item in [path, *path.rglob("*")]:
            os.lchown(item, *owner)
    procfile_project(project(host, 3), owner)


def fab(runner: Runner, processes: int, verb: str) -> list[str]:
    return [str(FAB), "-r", str(REPO), "-S", str(runner.bed.ssh_config), "-H", runner.host.alias, verb,
            "--project", f"~/{PROJECTS[processes]}", "--port", str(PORT), "--json"]


def judged(judge: Callable[[dict[str, Any]], str | None]) -> Check:
    def check(sample: Sample) -> str | None:
        found = sample.result()
        return "no JSON result" if found is None else judge(found)
    return check


def started(host: Host, processes: int) -> Check:
    """Running, port answering, and every process of the table running (none listed
    for the one-process instance, which has no table)."""
    def judge(found: dict[str, Any]) -> str | None:
        if found.get("state") != "running":
            return f"state {found.get('state')!r}: {found.get('error') or found.get('message')}"
        if not host.listening(PORT):
            return f"port {PORT} not listening"
        rows = found.get("processes")
        if processes == 1:
            return None if not rows else f"processes listed without a Procfile: {rows}"
        states = [(row.get("name"), row.get("state")) for row in rows or []]
        return None if states == [(name, "running") for name in NAMES] else f"processes: {states}"
    return judged(judge)


def stopped(host: Host, processes: int) -> Check:
    """Port free, and no process of the host's user left working in the project
    (runserver's reloader child and watch's own child included)."""
    def judge(found: dict[str, Any]) -> str | None:
        if not found.get("ok"):
            return f"stop failed: {found.get('error')}"
        if host.listening(PORT):
            return f"port {PORT} still taken"
        left = procs.pids_with_cwd_under(project(host, processes), host.uid)
        return f"left running in the project: {left}" if left else None
    return judged(judge)


def procs_cases(runner: Runner) -> None:
    """Once per run: the two projects (untimed). Then, each from a stopped instance,
    start and stop of the one-process instance, then of the three-process one (a
    stop only after its start succeeded)."""
    host, one = runner.host, [runner.host]
    if runner.bed.ssh_config not in PREPARED:
        PREPARED.add(runner.bed.ssh_config)
        prepare(host)
    for processes in PROJECTS:
        what = "1 process" if processes == 1 else "3 processes (Procfile)"
        start = runner.measure(f"procs_start_{processes}", f"fabserve start, {what}", GROUP,
                               fab(runner, processes, "start"), one, check=started(host, processes))
        if start.rc != 0:
            continue  # the failed start was reset: a stop now would time stopping nothing
        runner.measure(f"procs_stop_{processes}", f"fabserve stop, {what}", GROUP, fab(runner, processes, "stop"),
                       one, check=stopped(host, processes))
