"""fabserve: start, stop and watch Django development servers on remote hosts."""

from invoke import Collection

from . import verbs
from .runners import RUNNERS
from .options import CONFIGURED, CONNECT_TIMEOUT

ns = Collection.from_module(verbs)
ns.configure({
    "fabserve": CONFIGURED,
    # Fabric waits forever on a silent host by default; -t and config files still win.
    "timeouts": {"connect": CONNECT_TIMEOUT},
    # invoke's own runners grow worse than linearly with the output (a large `logs`).
    "runners": RUNNERS,
})
