"""A real Caddy for the test bed (Debian's `caddy` package): one HTTP site on a
port of the test's, its admin API on localhost:2019 as on a real host, its
config and data in a directory of the test's, ended by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import BedError, wait_for

CADDY = Path("/usr/bin/caddy")
ADMIN = "localhost:2019"
SITE_TEXT = "the site's own page"


def caddyfile(http_port: int) -> str:
    """One plain-HTTP site answering SITE_TEXT. `http_port` is Caddy's HTTP port
    too: a host-matched route on any other port would turn its listener to TLS."""
    return (f"{{\n\tadmin {ADMIN}\n\thttp_port {http_port}\n}}\n"
            f"http://:{http_port} {{\n\trespond \"{SITE_TEXT}\" 200\n}}\n")


def admin_config(path: str = "/config/") -> object:
    """What Caddy's admin API answers for GET `path`, decoded."""
    with urllib.request.urlopen(f"http://{ADMIN}{path}", timeout=5) as answer:
        return json.loads(answer.read() or b"null")


def answers() -> bool:
    try:
        admin_config()
    except OSError:
        return False
    return True


@contextmanager
def running_caddy(directory: Path, http_port: int) -> Iterator[subprocess.Popen]:
    """Caddy serving caddyfile(http_port), its state under `directory`, until the block ends."""
    if not CADDY.exists():
        raise BedError(f"{CADDY} is missing: bin/setup --test installs Debian's caddy package")
    if answers():
        raise BedError(f"something already answers on {ADMIN}: another Caddy runs on this host")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "Caddyfile"
    config.write_text(caddyfile(http_port))
    env = dict(os.environ, HOME=str(directory), XDG_CONFIG_HOME=str(directory / "config"),
               XDG_DATA_HOME=str(directory / "data"))
    log = open(directory / "caddy.log", "ab")
    proc = subprocess.Popen([str(CADDY), "run", "--config", str(config), "--adapter", "caddyfile"], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_for(lambda: answers() or proc.poll() is not None, timeout=30) or proc.poll() is not None:
            raise BedError(f"caddy did not come up: see {directory / 'caddy.log'}")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
