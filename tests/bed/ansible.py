"""Running Ansible (ansible-core, pinned in requirements-test.txt) against test hosts
with the fabserve.django collection straight from the checkout.

Every run gets a private ANSIBLE_HOME, local temp and control path dir; SSH
connections are not shared between commands (no ControlPersist master outlives a run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import BedUnavailable
from .run import run_in_group
from .target import REPO

COLLECTIONS = REPO / "ansible"
#: Where the minimal callback's result of one host begins.
HOST_RESULT = re.compile(r"^(\S+) \| ([A-Z]+)!?(?: \| rc=-?\d+)? => ", re.MULTILINE)
#: The targets' interpreter: named, so Ansible runs no discovery.
TARGET_PYTHON = "/usr/bin/python3"


def ansible_bin() -> Path:
    """The directory holding ansible-playbook: beside this interpreter (the test venv
    has it from requirements-test.txt), else the benchmark's venv (the same pin)."""
    for directory in (Path(sys.executable).parent, REPO / "bench" / ".venv" / "bin"):
        if (directory / "ansible-playbook").exists():
            return directory
    raise BedUnavailable("ansible-core is not installed: run bin/setup --test")


@dataclass(frozen=True)
class Outcome:
    """One `ansible` or `ansible-playbook` run: exit status, output, each host's
    result, and for ad-hoc runs each host's status (SUCCESS, CHANGED, FAILED, UNREACHABLE)."""

    returncode: int
    stdout: str
    stderr: str
    results: dict[str, Any]
    statuses: dict[str, str]

    def __str__(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}\n{self.stderr}"


class Ansible:
    """ansible and ansible-playbook over an inventory of `hosts` (name -> host vars),
    with working files in `work` (private to root: it may name private keys)."""

    def __init__(self, work: Path, hosts: Mapping[str, Mapping[str, Any]],
                 common_args: str = "", group_vars: Mapping[str, Any] | None = None) -> None:
        self.work = work
        self.bin = ansible_bin()
        work.mkdir(parents=True, exist_ok=True)
        self.inventory = work / "hosts.yml"
        all_vars = {"ansible_python_interpreter": TARGET_PYTHON, **(group_vars or {})}
        if common_args:
            all_vars["ansible_ssh_common_args"] = common_args
        self.inventory.write_text(yaml.safe_dump({"all": {"vars": all_vars, "hosts": dict(hosts)}}))
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8",
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(work / "home"),
            "ANSIBLE_LOCAL_TEMP": str(work / "tmp"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o UserKnownHostsFile=/dev/null", "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1",
        }

    def run(self, tool: str, args: Sequence[str], env: Mapping[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run_in_group([self.bin / tool, *args], cwd=self.work, env={**self.env, **(env or {})},
                            timeout=timeout, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def module(self, pattern: str, args: str, *extra: str, env: Mapping[str, str] | None = None) -> Outcome:
        """`ansible PATTERN -m fabserve.django.runserver -a ARGS`, each host's result
        parsed from the minimal callback's `HOST | STATUS => {json}`."""
        done = self.run("ansible", [pattern, "-i", str(self.inventory), "-m", "fabserve.django.runserver",
                                    "-a", args, *extra], env)
        results, statuses = {}, {}
        decoder = json.JSONDecoder()
        for found in HOST_RESULT.finditer(done.stdout):
            results[found.group(1)], _ = decoder.raw_decode(done.stdout, found.end())
            statuses[found.group(1)] = found.group(2)
        return Outcome(done.returncode, done.stdout, done.stderr, results, statuses)

    def playbook(self, play: Sequence[Mapping[str, Any]], *extra: str,
                 env: Mapping[str, str] | None = None) -> Outcome:
        """ansible-playbook of `play`; its results are what the play's `save` task wrote."""
        path, out = self.work / "play.yml", self.work / "out"
        path.write_text(yaml.safe_dump(list(play), sort_keys=False))
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        done = self.run("ansible-playbook", ["-i", str(self.inventory), "-e", f"out={out}", str(path), *extra], env)
        results = {host.name: json.loads(host.read_text()) for host in out.glob("*")}
        return Outcome(done.returncode, done.stdout, done.stderr, results, {})


def save(names: Sequence[str]) -> dict[str, Any]:
    """A last task for a play: each host's registered `names` as JSON, written on the
    controller to `{{ out }}/<host>` (Ansible.playbook reads them back)."""
    collected = "{" + ", ".join(f"'{name}': {name} | default(None)" for name in names) + "}"
    return {"name": "results", "delegate_to": "localhost", "changed_when": False,
            "ansible.builtin.copy": {"dest": "{{ out }}/{{ inventory_hostname }}", "mode": "0600",
                                     "content": "{{ " + collected + " | to_json }}"}}
