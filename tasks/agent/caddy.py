"""Publishing an instance through Caddy on its host: one route per instance
in Caddy's running config, inserted first in the server that serves the
site (so a site's own catch-all never shadows it) and removed again, by its
`@id`, through Caddy's admin API. The route matches the instance's public
host name and proxies to the server's port on the loopback.
"""

import json

from .protocol import AgentError

ADMIN = "localhost:2019"  # Caddy's own default admin address
ROUTE_PREFIX = "fabserve-"
TIMEOUT = 5.0  # seconds an admin call may take: Caddy answers in milliseconds, or is not there


def route_id(instance):
    """The `@id` of an instance's route: `fabserve-` and its state directory's name."""
    return f"{ROUTE_PREFIX}{instance}"


def route_of(instance, host, port, basic_auth=None):
    """The route that sends requests for `host` to 127.0.0.1:`port`, behind
    HTTP basic auth when `basic_auth` is (user, bcrypt hash) as `caddy
    hash-password` prints it."""
    handlers = []
    if basic_auth:
        user, hashed = basic_auth
        handlers.append({"handler": "authentication",
                         "providers": {"http_basic": {"accounts": [{"username": user, "password": hashed}]}}})
    handlers.append({"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{port}"}]})
    return {"@id": route_id(instance), "match": [{"host": [host]}], "handle": handlers, "terminal": True}


class Unanswered(AgentError):
    """Caddy's admin API is not there, or did not answer."""


def admin_call(admin, method, path, body=None):
    """(status, the decoded JSON answer or None) of one admin API call."""
    import http.client  # here: only calls that expose pay for importing it
    host, _, port = admin.rpartition(":")
    conn = http.client.HTTPConnection(host or "localhost", int(port), timeout=TIMEOUT)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        answer = conn.getresponse()
        text = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        raise Unanswered(f"Caddy's admin API at {admin} does not answer ({exc}): is Caddy running on this host?")
    finally:
        conn.close()
    try:
        return answer.status, json.loads(text.decode("utf-8")) if text.strip() else None
    except ValueError:
        return answer.status, None


def refusal(status, answer):
    """Caddy's own words on a call it refused."""
    said = answer.get("error") if isinstance(answer, dict) else None
    return f"Caddy refused the route (HTTP {status}{': ' + said if said else ''})"


def site_server(servers):
    """The name of the HTTP server that serves the sites: the one listening on
    :443, else :80, else the only one; AgentError when Caddy has none or the
    choice is not clear."""
    if not isinstance(servers, dict) or not servers:
        raise AgentError("Caddy serves no HTTP site: give it one (a Caddyfile site block) before --expose")
    for port in (":443", ":80"):
        for name in sorted(servers):
            listen = servers[name].get("listen") if isinstance(servers[name], dict) else None
            if isinstance(listen, list) and any(isinstance(each, str) and each.endswith(port) for each in listen):
                return name
    if len(servers) == 1:
        return next(iter(servers))
    raise AgentError(f"Caddy has {len(servers)} HTTP servers ({', '.join(sorted(servers))}) and none listens "
                     f"on :443 or :80: fabserve cannot tell which serves the previews")


def add_route(admin, route):
    """Put `route` first in the site server's routes, replacing one of the same
    `@id` (a route left by an earlier start, or already there)."""
    remove_route(admin, route["@id"])
    status, servers = admin_call(admin, "GET", "/config/apps/http/servers")
    if status != 200:
        raise AgentError(refusal(status, servers))
    name = site_server(servers)
    from urllib.parse import quote  # here, as http.client is
    status, answer = admin_call(admin, "PUT", f"/config/apps/http/servers/{quote(name, safe='')}/routes/0", route)
    if status != 200:
        raise AgentError(refusal(status, answer))


def route_now(admin, identifier):
    """The route of `@id` `identifier` as Caddy holds it, or None when it has none."""
    status, answer = admin_call(admin, "GET", f"/id/{identifier}")
    if status == 404:
        return None
    if status != 200:
        raise AgentError(refusal(status, answer))
    return answer


def remove_route(admin, identifier):
    """Remove the route of `@id` `identifier`; whether there was one."""
    status, answer = admin_call(admin, "DELETE", f"/id/{identifier}")
    if status == 200:
        return True
    if status == 404:  # "unknown object ID": gone already
        return False
    raise AgentError(f"Caddy did not remove route {identifier} (HTTP {status}"
                     f"{': ' + answer['error'] if isinstance(answer, dict) and answer.get('error') else ''})")


def withdraw(exposed):
    """Remove the route an exposed instance's metadata records (`exposed`, or
    None: nothing to do): what to say when Caddy could not be told, else ""."""
    if not isinstance(exposed, dict) or not isinstance(exposed.get("route"), str):
        return ""
    try:
        remove_route(exposed.get("admin") or ADMIN, exposed["route"])
    except AgentError as exc:
        return f"its Caddy route {exposed['route']} stays: {exc}"
    return ""
