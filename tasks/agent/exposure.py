"""An instance a reviewer can open: its public host name (from --host-template),
the URL Caddy serves it at, the environment Django needs to accept that host,
and its Caddy route added once it runs and withdrawn when it stops, expires
or is destroyed. What was exposed is recorded in the server's metadata
(`exposed`), so every later call knows which route to withdraw.
"""

import json
import os
import re

from .protocol import AgentError
from .state import write_atomic
from .caddy import ADMIN, add_route, admin_call, refusal, route_id, route_now, route_of, site_server

HOST_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*$")


def public_host(inst):
    """--host-template with `{port}` filled in (the client fills `{branch}` and
    `{sha}`), as a host name; AgentError when there is none or it is not one."""
    template = inst.req.host_template
    if not template:
        raise AgentError("--expose needs --host-template (such as {branch}.preview.example.com); nothing was started")
    host = template.replace("{port}", str(inst.port)).lower()
    if not HOST_NAME.match(host):
        raise AgentError(f"--host-template gives {host!r}, which is not a host name; nothing was started")
    return host


def public_url(server, host):
    """Where a reviewer opens `host` through Caddy's site server `server`: https
    where it listens on :443, http on :80, else http on its first port."""
    listen = [each for each in (server or {}).get("listen") or [] if isinstance(each, str)]
    if any(each.endswith(":443") for each in listen):
        return f"https://{host}/"
    if any(each.endswith(":80") for each in listen) or not listen:
        return f"http://{host}/"
    return f"http://{host}:{listen[0].rsplit(':', 1)[-1]}/"


def planned(inst):
    """What exposing the instance will record ({host, url, route, admin}),
    once Caddy answered and has a site server: before anything starts, so a
    missing Caddy starts nothing."""
    host = public_host(inst)
    admin = inst.req.caddy_admin or ADMIN
    status, servers = admin_call(admin, "GET", "/config/apps/http/servers")
    if status != 200:
        raise AgentError(f"{refusal(status, servers)}; nothing was started")
    server = servers[site_server(servers)]
    return {"host": host, "url": public_url(server, host), "route": route_id(instance_id(inst)), "admin": admin}


def instance_id(inst):
    """The instance's name in Caddy's config: its state directory's name."""
    return os.path.basename(inst.dir)


def host_env(exposed):
    """What Django's settings read to accept the public host (documented: the
    project's settings split them on commas). The loopback names stay allowed:
    --check, tunnel and the host's own requests use them."""
    return {"DJANGO_ALLOWED_HOSTS": f"{exposed['host']},localhost,127.0.0.1,[::1]",
            "CSRF_TRUSTED_ORIGINS": exposed["url"].rstrip("/")}


def instance_route(inst, exposed):
    """The route the instance's request asks for."""
    auth = inst.req.basic_auth.split(":", 1) if inst.req.basic_auth else None
    return route_of(instance_id(inst), exposed["host"], inst.port, auth)


def publish(inst, exposed):
    """Add the instance's route (replacing one of its @id)."""
    add_route(exposed["admin"], instance_route(inst, exposed))


def republish(inst, found):
    """Publish a running server of ours through Caddy again, recording it in its
    metadata: "" when its route is there as asked (nothing changes), else what to say."""
    if not found.managed or not isinstance(inst.recorded, dict):
        raise AgentError(f"the server on port {inst.port} was not started by fabserve, so it is not exposed: "
                         f"stop it, then start it with --expose")
    inst.exposed = planned(inst)
    if (inst.recorded.get("exposed") == inst.exposed
            and route_now(inst.exposed["admin"], inst.exposed["route"]) == instance_route(inst, inst.exposed)):
        return ""
    publish(inst, inst.exposed)
    write_atomic(inst.meta_path, json.dumps(dict(inst.recorded, exposed=inst.exposed)))
    return exposed_note(inst.exposed)


def exposed_note(exposed):
    return f"open it at {exposed['url']}" if exposed else ""
