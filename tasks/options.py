"""fabserve's settings: one table, and how flags, inventory and config merge into it.

Every setting can be set once in the `fabserve` section of Fabric's config
(fabric.yaml, ~/.fabric.yaml, -f FILE, FABRIC_FABSERVE_* variables); those a
task takes as a flag can be given on the command line, which wins; those marked
per host can also come from the inventory. README's options table is checked
against SETTINGS by tests/test_options_unit.py.
"""

import ipaddress
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "hosts.yml"
CONNECT_TIMEOUT = 10  # seconds; Fabric's own default is to wait forever
EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "example"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SETTINGS_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
VERBS = ("start", "stop", "status", "restart", "logs")
STARTING = ("start", "restart")


class UsageError(Exception):
    """A bad option, caught before anything connects (exit 2)."""


def parse_port(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"--port must be a number from 1 to 65535, not {value!r}")
    return int(text)


def parse_addr(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise UsageError(f"--addr must be an IPv4 or IPv6 address, not {value!r}") from None


def parse_seconds(value: Any, flag: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 86400:
        raise UsageError(f"{flag} must be between 0 and 86400 seconds, not {value!r}")
    return seconds


def parse_path(value: Any, flag: str) -> str:
    text = str(value)
    if not text or "\0" in text or "\n" in text:
        raise UsageError(f"{flag} must be a path without NUL bytes or newlines, not {value!r}")
    return text


def parse_settings_module(value: Any) -> Optional[str]:
    if value is not None and not SETTINGS_MODULE.match(str(value)):
        raise UsageError(f"--settings must be a dotted module name, not {value!r}")
    return value


def parse_env(env: Mapping[str, Any]) -> Dict[str, str]:
    env = {str(key): str(value) for key, value in (env or {}).items()}
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise UsageError(f"environment variable name {key!r} is not valid")
        if "\0" in value:
            raise UsageError(f"environment variable {key} contains a NUL byte")
    return env


def parse_lines(value: Any) -> int:
    text = str(value)
    if not text.isdigit():
        raise UsageError(f"--lines must be a whole number, not {value!r}")
    return int(text)


def parse_concurrency(value: Any) -> int:
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if limit < 1:
        raise UsageError(f"fabserve.concurrency must be a whole number of at least 1, not {value!r}")
    return limit


def parse_switch(value: Any) -> bool:
    # Invoke's rule for booleans from the environment: anything but "0" or "" is on.
    return bool(value) and value != "0"


def parse_inventory(value: Any) -> Optional[Path]:
    return Path(str(value)).expanduser() if value else None


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`parse` for a setting whose unset value (None or empty) stands for a default elsewhere."""
    return lambda value: parse(value) if value else None


@dataclass(frozen=True)
class Setting:
    """One fabserve setting: its default, how its value is checked, and where it may be given."""

    name: str
    default: Any
    parse: Callable[[Any], Any]  # the checked value, or UsageError
    help: str  # the flag's help; `{default}` is filled in
    verbs: Tuple[str, ...] = ()  # tasks that take it as a flag
    flag: str = ""  # the flag's name where it is not the setting's
    per_host: bool = False  # an inventory group or host may set it
    request: bool = False  # it travels to the agent
    config: bool = True  # the `fabserve` config section may set it
    repeatable: bool = False  # the flag may be given several times

    @property
    def flag_name(self) -> str:
        return self.flag or self.name


SETTINGS: Tuple[Setting, ...] = (
    Setting("project", None, partial(parse_path, flag="--project"),
            "Django project directory (holding manage.py) on the target; "
            "default: fabserve.project, or the bundled example when local",
            verbs=VERBS, per_host=True, request=True),
    Setting("port", 8000, parse_port,
            "port runserver listens on (default {default}); with --project it names the instance",
            verbs=VERBS, per_host=True, request=True),
    Setting("addr", "127.0.0.1", parse_addr, "IP address runserver binds to (default {default})",
            verbs=STARTING + ("status",), per_host=True, request=True),
    Setting("python", None, optional(partial(parse_path, flag="--python")),
            "interpreter on the target, relative paths from the project "
            "(default: the project's .venv or venv, else python3)",
            verbs=STARTING, per_host=True, request=True),
    Setting("settings", None, parse_settings_module, "Django settings module, passed as runserver --settings",
            verbs=STARTING, per_host=True, request=True),
    Setting("env", {}, parse_env, "KEY=VALUE set in the server's environment (repeatable)",
            verbs=STARTING, per_host=True, request=True, repeatable=True),
    Setting("noreload", False, bool, "run without Django's autoreloader (a single process)",
            verbs=STARTING, per_host=True, request=True),
    Setting("start_timeout", 30, partial(parse_seconds, flag="--timeout"),
            "seconds to wait for the port to answer (default {default})",
            verbs=STARTING, flag="timeout", per_host=True, request=True),
    Setting("stop_timeout", 10, partial(parse_seconds, flag="--timeout"),
            "seconds between TERM and KILL (default {default})",
            verbs=("stop",), flag="timeout", per_host=True, request=True),
    Setting("lines", 50, parse_lines, "how many of the last lines to show (default {default})",
            verbs=("logs",), per_host=True, request=True),
    Setting("follow", False, bool, "keep printing lines as they are appended, until interrupted",
            verbs=("logs",), request=True, config=False),
    Setting("json", False, bool, "print one JSON object per host on stdout and nothing else", verbs=VERBS),
    Setting("agent_python", "python3", str, "interpreter that runs fabserve's agent on the target",
            per_host=True),
    Setting("state_dir", None, optional(partial(parse_path, flag="state_dir")),
            "where pidfiles and logs live on the target", per_host=True, request=True),
    Setting("inventory", None, parse_inventory,
            "inventory file for -H group and host names; default: inventory/hosts.yml here"),
    Setting("concurrency", 10, parse_concurrency, "hosts worked on at the same time"),
    Setting("strict_host_keys", False, parse_switch,
            "refuse hosts that are not in known_hosts, whatever ssh_config says (for CI)"),
)
SETTING: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

#: The `fabserve` config section's defaults. `project: None` means the bundled
#: example project when running locally, and is an error for a remote host.
DEFAULTS: Dict[str, Any] = {setting.name: setting.default for setting in SETTINGS if setting.config}
#: What an inventory may set per group or host; output format and the run's own
#: settings are the caller's.
PER_HOST: Tuple[str, ...] = tuple(setting.name for setting in SETTINGS if setting.per_host)


def flags_of(verb: str) -> List[Setting]:
    """The settings that `verb`'s task takes as flags."""
    return [setting for setting in SETTINGS if verb in setting.verbs]


def helps(verb: str) -> Dict[str, str]:
    """Help texts of `verb`'s flags, for its @task."""
    return {setting.flag_name: setting.help.format(default=setting.default) for setting in flags_of(verb)}


def repeatable(verb: str) -> List[str]:
    """`verb`'s flags that may be given several times, for its @task."""
    return [setting.flag_name for setting in flags_of(verb) if setting.repeatable]


def section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `fabserve` section of Fabric's config: the one place that reads it."""
    return config.get("fabserve", {})


def merged(config: Mapping[str, Any], flags: Mapping[str, Any]) -> Dict[str, Any]:
    """Flags given on the command line over the config section over DEFAULTS.

    A flag counts as given unless it is None, or a switch left off (a switch
    can only turn a setting on).
    """
    values = dict(DEFAULTS)
    values.update({key: value for key, value in config.items() if key in DEFAULTS})
    values.update({key: value for key, value in flags.items() if value is not None and value is not False})
    return values


def host_values(config: Mapping[str, Any], host_vars: Mapping[str, Any],
                flags: Mapping[str, Any]) -> Dict[str, Any]:
    """Flags over the host's inventory vars over the `fabserve` config section."""
    return merged({**section(config), **host_vars}, flags)


def checked(values: Mapping[str, Any], name: str) -> Any:
    """Setting `name` of merged `values`, through its parser."""
    return SETTING[name].parse(values[name])


def setting(config: Mapping[str, Any], name: str, flags: Optional[Mapping[str, Any]] = None) -> Any:
    """One client-side setting, checked: its flag if given, else the config section, else the default."""
    return checked(merged(section(config), flags or {}), name)


def request(action: str, values: Mapping[str, Any], env_flags: Optional[Iterable[str]], local: bool) -> Dict[str, Any]:
    """The agent request for `action`, every value through its setting's parser; UsageError on bad input.

    `values` are merged settings, plus the action's own flag names (`timeout`)
    where they differ from the settings they set.
    """
    values = dict(values)
    for each in flags_of(action):  # --timeout sets start_timeout or stop_timeout, by verb
        if each.flag and values.get(each.flag) is not None:
            values[each.name] = values[each.flag]
    if values["project"] is None:
        if not local:
            raise UsageError("--project is required for a remote host (or set fabserve.project)")
        values["project"] = str(EXAMPLE_PROJECT)
    values["env"] = env_with(values["env"], env_flags or ())
    req: Dict[str, Any] = {"action": action}
    for each in SETTINGS:
        if each.request:
            req[each.name] = each.parse(values.get(each.name, each.default))
    return req


def env_with(config_env: Mapping[str, Any], pairs: Iterable[str]) -> Dict[str, Any]:
    """Config's env mapping updated by repeated --env KEY=VALUE flags."""
    env = dict(config_env or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--env takes KEY=VALUE, not {pair!r}")
        env[key] = value
    return env
