"""The target half of fabserve: a stdlib-only package sent with every command.

The client ships these modules (compressed) inside a single `python3 -c ...`
command, so each operation costs one SSH round trip and nothing is installed on
the host; there a loader compiles them once per interpreter and serves them as
the package `fabserve_agent` from memory (see boot, and the client's payload
module). The agent reads one request (a line of JSON on stdin, never argv),
acts, and prints one result line prefixed by protocol.MARKER. It must run on
CPython 3.6+, so: no walrus, no dataclasses, no `from __future__ import
annotations`, no 3.7+ subprocess flags. Linux only: process identity comes
from /proc. Its modules import the standard library and each other, relatively.
"""

# The package's modules, each importing only those before it: what the client
# ships, and what the TTL watchdog's interpreter is fed (see boot.package_codes).
MODULES = ("__init__", "boot", "protocol", "procfs", "signals", "sockets", "identity", "state", "procfile",
           "records", "caddy", "caller", "projects", "logfiles", "ttl", "locate", "exposure", "launch", "companions",
           "verbs", "extend", "logview", "hostlist", "teardown", "pruning", "manage", "shipping", "environment",
           "dispatch")
