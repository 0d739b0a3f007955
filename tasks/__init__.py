"""fabserve: start, stop and watch Django development servers on remote hosts.

Installed, this package is `fabserve`: `fabserve.collection` holds its tasks for
a fabfile of your own (`ns.add_collection(fabserve.collection, "serve")`) and is
what the `fabserve` command runs (fabserve.program). In the checkout it is
`tasks`, and fabfile.py hands `fab` the collection `build(checkout=True)` makes.
"""

from typing import Any, Dict

from invoke import Collection

from . import entrypoints, verbs
from .runners import RUNNERS
from .config import CONFIGURED, CONNECT_TIMEOUT

__version__ = "0.1.0"


def build(checkout: bool = False) -> Collection:
    """Every verb's task, with fabserve's configuration; `checkout`: run from
    fabserve's own checkout, whose inventory and example project are then the
    defaults instead of the current directory's (tasks/entrypoints.py)."""
    built = Collection.from_module(verbs)
    built.configure({
        "fabserve": CONFIGURED,
        # Fabric waits forever on a silent host by default; -t and config files still win.
        "timeouts": {"connect": CONNECT_TIMEOUT},
        # invoke's own runners grow worse than linearly with the output (a large `logs`).
        "runners": RUNNERS,
        entrypoints.CHECKOUT: checkout,
    })
    return built


def config(**values: Any) -> Dict[str, Any]:
    """`{"fabserve": ...}` for your own collection's configure(): every setting,
    `values` over the defaults, e.g. `ns.configure(fabserve.config(port=8001))`.

    invoke hands a task the `fabserve` section of the outermost collection that
    has one, whole: a section naming only some settings would hide the defaults
    of the others, and with them their FABRIC_FABSERVE_* variables. Numbers are
    given as text, as the defaults are (config.CONFIGURED says why).
    """
    unknown = sorted(set(values) - set(CONFIGURED))
    if unknown:
        raise TypeError(f"fabserve has no setting {', '.join(unknown)}")
    given = {name: str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
             for name, value in values.items()}
    return {"fabserve": {**CONFIGURED, **given}}


collection = build()
#: The name invoke looks for in a tasks module (`Collection.from_module(fabserve)`).
ns = collection
