"""The `fabserve` command: Fabric's `fab` with fabserve's tasks and executor built in.

It reads configuration as `fab` does (/etc/fabric.yaml, ~/.fabric.yaml, -f FILE,
FABRIC_* variables), and, in place of the fabric.yaml beside a fabfile, the
project file fabserve.yaml (.yml, .json, .py) in the current directory.
invoke loads no project file for a program with a bundled namespace, so this
one loads it itself, at the same place in the order.
"""

import contextlib
import inspect
import os
import re
import stat
import sys
from typing import Any, Iterator, List, Optional

from fabric import Config
from fabric import __version__ as fabric_version
from fabric.main import Fab
from invoke import __version__ as invoke_version
from invoke import Program as InvokeProgram
from invoke.exceptions import Exit, ParseError
from paramiko import __version__ as paramiko_version

from . import __version__, collection, report, settings
from .executor import ConcurrentExecutor

#: The project file's name without its suffix: ./fabserve.yaml and the like.
PROJECT_FILE = "fabserve"


class ProgramConfig(Config):
    """Fabric's configuration, whose project-level file is PROJECT_FILE, not fabric.*."""

    def load_project(self, merge: bool = True) -> None:
        # invoke names every level's file after file_prefix; only the project's differs here.
        # The current directory's file is data: a fabserve.py there is not run (-f FILE runs one).
        shared, suffixes = self.file_prefix, self._file_suffixes
        self._set(file_prefix=PROJECT_FILE, _file_suffixes=DATA_SUFFIXES)
        try:
            super().load_project(merge=merge)
        finally:
            self._set(file_prefix=shared, _file_suffixes=suffixes)


#: The project file's kinds: data, never code.
DATA_SUFFIXES = ("yaml", "yml", "json")


def untrusted(path: str) -> str:
    """Why another user could have written `path` (its owner, or that others may
    write it), "" when only this user or root could have."""
    info = os.stat(path)
    if info.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {info.st_uid}"
    return "writable by others" if info.st_mode & stat.S_IWOTH else ""


