"""How fabserve's settings are given on the client: flags over the inventory over
Fabric's config sources over the table's defaults.

Every setting can be set once in the `fabserve` section of Fabric's config
(fabric.yaml, or fabserve.yaml for the `fabserve` command; ~/.fabric.yaml,
-f FILE, FABRIC_FABSERVE_* variables); those a task takes as a flag can be given
on the command line, which wins; those marked per host can also come from the
inventory. The table and the parsers are tasks/settings.py; this module reads
invoke's Config, so it stays on the client and is not shipped to Ansible targets.
"""

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .settings import DEFAULTS, SETTING, Invalid, Values, checked, dashed, inventory_setting, parse_env, shown

CONNECT_TIMEOUT = 10  # seconds; Fabric's own default is to wait forever
ENV_VARIABLE = "FABRIC_FABSERVE_ENV"  # `env` as KEY=VALUE words, read by env_over_config
#: The defaults as the collection registers them. Invoke casts a FABRIC_FABSERVE_*
#: variable to the type of the default it overrides (int("abc") is a traceback,
#: and an int refuses "1.5"), so numbers are registered as text and every
#: variable reaches its setting's parser as given; switches stay booleans, for
#: invoke's "0"-is-off rule, and env stays a mapping that config files merge into.
CONFIGURED: Dict[str, Any] = {
    name: str(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else default
    for name, default in DEFAULTS.items()
}


def section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `fabserve` section of Fabric's config: the one place that reads it."""
    return config.get("fabserve", {})


def layers(config: Any) -> List[Tuple[Mapping[str, Any], Callable[[str], str]]]:
    """Invoke's config sources, highest precedence first: each one's data, and
    for a setting's name where that source is (a file, a variable, or "")."""
    def data(name: str) -> Mapping[str, Any]:
        found = getattr(config, f"_{name}", None)
        return found if isinstance(found, Mapping) else {}

    def file(name: str) -> Callable[[str], str]:
        path = getattr(config, f"_{name}_path", None)
        return lambda setting_name: f" (from {path})" if isinstance(path, str) else ""

    return [(data("overrides"), lambda name: ""), (data("runtime"), file("runtime")),
            (data("env"), lambda name: f" (from FABRIC_FABSERVE_{name.upper()})"),
            (data("project"), file("project")), (data("user"), file("user")), (data("system"), file("system"))]


def config_where(config: Any, name: str) -> str:
    """Where the config's value of fabserve.`name` was given, e.g. " (from fabric.yaml)"; "" if unknown."""
    for layer, where in layers(config):
        given = layer.get("fabserve")
        if isinstance(given, Mapping) and name in given:
            return where(name)
    return ""


def configured(config: Any, name: str) -> bool:
    """Whether a config source (not the collection's defaults) sets fabserve.`name`."""
    for layer, _ in layers(config):
        given = layer.get("fabserve")
        if isinstance(given, Mapping) and name in given:
            return True
    return False


def config_error(config: Any, error: Exception) -> str:
    """One line for an error invoke raised while merging or casting the config.

    Invoke cannot merge a mapping over a plain value or the reverse (`project:
    {a: 1}`, `env: 5`), and says so without naming the key: name it here.
    """
    for layer, where in layers(config):
        given = layer.get("fabserve")
        if given is None:
            continue
        if not isinstance(given, Mapping):
            return f"the fabserve config section must be a mapping, not {shown(given)}{where('')}"
        for name, value in given.items():
            if name in CONFIGURED and isinstance(value, Mapping) != isinstance(CONFIGURED[name], Mapping):
                try:
                    SETTING[name].parse(value)
                except Invalid as exc:
                    return f"fabserve.{name} {exc}{where(name)}"
    return f"configuration error: {error}"


def merged(config: Mapping[str, Any], flags: Mapping[str, Any], host_vars: Optional[Mapping[str, Any]] = None,
           config_origin: Optional[Any] = None) -> Values:
    """Flags given on the command line over host vars over the config section over DEFAULTS.

    A flag counts as given unless it is None, or a switch left off (a switch
    can only turn a setting on). `config_origin`: the invoke Config the section
    is from, to say in messages which file or variable gave a value.
    """
    values = Values(DEFAULTS)
    for name, value in config.items():
        if name in DEFAULTS:
            values.give(name, value, (f"fabserve.{name}", config_where(config_origin, name)))
            if config_origin is not None and not configured(config_origin, name):
                values.defaulted.add(name)
    variable = os.environ.get(ENV_VARIABLE) if config_origin is not None else None
    if variable is not None:
        env_over_config(values, variable)
    for variable, value in (host_vars or {}).items():
        name = inventory_setting(variable)
        if name is not None:
            values.give(name, value, (variable, " (from the inventory)"))
    for name, value in flags.items():
        if value is not None and value is not False:
            values.give(name, value, (f"--{dashed(name)}", ""))
    return values


def env_over_config(values: Values, variable: str) -> None:
    """FABRIC_FABSERVE_ENV's pairs over the configured `env` mapping. invoke
    reads no variable for a setting whose value is a mapping, so it is read
    here, at the variables' place: over config files, under the inventory and
    flags. A bad value is kept as given, to be refused naming its source."""
    try:
        configured_env = parse_env(values["env"])
    except Invalid:
        return  # refused later, naming the file that gave it
    origin = ("fabserve.env", f" (from {ENV_VARIABLE})")
    try:
        values.give("env", {**configured_env, **parse_env(variable)}, origin)
    except Invalid:
        values.give("env", variable, origin)


def host_values(config: Mapping[str, Any], host_vars: Mapping[str, Any],
                flags: Mapping[str, Any]) -> Values:
    """Flags over the host's inventory vars over the `fabserve` config section."""
    return merged(section(config), flags, host_vars, config)


def setting(config: Mapping[str, Any], name: str, flags: Optional[Mapping[str, Any]] = None) -> Any:
    """One client-side setting, checked: its flag if given, else the config section, else the default."""
    return checked(merged(section(config), flags or {}, config_origin=config), name)


