"""Smoke test of the benchmark (bench/run): one quick pass on two hosts.

It checks that the benchmark runs end to end and writes its JSON, not the
numbers: targets are reported, never asserted. Needs root and network
namespaces, like the multi-host tests. It uses the Ansible of .venv (or, without
one, installs it into bench/.venv first) and takes about 2 minutes, more on a busy machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run"

pytestmark = pytest.mark.bench


def _require_environment() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("root")
    if not Path("/usr/sbin/sshd").exists():
        problems.append("sshd (run bin/setup --test)")
    elif subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        problems.append("network namespaces (unshare --net)")
    if not problems:
        return
    reason = "the benchmark needs " + ", ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def test_quick_run_writes_the_result(tmp_path: Path) -> None:
    _require_environment()
    out = tmp_path / "result.json"
    run = subprocess.run([str(RUN), "--no-setup", "--reps", "1", "--warmup", "0", "--hosts", "2",
                          "--out", str(out)], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"meta", "cases", "ratios", "targets", "memory", "profile"}
    for name in ("ssh_true", "fab_trivial", "django_ready", "fabserve_status", "fabserve_start",
                 "fabserve_stop", "fabserve_restart", "fabric_start", "ansible_shell_status",
                 "ansible_raw_stop", "fanout_status_2", "fanout_stop_2", "fanout_trivial_2",
                 "installed_status", "import_installed", "import_checkout",
                 "vs_module_fab_start_1", "vs_module_module_status_1", "vs_module_module_pipelined_stop_1",
                 "fabserve_status_of_20", "fabserve_list_20", "fabserve_start_port", "fabserve_start_auto",
                 "ciflow_fabserve", "ciflow_fabserve_steps", "ciflow_fabric", "ciflow_ansible",
                 "lifetimes_status", "lifetimes_status_ttl", "lifetimes_status_cut", "lifetimes_start",
                 "lifetimes_start_ttl", "procs_start_1", "procs_stop_1", "procs_start_3", "procs_stop_3",
                 "expose_start_plain", "expose_stop_plain", "expose_start_exposed", "expose_stop_exposed"):
        case = result["cases"][name]
        assert len(case["times"]) == 1 and case["median"] > 0, (name, case)
    # Counted from the sshd logs; the value itself is a target, reported but not asserted.
    assert all(count >= 1 for count in result["cases"]["fanout_stop_2"]["ssh_commands_per_host"])
    verdicts = {target["verdict"] for target in result["targets"]}
    assert verdicts <= {"PASS", "MISS", "n/a", "n/a (fewer than 10 hosts)"}
    assert "fabserve status" in run.stdout and "targets" in run.stdout
    # Every group runs from bench/run, their own ratios printed with the report.
    assert result["meta"]["groups"] == ["baseline", "fabserve", "package", "logs", "many", "ciflow", "diy",
                                        "ansible", "fanout", "module", "lifetimes", "sync", "up", "procs",
                                        "expose", "profile"]
    for heading in ("agent payload per call (status): ", "module / fab ", "lifetimes: the agent's own time"):
        assert any(line.startswith(heading) for line in result["notes"]), heading
        assert heading in run.stdout
