"""Previews a reviewer can open (issue 23): `fab start --expose` (until ready and
published through the host's Caddy) against `fab start` of the same project,
and the stop of each (an exposed one also withdraws its route), back to back in
each repetition. bench/ratios.py compares them pair by pair.

The host's Caddy is Debian's, run for the repetition in the host's network
namespace (its admin API on the host's localhost:2019, as on a real host) and
ended by its PID afterwards; its state lives under the bench's state directory.
The project is the host's ~/site (fabserve's example, whose settings read
DJANGO_ALLOWED_HOSTS), served on a port of its own.
"""

from __future__ import annotations


from bed.caddy import HOST_SITE_PORT, SITE_TEXT, route_ids, running_caddy, through

from bench.hosts import Host
from bench.layout import FAB, PROJECT, REPO, STATE
from bench.runner import Check, Runner
from bench.samples import Sample

GROUP = "expose"
PORT = 8400
PUBLIC = f"bench-{PORT}.preview.test"
KINDS = {"plain": (), "exposed": ("--expose", "--host-template", "bench-{port}.preview.test")}


def fab(runner: Runner, verb: str, *flags: str) -> list[str]:
    return [str(FAB), "-r", str(REPO), "-S", str(runner.bed.ssh_config), "-H", runner.host.alias, verb,
            "--project", PROJECT, "--port", str(PORT), *flags, "--json"]


def started(host: Host, kind: str) -> Check:
    """Running and its port answering; exposed, its public URL given and the name
    answered by the server through Caddy (untimed, after the call)."""
    def check(sample: Sample) -> str | None:
        found = sample.result()
        if found is None or found.get("state") != "running":
            return f"not running: {found}"
        if not host.listening(PORT):
            return f"port {PORT} not listening"
        if kind == "plain":
            return None if not found.get("public_url") else f"a public URL without --expose: {found['public_url']}"
        if found.get("public_url") != f"http://{PUBLIC}:{HOST_SITE_PORT}/":
            return f"public_url {found.get('public_url')!r}"
        status, body = through(HOST_SITE_PORT, PUBLIC, address=host.addr)
        return None if status == 200 else f"through Caddy: {status} {body[:80]!r}"
    return check


def stopped(host: Host) -> Check:
    """Port free, and Caddy holding its own site's route alone."""
    def check(sample: Sample) -> str | None:
        found = sample.result()
        if found is None or not found.get("ok"):
            return f"stop failed: {found}"
        if host.listening(PORT):
            return f"port {PORT} still taken"
        left = route_ids(host.netns_path)
        if left != [None]:
            return f"routes left in Caddy: {left}"
        answer = through(HOST_SITE_PORT, PUBLIC, address=host.addr)
        return None if answer == (404, SITE_TEXT) else f"the name still answers: {answer[0]}"
    return check


def expose_cases(runner: Runner) -> None:
    """The host's Caddy up (untimed; without Debian's caddy, which bin/setup --test
    installs, the run fails saying so); then, each from a stopped server, start and
    stop without --expose, then with it (a stop only after its start succeeded)."""
    host, one = runner.host, [runner.host]
    with running_caddy(STATE / f"caddy-{host.alias}", HOST_SITE_PORT, host.netns_path):
        for kind, flags in KINDS.items():
            start = runner.measure(f"expose_start_{kind}", f"fabserve start ({kind})", GROUP,
                                   fab(runner, "start", *flags), one, check=started(host, kind))
            if start.rc != 0:
                continue  # the failed start was reset: a stop now would time stopping nothing
            runner.measure(f"expose_stop_{kind}", f"fabserve stop ({kind})", GROUP, fab(runner, "stop"), one,
                           check=stopped(host))
