"""fabserve's settings: the defaults, and how flags and config merge and validate.

Every task option can be set once in the `fabserve` section of Fabric's config
(fabric.yaml, ~/.fabric.yaml, -f FILE, FABRIC_FABSERVE_* variables); a flag
given on the command line wins.
"""

import ipaddress
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

#: The `fabserve` config section. `project: None` means the bundled example
#: project when running locally, and is an error for a remote host.
DEFAULTS: Dict[str, Any] = {
    "project": None,
    "port": 8000,
    "addr": "127.0.0.1",
    "python": None,
    "settings": None,
    "env": {},
    "noreload": False,
    "start_timeout": 30,
    "stop_timeout": 10,
    "lines": 50,
    "json": False,
    "agent_python": "python3",
    "state_dir": None,
    # Inventory file for -H group and host names; default: inventory/hosts.yml here.
    "inventory": None,
    # Hosts worked on at the same time.
    "concurrency": 10,
    # Refuse hosts that are not in known_hosts, whatever ssh_config says (for CI).
    "strict_host_keys": False,
}

DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "hosts.yml"
CONNECT_TIMEOUT = 10  # seconds; Fabric's own default is to wait forever
EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "example"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SETTINGS_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UsageError(Exception):
    """A bad option, caught before anything connects (exit 2)."""


def merged(config: Mapping[str, Any], flags: Mapping[str, Any]) -> Dict[str, Any]:
    """Flags given on the command line (not None) over the config section over DEFAULTS."""
    values = dict(DEFAULTS)
    values.update({key: value for key, value in config.items() if key in DEFAULTS})
    values.update({key: value for key, value in flags.items() if value is not None})
    return values


def parse_port(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError("--port must be a number from 1 to 65535, not {!r}".format(value))
    return int(text)


def parse_addr(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise UsageError("--addr must be an IPv4 or IPv6 address, not {!r}".format(value)) from None


def parse_seconds(value: Any, flag: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError("{} must be a number of seconds, not {!r}".format(flag, value)) from None
    if not 0 < seconds <= 86400:
        raise UsageError("{} must be between 0 and 86400 seconds, not {!r}".format(flag, value))
    return seconds


def parse_env(config_env: Mapping[str, Any], pairs: Iterable[str]) -> Dict[str, str]:
    """Config's env mapping updated by repeated --env KEY=VALUE flags."""
    env = {str(key): str(value) for key, value in (config_env or {}).items()}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError("--env takes KEY=VALUE, not {!r}".format(pair))
        env[key] = value
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise UsageError("environment variable name {!r} is not valid".format(key))
        if "\0" in value:
            raise UsageError("environment variable {} contains a NUL byte".format(key))
    return env


def parse_path(value: Any, flag: str) -> str:
    text = str(value)
    if not text or "\0" in text or "\n" in text:
        raise UsageError("{} must be a path without NUL bytes or newlines, not {!r}".format(flag, value))
    return text


def request(action: str, values: Mapping[str, Any], env_flags: Iterable[str], local: bool,
            timeout_key: Optional[str] = None) -> Dict[str, Any]:
    """The agent request for `action`, validated; UsageError on bad input.

    `timeout_key` names the setting that this task's --timeout overrides.
    """
    values = dict(values)
    if timeout_key and values.get("timeout") is not None:
        values[timeout_key] = values["timeout"]
    project = values["project"]
    if project is None:
        if not local:
            raise UsageError("--project is required for a remote host (or set fabserve.project)")
        project = str(EXAMPLE_PROJECT)
    settings = values["settings"]
    if settings is not None and not SETTINGS_MODULE.match(str(settings)):
        raise UsageError("--settings must be a dotted module name, not {!r}".format(settings))
    lines = str(values["lines"])
    if not lines.isdigit():
        raise UsageError("--lines must be a whole number, not {!r}".format(values["lines"]))
    return {
        "action": action,
        "project": parse_path(project, "--project"),
        "port": parse_port(values["port"]),
        "addr": parse_addr(values["addr"]),
        "python": parse_path(values["python"], "--python") if values["python"] else None,
        "settings": settings,
        "env": parse_env(values["env"], env_flags or ()),
        "noreload": bool(values["noreload"]),
        "start_timeout": parse_seconds(values["start_timeout"], "--timeout"),
        "stop_timeout": parse_seconds(values["stop_timeout"], "--timeout"),
        "lines": int(lines),
        "follow": bool(values.get("follow")),
        "state_dir": parse_path(values["state_dir"], "state_dir") if values["state_dir"] else None,
    }
