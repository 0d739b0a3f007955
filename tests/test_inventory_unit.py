"""Inventory parsing, group expansion and variable precedence, on inventory files."""

import re

import pytest
from fabric import Config

from tasks import entrypoints, executor, settings
from tasks.config import merged
from tasks.inventory import Inventory, InventoryError, expand

INVENTORY = """
all:
  vars:
    port: 8000
    project: /srv/all
    ansible_user: deploy
  hosts:
    solo:
  children:
    staging:
      vars:
        project: /srv/staging
        addr: 0.0.0.0
      hosts:
        web1:
          ansible_host: 10.0.0.1
        web2:
          ansible_host: 10.0.0.2
          ansible_port: 2222
          project: /srv/web2
      children:
        canary:
          vars:
            project: /srv/canary
          hosts:
            web2:
              port: 8002
    db:
      hosts:
        pg1:
          ansible_ssh_private_key_file: ~/.ssh/pg
          ansible_user: postgres
"""


@pytest.fixture
def inv():
    return Inventory.parse(INVENTORY, "hosts.yml")


def names(hosts):
    return [host.name for host in hosts]


def test_groups_expand_to_their_members_and_all_to_every_host(inv):
    assert names(expand(["staging"], inv, [])) == ["web1", "web2"]
    assert names(expand(["canary"], inv, [])) == ["web2"]
    assert sorted(names(expand(["all"], inv, []))) == ["pg1", "solo", "web1", "web2"]


def test_mixed_names_keep_order_and_drop_duplicates(inv):
    hosts = expand(["web2", "staging", "user@box:2200", "db", "web1"], inv, [])
    assert names(hosts) == ["web2", "web1", "user@box:2200", "pg1"]
    assert hosts[2].connect == {"host": "user@box:2200"} and hosts[2].settings == {}


def test_precedence_host_over_child_group_over_parent_over_all(inv):
    web1, web2 = expand(["web1", "web2"], inv, [])
    assert web1.settings == {"port": 8000, "project": "/srv/staging", "addr": "0.0.0.0"}
    # web2 is in staging and in its child canary: canary's vars beat staging's,
    # and the host's own vars (from either listing) beat both.
    assert web2.settings == {"port": 8002, "project": "/srv/web2", "addr": "0.0.0.0"}


def test_flags_beat_host_vars_beat_config(inv):
    web2 = expand(["web2"], inv, [])[0]
    config = {"project": "/from/config", "port": 9999, "stop_timeout": 3}
    values = merged({**config, **web2.settings}, {"port": "7000"})
    assert values["port"] == "7000" and values["project"] == "/srv/web2" and values["stop_timeout"] == 3


PREFIXED = """
all:
  vars:
    fabserve_port: 8000
    port: 7000
    project: /srv/bare
  children:
    staging:
      vars:
        fabserve_project: /srv/staging
      hosts:
        web1:
          port: 8001
        web2:
          fabserve_port: 8002
          fabserve_ttl: 1h
"""


def test_a_setting_may_be_given_prefixed_and_the_prefixed_variable_wins_wherever_it_is_set():
    web1, web2 = expand(["web1", "web2"], Inventory.parse(PREFIXED, "hosts.yml"), [])
    # As a playbook reads `{{ fabserve_port | default(port) }}`: all's fabserve_port
    # beats web1's own bare port (two variables to Ansible), each kept as spelled.
    assert web1.settings == {"fabserve_project": "/srv/staging", "fabserve_port": 8000}
    assert web2.settings == {"fabserve_project": "/srv/staging", "fabserve_port": 8002, "fabserve_ttl": "1h"}
    values = merged({}, {}, web2.settings)
    assert (values["port"], values["project"], values["ttl"]) == (8002, "/srv/staging", "1h")
    # A bad value is named as the inventory spells it.
    bad = merged({}, {}, {"fabserve_port": 70000})
    with pytest.raises(settings.UsageError, match=r"^fabserve_port must be a number .* \(from the inventory\)$"):
        settings.checked(bad, "port")
    # Anything else with the prefix is not a setting.
    assert settings.inventory_setting("fabserve_json") is None and settings.inventory_setting("fabserve_") is None


