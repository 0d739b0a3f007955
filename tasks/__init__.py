"""fabserve: start, stop and watch Django development servers on remote hosts."""

from invoke import Collection

from . import verbs
from .options import DEFAULTS

ns = Collection.from_module(verbs)
ns.configure({"fabserve": DEFAULTS})
