"""The Caddy route fabserve adds for an exposed instance, and the server it goes
in, from config as Caddy 2.6 (Debian's) answers it on its admin API."""

import re

import pytest

from tasks.agent import caddy
from tasks.agent.protocol import AgentError

# GET /config/apps/http/servers of a Caddy run from a Caddyfile with two sites.
SERVERS = {"srv0": {"listen": [":443"], "routes": []}, "srv1": {"listen": [":8088"], "routes": []}}


def test_a_route_matches_its_host_and_proxies_to_the_loopback_port():
    route = caddy.route_of("site-8123-0123456789", "pr-42.preview.example.com", 8123)
    assert route == {"@id": "fabserve-site-8123-0123456789", "match": [{"host": ["pr-42.preview.example.com"]}],
                     "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:8123"}]}],
                     "terminal": True}


def test_basic_auth_comes_before_the_proxy():
    route = caddy.route_of("i", "h.example.com", 8000, ("review", "$2a$14$hash"))
    assert [handler["handler"] for handler in route["handle"]] == ["authentication", "reverse_proxy"]
    accounts = route["handle"][0]["providers"]["http_basic"]["accounts"]
    assert accounts == [{"username": "review", "password": "$2a$14$hash"}]


@pytest.mark.parametrize("servers, chosen", [
    (SERVERS, "srv0"),
    ({"a": {"listen": [":8088"]}, "b": {"listen": ["127.0.0.1:80"]}}, "b"),
    ({"only": {"listen": [":8088"]}}, "only"),
])
def test_the_route_goes_in_the_server_of_the_https_then_http_port_else_the_only_one(servers, chosen):
    assert caddy.site_server(servers) == chosen


@pytest.mark.parametrize("servers, said", [
    ({}, "Caddy serves no HTTP site"),
    (None, "Caddy serves no HTTP site"),
    ({"a": {"listen": [":8088"]}, "b": {"listen": [":9099"]}}, "Caddy has 2 HTTP servers (a, b)"),
])
def test_no_server_or_an_unclear_choice_is_one_line(servers, said):
    with pytest.raises(AgentError, match=re.escape(said)):
        caddy.site_server(servers)
