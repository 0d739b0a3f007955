"""Running commands as a test account: to completion, or spawned and killed later;
and the Django projects those accounts own."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import BedError, procs, wait_for
from .run import run_in_group
from .target import Target
from .users import runuser_argv, user_env

Argv = Sequence[str | os.PathLike[str]]


class UserRunner:
    """Runs a command to completion as an account, from its home directory.

    Keywords: cwd, env (added to the fixed user environment), timeout (120 s),
    input, check; anything else goes to subprocess.Popen.
    """

    def __init__(self, user: str, home: Path) -> None:
        self.user = user
        self.home = home

    def __call__(
        self,
        args: Argv,
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        options: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "text": True,
        }
        return run_in_group(
            runuser_argv(self.user, args),
            cwd=cwd or self.home,
            env=user_env(self.user, self.home, env),
            timeout=timeout,
            **(options | kwargs),
        )


class Spawner:
    """Starts long-running processes as an account and kills them afterwards."""

    def __init__(self, user: str, home: Path) -> None:
        self.user = user
        self.home = home
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(
        self,
        args: Argv,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            runuser_argv(self.user, args),
            cwd=cwd or self.home,
            env=user_env(self.user, self.home, env),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def sleeping_runserver(self, python: str, project: Path, port: int) -> subprocess.Popen[bytes]:
        """`manage.py runserver` of `project` on `port` as this account, kept alive (and
        never serving) by a settings module in the account's home that sleeps: another
        user's server, which fabserve must leave alone."""
        sleepy = self.home / "sleepy.py"
        sleepy.write_text("import time\ntime.sleep(600)\n")
        sleepy.chmod(0o644)
        return self([python, str(project / "manage.py"), "runserver", f"127.0.0.1:{port}"],
                    env={"PYTHONPATH": str(self.home), "DJANGO_SETTINGS_MODULE": "sleepy"})

    def cleanup(self) -> None:
        """Kill each spawned process group (runuser leads it; its child stays in it)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()


BREAKABLE_URLS = """\
from pathlib import Path

from django.http import HttpResponse
from django.urls import path

BROKEN = Path(__file__).resolve().parent.parent / "broken"


def home(request):
    if BROKEN.exists():
        raise RuntimeError("the view is broken on purpose")
    return HttpResponse("fine")


urlpatterns = [path("", home)]
"""


@functools.cache
def startproject(venv: Path) -> Path:
    """`django-admin startproject mysite` of venv's Django, once per session: each
    project is a copy of it, which costs no Python start-up (a quarter of a second
    per test). Removed when the session ends."""
    base = Path(tempfile.mkdtemp(prefix="fabserve-startproject-"))
    atexit.register(shutil.rmtree, base, True)
    (base / "site").mkdir()
    result = run_in_group([venv / "bin" / "django-admin", "startproject", "mysite", base / "site"], timeout=120,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise BedError(f"django-admin startproject failed:\n{result.stdout}{result.stderr}")
    return base / "site"


def made_dirs(home: Path, path: Path, owner: tuple[int, int]) -> None:
    """mkdir -p `path` below `home` as the account would: each new directory its own, mode 0755."""
    current = home
    for part in path.relative_to(home).parts:
        current = current / part
        if not current.is_dir():
            current.mkdir(mode=0o755)
            os.chmod(current, 0o755)
            os.chown(current, *owner)


class ProjectMaker:
    """Creates Django projects (startproject) owned by the target's user, each with a
    .venv linked to the target venv."""

    def __init__(self, target: Target, as_user: UserRunner) -> None:
        self._target = target
        self._as_user = as_user
        self.roots: list[Path] = []

    def __call__(self, name: str = "site") -> Path:
        # The name is only ever an argv element, never shell text, so spaces,
        # quotes, $, backticks and even "/" (nested directories) are fine; it
        # just must not lead out of the per-project directory.
        if not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
            raise ValueError(f"project name must be a relative path without '..': {name!r}")
        root = self._target.home / "projects" / uuid.uuid4().hex[:12]
        self.roots.append(root)
        project = root / name
        owner = (self._target.uid, pwd.getpwnam(self._target.user).pw_gid)
        made_dirs(self._target.home, project.parent, owner)
        shutil.copytree(startproject(self._target.venv), project, symlinks=True)
        for path in [project, *project.rglob("*")]:
            os.lchown(path, *owner)
        # fabserve's default interpreter is <project>/.venv/bin/python; a link
        # to the shared target venv is instant and Python follows it to pyvenv.cfg.
        os.symlink(self._target.venv, project / ".venv")
        os.lchown(project / ".venv", *owner)
        return project

    def breakable(self, name: str = "site") -> Path:
        """A project whose one view, at /, answers "fine" until a file `broken`
        exists in the project directory, then raises (HTTP 500)."""
        project = self(name)
        urls = project / "mysite" / "urls.py"
        urls.write_text(BREAKABLE_URLS)
        os.chown(urls, self._target.uid, -1)
        return project

    def cleanup(self) -> None:
        """Kill the user's processes working inside the projects, then delete them."""
        for root in self.roots:
            pids = procs.pids_with_cwd_under(root, self._target.uid)
            procs.kill_pids(pids)
            wait_for(lambda: not any(procs.alive(pid) for pid in pids), timeout=5)
            shutil.rmtree(root, ignore_errors=True)
        self.roots.clear()
