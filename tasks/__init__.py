"""fabserve: start, stop and watch Django development servers on remote hosts."""

from invoke import Collection

from . import verbs
from .options import CONNECT_TIMEOUT, DEFAULTS

ns = Collection.from_module(verbs)
ns.configure({
    "fabserve": DEFAULTS,
    # Fabric waits forever on a silent host by default; -t and config files still win.
    "timeouts": {"connect": CONNECT_TIMEOUT},
})