def project_directory() -> Optional[str]:
    """The current directory, when its fabserve.* may be read: not when it is
    gone (a remote verb needs no project file), nor when another user could have
    planted the file (/tmp): then a line on stderr says it is ignored."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        return None
    # invoke reads the first of these that exists.
    files = [os.path.join(cwd, f"{PROJECT_FILE}.{suffix}") for suffix in DATA_SUFFIXES]
    found = next((path for path in files if os.path.isfile(path)), None)
    if found is None:
        return cwd
    where, itself = untrusted(cwd), untrusted(found)
    if where or itself:
        print(f"ignoring {found}: {f'its directory is {where}' if where else f'it is {itself}'}", file=sys.stderr)
        return None
    return cwd


class Cli:
    """Mixed into an invoke Program (fabserve's, and the `fab` that loads the
    checkout's fabfile.py, see `adopt`): invoke's own usage errors exit 2 with a
    hint, as fabserve's do, instead of 1 ("failed"); a task's --help names the
    program that runs it and a placeholder for every flag that takes a value;
    a reader that stops early ends help and listings quietly."""

    _binary: Optional[str]
    called_as: str
    leading_indent: str
    parser: Any
    collection: Any

    @property
    def binary(self) -> str:
        """The name users typed: invoke takes argv[0]'s basename, which for
        `python -m fabric` is `__main__.py`, a name nobody can type."""
        if self._binary or self.called_as != "__main__.py":
            return self._binary or self.called_as
        main = getattr(sys.modules["__main__"], "__spec__", None)
        return f"python -m {main.parent}" if main is not None and main.parent else self.called_as

    def run(self, argv: Optional[List[str]] = None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)  # type: ignore[misc]
        finally:
            # `--version` ends inside parse_core, before any hook of ours: its
            # buffered lines meet a reader that is gone only here.
            try:
                sys.stdout.flush()
            except BrokenPipeError:  # `fabserve --version | head -0`
                report.drop_output(sys.stdout)

    def parse_core(self, argv: Optional[List[str]]) -> None:
        with usage_errors(self.binary):
            super().parse_core(argv)  # type: ignore[misc]

    def parse_tasks(self) -> None:
        with usage_errors(self.binary):
            super().parse_tasks()  # type: ignore[misc]

    def parse_cleanup(self) -> None:
        try:
            with usage_errors(self.binary):
                try:
                    super().parse_cleanup()  # type: ignore[misc]
                finally:
                    # Help and listings end by raising Exit; a buffered stdout
                    # meets a reader that is gone only at this flush.
                    sys.stdout.flush()
        except BrokenPipeError:  # `fabserve --help manage | head -1`
            report.drop_output(sys.stdout)
            raise Exit(code=0) from None

    def print_task_help(self, name: str) -> None:
        """invoke's per-task help, with this program's name where the task's text
        says `fab`, and placeholders for repeatable flags (invoke shows none)."""
        ctx = self.parser.contexts[name]
        rows = [(self.placeholders(ctx, spec), self.named(text)) for spec, text in ctx.help_tuples()]
        print(f"Usage: {self.binary} [--core-opts] {name} {'[--options] ' if rows else ''}[other tasks here ...]")
        print("\nDocstring:")
        docstring = inspect.getdoc(self.collection[name])
        for line in self.named(docstring or "none").splitlines():
            print(self.leading_indent + line if line.strip() else "")
        print("\nOptions:")
        if rows:
            self.print_columns(rows)  # type: ignore[attr-defined]
        else:
            print(self.leading_indent + "none\n")

    def named(self, text: str) -> str:
        """`text` with the program that runs the tasks in place of the word `fab`."""
        return re.sub(r"\bfab\b", self.binary, text)

    @staticmethod
    def placeholders(ctx: Any, spec: str) -> str:
        """`-e, --env` as `-e KEY=VALUE, --env=KEY=VALUE`: a repeatable flag's
        placeholder comes from its setting."""
        shown = []
        for name in spec.split(", "):
            repeatable = name in ctx.flags and ctx.flags[name].kind is list
            placeholder = settings.placeholder(ctx.flags[name].name) if repeatable else ""
            shown.append(name if not placeholder else
                         f"{name} {placeholder}" if not name.startswith("--") else f"{name}={placeholder}")
        return ", ".join(shown)


@contextlib.contextmanager
def usage_errors(binary: str) -> Iterator[None]:
    """invoke's ParseError as one line with a hint, exit 2."""
    try:
        yield
    except ParseError as exc:
        task = exc.context.name if exc.context is not None and exc.context.name else None
        hint = f"{binary} --help {task} shows its flags" if task else f"{binary} --list shows the tasks"
        raise Exit(f"{exc} ({hint})", 2) from None


def adopt() -> None:
    """Make the invoke Program that is loading the caller (`fab` importing the
    checkout's fabfile.py) a `Cli` too; nothing when none is (an import of
    fabfile.py from Python). invoke offers no hook between loading the tasks
    and parsing their flags, and its `fab` is Fabric's own program object."""
    frame = sys._getframe(1)
    while frame is not None:
        loader = frame.f_locals.get("self")
        if frame.f_code.co_name == "load_collection" and isinstance(loader, InvokeProgram):
            if not isinstance(loader, Cli):
                kind = type(loader)
                loader.__class__ = type(kind.__name__, (Cli, kind), {})
            return
        frame = frame.f_back


class Program(Cli, Fab):
    """`fab` with a bundled namespace, the project file of the current directory, and every version."""

    def print_version(self) -> None:
        print(f"{self.name} {self.version}")
        print(f"Fabric {fabric_version}")
        print(f"Paramiko {paramiko_version}")
        print(f"Invoke {invoke_version}")

    def parse_collection(self) -> None:
        super().parse_collection()
        cwd = project_directory()
        if cwd is None:
            return
        try:
            self.config.set_project_location(cwd)
            self.config.load_project()
        except Exception as exc:  # YAML, JSON and Python files fail in their own ways
            detail = " ".join(str(exc).split())
            raise Exit(f"cannot read {PROJECT_FILE}.* of the current directory: {detail}", 2) from None


program = Program(name="fabserve", version=__version__, namespace=collection,
                  executor_class=ConcurrentExecutor, config_class=ProgramConfig)
