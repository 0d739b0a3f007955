"""A real Caddy for the test bed (Debian's `caddy` package): one HTTP site on a
port of the test's, its admin API on localhost:2019 as on a real host, its
config and data in a directory of the test's, ended by its PID. On this machine,
or inside a network namespace (a namespaced test host's, the bench host's), where
localhost:2019 is that host's own."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import BedError, wait_for
from .net import NetnsHTTPConnection

CADDY = Path("/usr/bin/caddy")
NSENTER = Path("/usr/bin/nsenter")
ADMIN_HOST, ADMIN_PORT = "localhost", 2019
ADMIN = f"{ADMIN_HOST}:{ADMIN_PORT}"
ROUTES = "/config/apps/http/servers/srv0/routes"
SITE_TEXT = "the site's own page"
#: The site's port of a Caddy in a host's own network namespace: outside fabserve's port_range.
HOST_SITE_PORT = 9080


def caddyfile(http_port: int) -> str:
    """One plain-HTTP site answering SITE_TEXT with 404 for every host no route
    claims. `http_port` is Caddy's HTTP port too: a host-matched route on any
    other port would turn its listener to TLS."""
    return (f"{{\n\tadmin {ADMIN}\n\thttp_port {http_port}\n}}\n"
            f"http://:{http_port} {{\n\trespond \"{SITE_TEXT}\" 404\n}}\n")


def admin(method: str, path: str, body: object = None, netns: Path | None = None) -> object:
    """Caddy's admin API answer to `method path` (JSON `body` if given), decoded;
    inside the network namespace bound at `netns` if given. A status other than 200
    raises BedError."""
    if netns is None:
        connection = http.client.HTTPConnection(ADMIN_HOST, ADMIN_PORT, timeout=5)
    else:
        connection = NetnsHTTPConnection(netns, ADMIN_HOST, ADMIN_PORT, timeout=5)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        text = answer.read()
    except http.client.HTTPException as error:
        raise OSError(f"{ADMIN}: {error}") from error
    finally:
        connection.close()
    if answer.status != 200:
        raise BedError(f"{method} {path} on {ADMIN}: {answer.status} {text.decode(errors='replace')}")
    return json.loads(text or b"null")


def admin_config(path: str = "/config/", netns: Path | None = None) -> object:
    """What Caddy's admin API answers for GET `path`, decoded."""
    return admin("GET", path, netns=netns)


def route_ids(netns: Path | None = None) -> list[str | None]:
    """The @id of each route of the site, in order (None for the site's own)."""
    return [route.get("@id") for route in admin_config(ROUTES, netns)]


#: What a project's settings.py needs to serve an exposed name: docs/expose.md's lines.
ALLOWED_FROM_ENV = """
import os
ALLOWED_HOSTS = [host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host]
CSRF_TRUSTED_ORIGINS = [origin for origin in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if origin]
"""


def allow_exposed_names(project: Path) -> None:
    """`project`'s settings read their allowed hosts and CSRF origins from the environment."""
    with open(project / "mysite" / "settings.py", "a") as settings:
        settings.write(ALLOWED_FROM_ENV)


#: The route of an operator's own that every test adds first: no verb may touch it.
BY_HAND, HAND_HOST, HAND_TEXT = "by-hand", "hand.example.test", "by hand"


def add_route_by_hand(netns: Path | None = None) -> None:
    """BY_HAND, answering HAND_TEXT for HAND_HOST, put first as fabserve puts its own."""
    admin("PUT", f"{ROUTES}/0", {"@id": BY_HAND, "match": [{"host": [HAND_HOST]}], "terminal": True,
                                 "handle": [{"handler": "static_response", "body": HAND_TEXT}]}, netns)


def through(port: int, host: str, address: str = "127.0.0.1", headers: dict[str, str] | None = None,
            path: str = "/") -> tuple[int, str]:
    """(status, body) of GET `path` on address:port with Host `host`: what a
    browser asking for that name gets from Caddy."""
    connection = http.client.HTTPConnection(address, port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host, **(headers or {})})
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def answers(netns: Path | None = None) -> bool:
    try:
        admin_config(netns=netns)
    except OSError:
        return False
    return True


@contextmanager
def running_caddy(directory: Path, http_port: int, netns: Path | None = None) -> Iterator[subprocess.Popen]:
    """Caddy serving caddyfile(http_port), its state under `directory`, until the
    block ends; in the network namespace bound at `netns` if given (only that: its
    other namespaces are this machine's, and its PID is ours to end)."""
    if not CADDY.exists():
        raise BedError(f"{CADDY} is missing: bin/setup --test installs Debian's caddy package")
    if answers(netns):
        raise BedError(f"something already answers on {ADMIN}: another Caddy runs on this host")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "Caddyfile"
    config.write_text(caddyfile(http_port))
    env = dict(os.environ, HOME=str(directory), XDG_CONFIG_HOME=str(directory / "config"),
               XDG_DATA_HOME=str(directory / "data"))
    log = open(directory / "caddy.log", "ab")
    enter = [] if netns is None else [str(NSENTER), f"--net={netns}", "--"]
    proc = subprocess.Popen([*enter, str(CADDY), "run", "--config", str(config), "--adapter", "caddyfile"], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_for(lambda: answers(netns) or proc.poll() is not None, timeout=30) or proc.poll() is not None:
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
