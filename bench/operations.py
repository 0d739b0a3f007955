"""fabserve's operations on one host: start (to ready), status (running), the same
status as the agent alone over OpenSSH, restart and stop (to port free). The
installed package's cases run between the two halves, while the server runs."""

from __future__ import annotations

from functools import lru_cache

from bench.layout import PORT, PROJECT
from bench.runner import Runner
from bench.samples import Sample
from bench.shell import log


@lru_cache(maxsize=1)
def agent_call() -> tuple[str, str] | None:
    """The exact shell command fabserve sends for `status` and the request line it
    writes to its stdin, to run it through OpenSSH (separates the agent's time on
    the host from the client's). None if fabserve's internals changed shape."""
    try:
        from tasks import remote, settings
        from tasks.config import merged
        values = merged({}, {"project": PROJECT, "port": PORT})
        request = settings.request("status", values, None)
        return remote.command(values["agent_python"]), remote.request_line(request)
    except Exception as exc:  # internals, not an API: losing one case beats losing the run
        log(f"bench: cannot build the agent command ({exc!r}); skipping that case")
        return None


def answered(sample: Sample) -> str | None:
    return None if '"state": "running"' in sample.output else "the agent did not report the server running"


def start_and_status(runner: Runner) -> None:
    host = runner.host
    one = [host]
    runner.measure("fabserve_start", "fabserve start (to ready)", "fabserve", runner.fab(one, "start"), one,
                   check=runner.up(one))
    runner.measure("fabserve_status", "fabserve status (running)", "fabserve", runner.fab(one, "status"), one)
    call = agent_call()
    if call:
        runner.measure("ssh_agent_status", "ssh host <fabserve agent status>", "fabserve",
                       runner.ssh_with_input(host, *call), one, check=answered)


def restart_and_stop(runner: Runner) -> None:
    one = [runner.host]
    runner.measure("fabserve_restart", "fabserve restart", "fabserve", runner.fab(one, "restart"), one,
                   check=runner.up(one))
    runner.measure("fabserve_stop", "fabserve stop (to port free)", "fabserve", runner.fab(one, "stop"), one,
                   check=runner.down(one))


def payload(_runner: Runner) -> list[str]:
    """What one call sends the host: the command line (loader, agent, bootstrap) and the
    request on its stdin; the same on a first call and on a host that caches the compiled agent."""
    call = agent_call()
    if call is None:
        return []
    command, request = (len(text.encode()) for text in call)
    return ["", f"agent payload per call (status): {command + request} bytes",
            f"  command line {command} (bootstrap, loader, compressed agent), request on stdin {request}; "
            "the same on a host with the agent cached"]
