"""The `fabserve` command: Fabric's `fab` with fabserve's tasks and executor built in.

It reads configuration as `fab` does (/etc/fabric.yaml, ~/.fabric.yaml, -f FILE,
FABRIC_* variables), and, in place of the fabric.yaml beside a fabfile, the
project file fabserve.yaml (.yml, .json, .py) in the current directory.
invoke loads no project file for a program with a bundled namespace, so this
one loads it itself, at the same place in the order.
"""

import os

from fabric import Config
from fabric import __version__ as fabric_version
from fabric.main import Fab
from invoke import __version__ as invoke_version
from invoke.exceptions import Exit
from paramiko import __version__ as paramiko_version

from . import __version__, collection
from .executor import ConcurrentExecutor

#: The project file's name without its suffix: ./fabserve.yaml and the like.
PROJECT_FILE = "fabserve"


class ProgramConfig(Config):
    """Fabric's configuration, whose project-level file is PROJECT_FILE, not fabric.*."""

    def load_project(self, merge: bool = True) -> None:
        # invoke names every level's file after file_prefix; only the project's differs here.
        shared = self.file_prefix
        self._set(file_prefix=PROJECT_FILE)
        try:
            super().load_project(merge=merge)
        finally:
            self._set(file_prefix=shared)


class Program(Fab):
    """`fab` with a bundled namespace, the project file of the current directory, and every version."""

    def print_version(self) -> None:
        print(f"{self.name} {self.version}")
        print(f"Fabric {fabric_version}")
        print(f"Paramiko {paramiko_version}")
        print(f"Invoke {invoke_version}")

    def parse_collection(self) -> None:
        super().parse_collection()
        try:
            self.config.set_project_location(os.getcwd())
            self.config.load_project()
        except Exception as exc:  # YAML, JSON and Python files fail in their own ways
            detail = " ".join(str(exc).split())
            raise Exit(f"cannot read {PROJECT_FILE}.* of the current directory: {detail}", 2) from None


program = Program(name="fabserve", version=__version__, namespace=collection,
                  executor_class=ConcurrentExecutor, config_class=ProgramConfig)
