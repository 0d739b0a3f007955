"""The agent's Caddy calls against a real Caddy (Debian's package, its admin API
on localhost:2019): a route put first reaches its upstream by Host header and
nothing else does, removing it gives the site back, a route added by hand
survives, and a Caddy that is not there is one line."""

from __future__ import annotations

import base64
import os
import http.server
import subprocess
import threading

import pytest

from bed.caddy import (ADMIN, BY_HAND, HAND_HOST, HAND_TEXT, SITE_TEXT, add_route_by_hand, allow_exposed_names,
                       route_ids, through)
from helpers import alive, free_port, wait_for
from tasks.agent import caddy
from tasks.agent.protocol import AgentError


@pytest.fixture
def upstream():
    """A loopback HTTP server answering its own port: what Caddy proxies to."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"upstream {self.server.server_port} for {self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()



def test_a_route_reaches_its_upstream_by_host_and_goes_again(caddy_site, upstream):
    site = caddy_site
    add_route_by_hand()
    caddy.add_route(ADMIN, caddy.route_of("site-1", "pr-1.example.test", upstream))
    caddy.add_route(ADMIN, caddy.route_of("site-1", "pr-1.example.test", upstream))  # again: replaced, not doubled
    assert route_ids() == ["fabserve-site-1", BY_HAND, None]
    assert through(site, "pr-1.example.test") == (200, f"upstream {upstream} for pr-1.example.test")
    assert through(site, "other.example.test") == (404, SITE_TEXT)
    assert caddy.remove_route(ADMIN, "fabserve-site-1") is True
    assert caddy.remove_route(ADMIN, "fabserve-site-1") is False  # gone already: no error
    assert through(site, "pr-1.example.test") == (404, SITE_TEXT)
    assert through(site, HAND_HOST) == (200, HAND_TEXT)


def test_a_caddy_that_is_not_there_is_one_line(root):
    with pytest.raises(caddy.Unanswered, match="Caddy's admin API at localhost:1 does not answer"):
        caddy.add_route("localhost:1", caddy.route_of("site-1", "pr-1.example.test", 8000))
    with pytest.raises(AgentError, match="is Caddy running on this host"):
        caddy.remove_route("localhost:1", "fabserve-site-1")


def test_start_expose_publishes_the_server_and_stop_withdraws_it(fab, site, caddy_site):
    """Through fab over the real sshd as the test user: Django answers the public
    host name through Caddy (ALLOWED_HOSTS from the environment), status shows
    the public URL, and stop leaves Caddy's own site answering that name."""
    http_port, port = caddy_site, free_port()
    add_route_by_hand()
    where = ["--project", str(site), "--port", str(port)]
    allow_exposed_names(site)  # as docs/expose.md tells a project to
    started = fab("start", *where, "--expose", "--host-template", "pr-{port}.example.test", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    host = f"pr-{port}.example.test"
    assert started.json["public_url"] == f"http://{host}:{http_port}/", started.json
    status, body = through(http_port, host)
    assert status == 200 and "django" in body.lower(), (status, body[:200])
    assert fab("status", *where, "--json").json["public_url"] == started.json["public_url"]
    route = f"fabserve-{os.path.basename(started.json['state_dir'])}"
    held = caddy.route_now(ADMIN, route)
    same = fab("start", *where, "--expose", "--host-template", "pr-{port}.example.test", "--json")
    assert same.returncode == 0 and same.json["changed"] is False, same.json  # its route is there as asked
    assert same.json["public_url"] == started.json["public_url"] and caddy.route_now(ADMIN, route) == held
    assert route_ids() == [route, BY_HAND, None]
    assert caddy.remove_route(ADMIN, route)  # as a reload of Caddy's config drops it
    again = fab("start", *where, "--expose", "--host-template", "pr-{port}.example.test", "--json")
    assert again.returncode == 0 and again.json["pids"] == started.json["pids"], again.json
    assert again.json["changed"] is True and caddy.route_now(ADMIN, route) == held
    assert through(http_port, host)[0] == 200  # the route is back, the server the same
    restarted = fab("restart", *where, "--json")  # reruns --expose: the new server is published too
    assert restarted.returncode == 0 and restarted.json["public_url"] == started.json["public_url"]
    assert through(http_port, host)[0] == 200
    stopped = fab("stop", *where, "--json")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert through(http_port, host) == (404, SITE_TEXT)
    assert route_ids() == [BY_HAND, None] and through(http_port, HAND_HOST) == (200, HAND_TEXT)


@pytest.mark.xdist_group("caddy")  # nothing may answer on localhost:2019 meanwhile: no other Caddy test runs
def test_expose_without_caddy_starts_nothing(fab, site, root):
    port = free_port()
    result = fab("start", "--project", str(site), "--port", str(port), "--expose", "--host-template",
                 "x.example.test", "--json")
    assert result.returncode == 1 and "does not answer" in result.json["error"], result.json
    assert result.json["pids"] == [] and fab("status", "--project", str(site), "--port", str(port)).returncode == 3


def test_two_exposed_instances_each_reach_their_own_server_one_behind_basic_auth_and_expiry_withdraws(
        fab, make_project, caddy_site):
    http_port = caddy_site
    add_route_by_hand()
    first, second = make_project(), make_project()
    for project in (first, second):
        allow_exposed_names(project)
    hashed = subprocess.run(["caddy", "hash-password", "--plaintext", "s3cret"], capture_output=True, text=True,
                            check=True).stdout.strip()
    ports = free_port(), free_port()
    one = fab("start", "--project", str(first), "--port", str(ports[0]), "--expose", "--host-template",
              "one.example.test", "--ttl", "20s", "--json")
    two = fab("start", "--project", str(second), "--port", str(ports[1]), "--expose", "--host-template",
              "two.example.test", "--basic-auth", f"review:{hashed}", "--json")
    assert one.returncode == 0 and two.returncode == 0, one.stdout + one.stderr + two.stdout + two.stderr
    assert through(http_port, "one.example.test")[0] == 200
    assert through(http_port, "two.example.test")[0] == 401
    token = base64.b64encode(b"review:s3cret").decode()
    assert through(http_port, "two.example.test", headers={"Authorization": f"Basic {token}"})[0] == 200
    # Each name reached its own server, and the refused request reached none.
    for project, port in zip((first, second), ports):
        lines = fab("logs", "--project", str(project), "--port", str(port), "--json").json["lines"]
        assert sum('"GET / HTTP/1.1" 200' in line for line in lines) == 1, lines
    rows = fab("list", "--json").json
    listed = {row["project"]: row for row in (rows if isinstance(rows, list) else [rows])}
    assert listed[str(first)]["public_url"] == f"http://one.example.test:{http_port}/"
    # The TTL's watchdog, alone on the host once fab returned, withdraws the route when it ends the server.
    assert wait_for(lambda: through(http_port, "one.example.test") == (404, SITE_TEXT), timeout=60)
    assert not any(alive(pid) for pid in one.json["pids"])
    destroyed = fab("destroy", "--project", str(second), "--json")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert through(http_port, "two.example.test") == (404, SITE_TEXT)
    assert route_ids() == [BY_HAND, None]
