"""The groups of cases one repetition runs, in order, and which of them a run
selects (--skip, --only). Only bench/main imports this; no group does."""

from __future__ import annotations

from bench.ansible_module import module_cases, ratio_lines as module_ratio_lines
from bench.baseline import baseline
from bench.ciflow import ci_flow
from bench.expose import expose_cases
from bench.fanout import fanout
from bench.lifetimes import lifetimes, ratio_lines as lifetimes_ratio_lines
from bench.logs import big_log
from bench.many import many_instances
from bench.operations import payload, restart_and_stop, start_and_status
from bench.package import installed_cases
from bench.previews import up_cases
from bench.procs import procs_cases
from bench.runner import Group
from bench.shipping import sync_cases
from bench.usual import ansible_adhoc, plain_fabric

GROUPS = (
    Group("baseline", baseline),
    Group("fabserve", start_and_status, notes=payload),
    # While the server just started runs, right after `fab status`, which the installed
    # command's status is compared with pair by pair.
    Group("package", installed_cases, needs=frozenset({"fabserve"})),
    Group("fabserve", restart_and_stop),
    Group("logs", big_log, needs=frozenset({"fabserve"})),  # the log of the server fabserve ran
    Group("many", many_instances),
    Group("ciflow", ci_flow),
    Group("diy", plain_fabric),
    Group("ansible", ansible_adhoc),
    Group("fanout", fanout, wide=True),
    Group("module", module_cases, skipped_by=frozenset({"ansible"}), wide=True, notes=module_ratio_lines),
    Group("lifetimes", lifetimes, notes=lifetimes_ratio_lines),
    Group("sync", sync_cases),
    Group("up", up_cases),
    Group("procs", procs_cases),
    Group("expose", expose_cases),
)
# Not a group: the client-side profile of one `fab status` runs once, after the repetitions.
PROFILE = "profile"
NAMES = (*dict.fromkeys(group.name for group in GROUPS), PROFILE)


def chosen(skip: set[str], only: set[str] | None) -> set[str]:
    """The names a run selects: all of them, or `only`, less `skip` and the groups a
    skipped word leaves out. ValueError if a name is unknown or a selected group
    needs one that is left out."""
    unknown = (skip | (only or set())) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown: {', '.join(sorted(unknown))} (from {', '.join(NAMES)})")
    names = {name for name in NAMES if name not in skip and (only is None or name in only)}
    names -= {group.name for group in GROUPS if group.skipped_by & skip}
    for group in GROUPS:
        if group.name in names and not group.needs <= names:
            raise ValueError(f"{group.name} measures what {', '.join(sorted(group.needs - names))} runs: "
                             "select both, or neither")
    return names
