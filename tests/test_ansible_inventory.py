"""The repo's inventory and docs/hosts.md's inventory example read the same in Ansible as
in fab: `ansible staging` names the hosts `fab -H staging` does, with the same vars,
and without a warning about reserved variable names."""

import json
import re
from pathlib import Path

import pytest

from bed.ansible import Ansible
from helpers import bed_outcome
from tasks.config import merged
from tasks.inventory import Inventory

REPO = Path(__file__).resolve().parent.parent


def documented_inventory() -> str:
    text = (REPO / "docs" / "hosts.md").read_text()
    section = text[text.index("## The inventory\n"):]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.parametrize("source", ["inventory/hosts.yml", "docs/hosts.md"])
def test_ansible_reads_the_inventory_with_fabs_hosts_and_vars(source, tmp_path):
    path = REPO / source if source != "docs/hosts.md" else tmp_path / "hosts.yml"
    if source == "docs/hosts.md":
        path.write_text(documented_inventory())
    with bed_outcome():
        ansible = Ansible(tmp_path / "ansible", {})
    listed = ansible.run("ansible-inventory", ["-i", str(path), "--list"])
    assert listed.returncode == 0, listed.stderr
    # The settings are spelled fabserve_NAME: Ansible warns about a bare `port` (a
    # name it reserves) and says nothing about these.
    assert re.findall(r"^\[WARNING\]: (.*)$", listed.stderr, re.MULTILINE) == [], listed.stderr
    inventory = json.loads(listed.stdout)
    assert sorted(inventory["staging"]["hosts"]) == ["web1", "web2"]
    hostvars = inventory["_meta"]["hostvars"]
    assert hostvars["web2"]["fabserve_port"] == 8001
    assert hostvars["web1"]["fabserve_project"] == hostvars["web2"]["fabserve_project"]
    assert hostvars["web1"]["ansible_user"] == "deploy"
    # fab reads the same settings from the same file.
    fab_inventory = Inventory.load(path)
    for name in ("web1", "web2"):
        values = merged({}, {}, fab_inventory.host(name).settings)
        assert values["port"] == hostvars[name]["fabserve_port"], name
        assert values["project"] == hostvars[name]["fabserve_project"], name
    hosts = ansible.run("ansible", ["staging", "-i", str(path), "--list-hosts"])
    assert hosts.returncode == 0 and hosts.stdout.split()[-2:] == ["web1", "web2"]
    assert "[WARNING]" not in hosts.stderr, hosts.stderr
