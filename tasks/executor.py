"""Running a task on many hosts at once: fabserve's executor for `fab`.

Fabric runs `-H a,b,c` one host after another and knows no groups. This
executor (selected through invoke's `tasks.executor_class` setting) expands -H
through the inventory, runs the hosts concurrently (at most `fabserve.concurrency`
at a time), lets each host print its own line as it finishes, and ends with one
summary line and one exit code for the whole run.
"""

import sys
import threading
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Dict, List, Optional

from fabric import Connection
from fabric.executor import Executor
from fabric.tasks import ConnectionCall
from invoke import Context
from invoke.exceptions import Exit

from . import entrypoints, report, runners
from .agent.protocol import exit_code
from .config import config_error, setting
from .inventory import Inventory, InventoryError, expand
from .settings import UsageError

#: Keys the executor adds to Connection init kwargs; the Connection never sees them.
NAME, SETTINGS = "fabserve_name", "fabserve_settings"


class HostCall(ConnectionCall):
    """A ConnectionCall that also hands the host's inventory name and settings to the task."""

    def make_context(self, config: Any) -> Connection:
        kwargs = dict(self.init_kwargs)
        name, settings = kwargs.pop(NAME), kwargs.pop(SETTINGS)
        kwargs["config"] = config
        cxn = Connection(**kwargs)
        # _set: a plain attribute assignment on a Context would land in the shared config.
        cxn._set(fabserve_name=name, fabserve_settings=settings)
        return cxn


class ConcurrentExecutor(Executor):
    """Runs each task on every -H host at once, at most `fabserve.concurrency` at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inventory: Optional[Inventory] = None
        self._inventory_loaded = False

    def inventory(self) -> Optional[Inventory]:
        """The configured inventory file; the default one only if it exists."""
        if not self._inventory_loaded:
            self._inventory = entrypoints.inventory(self.config)
            self._inventory_loaded = True
        return self._inventory

    def normalize_hosts(self, hosts: List[Any]) -> List[Dict[str, Any]]:
        names = [value for value in hosts or [] if isinstance(value, str)]
        given = [dict(value) for value in hosts or [] if isinstance(value, dict)]
        ssh_hosts = self.config.base_ssh_config.get_hostnames()
        expanded = [{**host.connect, NAME: host.name, SETTINGS: host.settings}
                    for host in expand(names, self.inventory(), ssh_hosts)]
        return expanded + [{**value, NAME: value["host"], SETTINGS: {}} for value in given]

    def parameterize(self, call: Any, connection_init_kwargs: Dict[str, Any]) -> HostCall:
        return call.clone(into=HostCall, with_=dict(init_kwargs=connection_init_kwargs))

    def execute(self, *tasks: Any) -> Dict[Any, Any]:
        # The collection's defaults first: only keys they define are read from
        # FABRIC_* variables, and expanding -H already needs fabserve.inventory.
        self.load_settings()
        try:
            calls = self.expand_calls(self.normalize(tasks))
        except (InventoryError, UsageError) as exc:
            raise Exit(str(exc), 2) from None
        results: Dict[Any, Any] = {}
        # `fab -H a,b start status`: all hosts start, then all report status.
        for task, batch in groupby(calls, key=lambda call: call.task):
            results[task] = self.run_batch(list(batch))
        return results

    def load_settings(self, called_as: Optional[str] = None) -> None:
        """The collection's defaults and FABRIC_* variables into the config; exit 2 if invoke cannot merge them."""
        try:
            self.config.load_collection(self.collection.configuration(called_as))
            self.config.load_shell_env()
        except Exception as exc:  # invoke's merge and cast errors have no common base
            raise Exit(config_error(self.config, exc), 2) from None

    def run_batch(self, calls: List[Any]) -> List[Any]:
        config = self.config
        self.load_settings(calls[0].called_as)
        limit = concurrency(config)  # checked for one host too: a bad setting is an error on every run
        contexts = [call.make_context(config) for call in calls]
        for context in contexts:
            context._set(fabserve_fanout=len(calls) > 1)
        if len(calls) == 1:  # in the main thread, so Ctrl-C and tracebacks behave as usual
            outcomes = [run_one(calls[0], contexts[0])]
        else:
            outcomes = run_concurrently(calls, contexts, limit)
        code = finish(calls, contexts, outcomes, as_json(config, calls))
        if code:
            raise Exit(code=code)
        return [outcome.returned for outcome in outcomes if outcome.completed]


@dataclass(frozen=True)
class Outcome:
    """How one host's task ended: it returned, it ended with Exit, or it crashed."""

    returned: Any = None
    exit: Optional[Exit] = None
    crash: Optional[Exception] = None

    @property
    def completed(self) -> bool:
        return self.exit is None and self.crash is None


def run_one(call: Any, context: Context) -> Outcome:
    try:
        return Outcome(returned=call.task(context, *call.args, **call.kwargs))
    except Exit as exc:
        return Outcome(exit=exc)
    except Exception as exc:  # a bug on one host must not take the others down
        return Outcome(crash=exc)


def run_concurrently(calls: List[Any], contexts: List[Context], limit: int) -> List[Outcome]:
    outcomes: List[Optional[Outcome]] = [None] * len(calls)
    slots = threading.BoundedSemaphore(limit)

    def work(index: int) -> None:
        with slots:
            outcomes[index] = run_one(calls[index], contexts[index])

    # Daemon threads: Ctrl-C ends the run instead of waiting for hung hosts, but
    # first ends the hosts' manage and logs runs, which then report it.
    threads = [threading.Thread(target=work, args=(index,), daemon=True) for index in range(len(calls))]
    with runners.sigint_ends_runs():
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    return [outcome for outcome in outcomes if outcome is not None]


def concurrency(config: Any) -> int:
    try:
        return setting(config, "concurrency")
    except UsageError as exc:
        raise Exit(str(exc), 2) from None


def as_json(config: Any, calls: List[Any]) -> bool:
    return setting(config, "json", {"json": calls[0].kwargs.get("json")})


def finish(calls: List[Any], contexts: List[Context], outcomes: List[Outcome], json_mode: bool) -> int:
    """Report what did not report itself, print the summary, and return the run's exit code."""
    codes: List[int] = []
    results: List[Dict[str, Any]] = []
    for context, outcome in zip(contexts, outcomes):
        if outcome.crash is not None:
            label = getattr(context, "fabserve_name", "local")
            report.say(f"{label}: internal error: {outcome.crash!r}", sys.stderr)
            codes.append(1)
        elif outcome.exit is not None:
            if outcome.exit.message:
                report.say(outcome.exit.message, sys.stderr)
            codes.append(outcome.exit.code)
        elif isinstance(outcome.returned, dict):
            results.append(outcome.returned)
            codes.append(exit_code(outcome.returned["action"], outcome.returned))
        else:
            codes.append(0)
    if len(calls) > 1 and not json_mode and results:
        report.say(report.summary(results, len(calls) - len(results)))
    return combined(codes)


def combined(codes: List[int]) -> int:
    """2 for any usage error, else 1 for any failure, else 3 when a status found
    something not running, else 0. A single host's code stands as it is: tunnel
    --run exits with its command's."""
    if len(codes) == 1:
        return codes[0]
    if 2 in codes:
        return 2
    if any(code not in (0, 3) for code in codes):
        return 1
    return 3 if 3 in codes else 0
