"""The floors the other cases are measured against: `ssh host true` (OpenSSH),
`fab -H host noop` (Fabric's own floor, one `true`), and Django's own ready time
(runserver launched on the host until its port answers, no SSH, no fabserve)."""

from __future__ import annotations

import json

from bench.layout import DJANGO_READY, PORT, PROJECT, PYTHON
from bench.runner import Runner, execute
from bench.samples import Sample


def baseline(runner: Runner) -> None:
    host = runner.host
    one = [host]
    runner.measure("ssh_true", "ssh host true (OpenSSH)", "baseline", runner.ssh(host, "true"), one)
    runner.measure("fab_trivial", "fab -H host noop (Fabric floor)", "baseline", runner.trivial(one), one)
    django_ready(runner)


def django_ready(runner: Runner) -> None:
    host = runner.host
    case = runner.case("django_ready", "Django runserver ready (no SSH)", "Django", client=False)
    result = execute(["ip", "netns", "exec", host.netns, str(PYTHON), str(DJANGO_READY), host.user,
                      PROJECT, str(PORT)])
    try:
        sample = Sample(json.loads(result.output.strip().splitlines()[-1])["seconds"], 0, 0)
    except (ValueError, KeyError, IndexError):
        runner.fail(case, "Django ready", result.output.strip()[-500:])
        sample = Sample(result.seconds, result.rc or 1, 0)
    runner.add(case, sample)
