"""What differs between the three ways fabserve's tasks run: `fab` in fabserve's
own checkout, the `fabserve` command, and a fabfile of your own that adds
`fabserve.collection`.

Defaults: the checkout, or the current directory.

`fab` in the checkout runs the collection fabfile.py builds with `checkout=True`:
its inventory is the checkout's inventory/hosts.yml and, with no -H, its project
the bundled example, wherever `fab -r` runs from. Installed (the `fabserve`
command, or `fabserve.collection` in a fabfile of your own) they are
./inventory/hosts.yml and the current directory when it holds manage.py, so
nothing is ever looked for inside site-packages.

Fabric's own executor (a fabfile of your own without fabserve's in its
fabric.yaml) knows neither inventory groups nor fabserve's guard against names
that would only end in a DNS lookup, and ignores what tasks return:
`require_executor` refuses such -H names before connecting, and `end_task`
turns a result into the exit code fabserve's executor would give.
"""

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from invoke.exceptions import Exit

from . import remote
from .agent.protocol import exit_code
from .config import setting
from .inventory import Inventory, InventoryError, expand
from .settings import UsageError

#: The collection's config key that says it runs from the checkout (see tasks/__init__.py).
CHECKOUT = "fabserve_checkout"
#: The checkout's inventory and example project, beside tasks/: only `fab` in the checkout uses them.
DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "hosts.yml"
EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "example"
#: The installed package's default inventory, relative to the current directory.
LOCAL_INVENTORY = Path("inventory") / "hosts.yml"
#: The config line a fabfile of your own needs for inventory groups and concurrent hosts.
EXECUTOR_LINE = f"tasks: {{executor_class: {__package__}.executor.ConcurrentExecutor}}"


def checkout(config: Mapping[str, Any]) -> bool:
    """True when the tasks run from fabserve's checkout (its fabfile.py says so)."""
    return bool(config.get(CHECKOUT, False))


def inventory_path(config: Mapping[str, Any]) -> Path:
    """The inventory used when fabserve.inventory names none (read only if it exists)."""
    return DEFAULT_INVENTORY if checkout(config) else LOCAL_INVENTORY


def inventory(config: Mapping[str, Any]) -> Optional[Inventory]:
    """The configured inventory, else the default one if it exists, else None; InventoryError if unreadable."""
    configured = setting(config, "inventory")
    path = configured or inventory_path(config)
    return Inventory.load(path) if configured or path.exists() else None


def local_project(config: Mapping[str, Any]) -> str:
    """The project of a local run that names none: the bundled example in the
    checkout, else the current directory if it holds manage.py; UsageError otherwise."""
    if checkout(config):
        return str(EXAMPLE_PROJECT)
    try:
        here = os.getcwd()
    except OSError as exc:  # the directory was removed under us
        raise UsageError(f"no --project given and the current directory is gone ({exc.strerror})") from None
    if not os.path.isfile(os.path.join(here, "manage.py")):
        raise UsageError(f"no --project given and {here} holds no manage.py; "
                         f"pass --project DIR or run from the Django project's directory")
    return here


def require_executor(c: Any) -> None:
    """UsageError when Fabric's own executor hands this task a -H name only
    fabserve's executor understands: an inventory group or host, or a bare name
    that is no host either (connecting would only wait for DNS)."""
    if not remote.is_remote(c) or getattr(c, "fabserve_name", None):
        return  # local, or the host came through fabserve's executor
    name = c.original_host
    try:
        found = inventory(c.config)
        if found is not None and (name in found.groups or name in found.host_names()):
            kind = "group" if name in found.groups else "host"
            raise UsageError(f"-H names an inventory {kind} ({found.source}), which only fabserve's "
                             f"executor knows; add `{EXECUTOR_LINE}` to the fabric.yaml beside your fabfile")
        # user@ and :port, which Fabric took off the name, say it is a host.
        expand([remote.host_label(c)], found, c.config.base_ssh_config.get_hostnames())
    except InventoryError as exc:
        raise UsageError(f"{exc}; inventory groups need `{EXECUTOR_LINE}` in the fabric.yaml "
                         f"beside your fabfile") from None


def end_task(c: Any, result: Dict[str, Any]) -> None:
    """Under Fabric's own executor, Exit with the code fabserve's executor would
    give `result` (its executor marks every context it makes with fabserve_fanout)."""
    if getattr(c, "fabserve_fanout", None) is None:
        code = exit_code(result["action"], result)
        if code:
            raise Exit(code=code)