def test_every_per_host_setting_has_a_prefixed_spelling_that_ansible_does_not_reserve(monkeypatch, tmp_path):
    # Ansible's configuration, read at import, makes its local temp directory in
    # ANSIBLE_HOME: a user without a home of their own (nobody) has none to make it in.
    monkeypatch.setenv("ANSIBLE_HOME", str(tmp_path))
    from ansible.vars.reserved import get_reserved_names

    reserved = get_reserved_names()
    assert "port" in reserved  # why the prefix exists
    for name in settings.PER_HOST:
        assert settings.inventory_setting(settings.INVENTORY_PREFIX + name) == name
        assert settings.INVENTORY_PREFIX + name not in reserved


def test_connection_variables_become_connection_arguments(inv, monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    web2, pg1, solo = expand(["web2", "pg1", "solo"], inv, [])
    assert web2.connect == {"host": "10.0.0.2", "user": "deploy", "port": 2222}
    assert pg1.connect == {"host": "pg1", "user": "postgres",
                           "connect_kwargs": {"key_filename": ["/home/me/.ssh/pg"]}}
    assert solo.connect == {"host": "solo", "user": "deploy"}


def test_unknown_bare_names_are_errors_but_real_host_forms_pass(inv):
    with pytest.raises(InventoryError, match="unknown host or group 'stagin' in hosts.yml"):
        expand(["stagin"], inv, [])
    for name in ("box.example.com", "10.1.2.3", "me@box", "box:22", "localhost"):
        assert names(expand([name], inv, [])) == [name]
    assert names(expand(["myalias"], inv, ["myalias", "*"])) == ["myalias"]
    assert names(expand(["plain.host"], None, [])) == ["plain.host"]
    with pytest.raises(InventoryError, match="no inventory file"):
        expand(["web1"], None, [])


@pytest.mark.parametrize("text,message", [
    ("all:\n  hosts:\n    a: 1\n", "vars of host 'a' must be a mapping"),
    ("all:\n  hosts: [a, b]\n", "hosts of group 'all' must be a mapping"),
    ("all:\n  host:\n    a:\n", "group 'all' has unknown keys ['host']"),
    ("- a\n- b\n", "the top level must map group names to groups"),
    ("all:\n  hosts:\n    a:\n      ansible_port: ssh\n", "ansible_port must be a number"),
])
def test_malformed_inventories_say_what_is_wrong(text, message):
    with pytest.raises(InventoryError, match=re.escape(message)):
        expand(["all"], Inventory.parse(text, "bad.yml"), [])


def test_yaml_errors_name_the_file_and_line():
    with pytest.raises(InventoryError, match=r"^bad.yml:3: invalid YAML: mapping values are not allowed here$"):
        Inventory.parse("all:\n  hosts:\n    a: b: c\n", "bad.yml")


def test_cycles_are_refused():
    text = "all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n"
    with pytest.raises(InventoryError, match="cycle"):
        Inventory.parse(text, "loop.yml")


def test_the_shipped_example_inventory_parses():
    inv = Inventory.load(entrypoints.DEFAULT_INVENTORY)
    assert names(expand(["staging"], inv, [])) == ["web1", "web2"]


def test_the_run_exit_code_combines_hosts():
    assert executor.combined([0, 0]) == 0
    assert executor.combined([0, 3]) == 3
    assert executor.combined([3, 1, 0]) == 1
    assert executor.combined([1, 2]) == 2


def test_executor_reads_the_configured_inventory(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text("all:\n  hosts:\n    h1:\n      ansible_host: 10.9.9.9\n      port: 8123\n")
    config = Config(overrides={"fabserve": {"inventory": str(path)}})
    runner = executor.ConcurrentExecutor(collection=None, config=config)
    [kwargs] = runner.normalize_hosts(["h1"])
    assert kwargs == {"host": "10.9.9.9", executor.NAME: "h1", executor.SETTINGS: {"port": 8123}}
