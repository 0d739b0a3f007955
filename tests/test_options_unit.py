"""The settings table: docs/options.md's table and the tasks' flags agree with
it, and the client-side settings are checked as they always were."""

import inspect
import re
from pathlib import Path

import pytest
from fabric import Config
from invoke.exceptions import Exit

from tasks import executor, ns, settings
from tasks.config import CONFIGURED, host_values, merged, setting

OPTIONS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.md"


def documented_options() -> list:
    """The rows of docs/options.md's table, as lists of cells."""
    text = OPTIONS_PAGE.read_text()
    section = text[text.index("# Options (every task)"):]
    section = section[:section.index("\n#", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header, cells = rows[0], [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["setting", "flag", "per host", "meaning",
                                                                       "default"]
    return [row for row in cells if not set("".join(row)) <= set("-")]


def stated(default) -> str:
    """A default as docs/options.md's table writes it."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)


def test_every_setting_has_a_row_that_matches_the_table():
    rows = documented_options()
    by_setting = {row[0].strip("`"): row for row in rows if row[0] != "—"}
    flag_only = {re.match(r"`--([a-z_-]+)", row[1]).group(1).replace("-", "_"): row for row in rows if row[0] == "—"}
    assert set(by_setting) == {each.name for each in settings.SETTINGS if each.config}
    assert set(flag_only) == {each.flag_name for each in settings.SETTINGS if not each.config}
    for each in settings.SETTINGS:
        name, flag, per_host, meaning, default = by_setting[each.name] if each.config \
            else flag_only[each.flag_name]
        assert meaning, each.name
        assert (per_host == "yes") == each.per_host, each.name
        if each.verbs:
            assert flag.startswith(f"`--{each.flag_name.replace('_', '-')}"), each.name
            verbs = re.search(r"\(([a-z, ]+)\)$", flag)
            listed = tuple(verbs.group(1).split(", ")) if verbs else settings.TASKS
            assert listed == each.verbs, each.name
        else:
            assert flag == "", each.name
        if each.default not in (None, {}):
            assert default == stated(each.default), each.name


def test_each_task_takes_exactly_the_flags_the_table_gives_its_verb():
    assert sorted(ns.tasks) == sorted(settings.TASKS)
    for verb in settings.TASKS:
        body = ns.tasks[verb].body
        parameters = list(inspect.signature(body).parameters)[1:]  # after the context
        assert sorted(parameters) == sorted(setting.flag_name for setting in settings.flags_of(verb)), verb
        assert set(ns.tasks[verb].help) == set(parameters), verb


def test_defaults_and_per_host_settings_come_from_the_table():
    assert settings.DEFAULTS["port"] == 8000 and settings.DEFAULTS["concurrency"] == 10
    assert "follow" not in settings.DEFAULTS  # a flag only: no config key
    assert set(settings.PER_HOST) == {"project", "port", "addr", "python", "settings", "env", "noreload",
                                     "start_timeout", "stop_timeout", "lines", "agent_python", "state_dir",
                                     "ttl", "idle_ttl", "log_keep", "log_max", "port_range",
                                     "check", "manage_timeout", "requirements", "setup_timeout", "env_file", "processes",
                                     "expose", "host_template", "basic_auth", "caddy_admin", "older_than"}
    # Registered as CONFIGURED (numbers as text, for FABRIC_FABSERVE_*), which parses to DEFAULTS.
    assert ns.configuration()["fabserve"] == CONFIGURED
    parsed = lambda defaults: {name: settings.SETTING[name].parse(value) for name, value in defaults.items()
                               if value is not None}
    assert parsed(CONFIGURED) == parsed(settings.DEFAULTS)
    assert [name for name, value in CONFIGURED.items() if value is None] == \
        [name for name, value in settings.DEFAULTS.items() if value is None]


def test_the_request_holds_every_request_setting_and_nothing_else():
    req = settings.request("logs", merged({}, {"project": "/srv/site", "follow": True, "json": True}), [])
    assert set(req) == {"action"} | {setting.name for setting in settings.SETTINGS if setting.request}
    assert req["follow"] is True and req["lines"] == 50


def test_a_switch_left_off_does_not_override_the_config():
    values = merged({"noreload": True, "json": True}, {"noreload": False, "json": False})
    assert values["noreload"] is True and values["json"] is True


@pytest.mark.parametrize("value", [0, "0", -1, "x", None, "2.5"])
def test_concurrency_must_be_a_whole_number_of_at_least_one(value):
    config = Config(overrides={"fabserve": {"concurrency": value}})
    with pytest.raises(Exit) as caught:
        executor.concurrency(config)
    assert caught.value.code == 2
    assert caught.value.message == f"fabserve.concurrency must be a whole number of at least 1, not {value!r}"


def test_concurrency_accepts_numbers_and_defaults_to_ten():
    assert executor.concurrency(Config(overrides={"fabserve": {"concurrency": "3"}})) == 3
    assert executor.concurrency(Config(overrides={"fabserve": {}})) == 10


@pytest.mark.parametrize("value,on", [(True, True), ("1", True), ("yes", True), ("false", True),
                                      (False, False), ("0", False), ("", False), (None, False)])
def test_strict_host_keys_is_on_for_anything_but_zero_empty_or_false(value, on):
    assert setting(Config(overrides={"fabserve": {"strict_host_keys": value}}), "strict_host_keys") is on


def test_json_is_on_from_the_flag_or_the_config():
    off, on = Config(overrides={"fabserve": {}}), Config(overrides={"fabserve": {"json": True}})
    assert setting(off, "json", {"json": False}) is False
    assert setting(off, "json", {"json": True}) is True
    assert setting(on, "json", {"json": False}) is True


def env_request(config_env, variable, monkeypatch, flags=()):
    monkeypatch.setenv("FABRIC_FABSERVE_ENV", variable)
    config = Config(overrides={"fabserve": {"env": config_env}})
    return settings.request("start", host_values(config, {}, {"project": "/srv/site"}), list(flags))["env"]


def test_the_env_variable_adds_shell_split_pairs_over_the_config_and_under_the_flags(monkeypatch):
    # invoke itself reads no variable for a mapping; without this one it was silently ignored.
    env = env_request({"KEEP": "1", "A": "config"}, "A=variable 'B=two words' C=", monkeypatch, ["C=flag"])
    assert env == {"KEEP": "1", "A": "variable", "B": "two words", "C": "flag"}


@pytest.mark.parametrize("variable,message", [
    ("A=1 oops", "must be KEY=VALUE words, not 'oops'"),
    ("A='unclosed", "cannot be split into KEY=VALUE words (No closing quotation): \"A='unclosed\""),
    ("1A=x", "names an environment variable that is not valid: '1A'"),
])
def test_a_bad_env_variable_is_refused_naming_it(monkeypatch, variable, message):
    with pytest.raises(settings.UsageError) as caught:
        env_request({}, variable, monkeypatch)
    assert str(caught.value) == f"fabserve.env {message} (from FABRIC_FABSERVE_ENV)"


def test_a_bad_configured_env_is_refused_naming_the_config_not_the_variable(monkeypatch):
    with pytest.raises(settings.UsageError) as caught:
        env_request(["A=1"], "B=2", monkeypatch)
    assert str(caught.value).startswith("fabserve.env must be a mapping of variable names to values, not ['A=1']")
