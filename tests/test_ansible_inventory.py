"""The repo's inventory and README's inventory example read the same in Ansible as
in fab: `ansible staging` names the hosts `fab -H staging` does, with the same vars."""

import json
import re
from pathlib import Path

import pytest

from bed.ansible import Ansible
from helpers import bed_outcome

REPO = Path(__file__).resolve().parent.parent


def readme_inventory() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Many hosts, inventory groups"):]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.parametrize("source", ["inventory/hosts.yml", "README"])
def test_ansible_reads_the_inventory_with_fabs_hosts_and_vars(source, tmp_path):
    path = REPO / source if source != "README" else tmp_path / "hosts.yml"
    if source == "README":
        path.write_text(readme_inventory())
    with bed_outcome():
        ansible = Ansible(tmp_path / "ansible", {})
    listed = ansible.run("ansible-inventory", ["-i", str(path), "--list"])
    assert listed.returncode == 0, listed.stderr
    # `port` is also a play keyword: Ansible warns about the variable, and connects
    # with ansible_port all the same (README, "From Ansible"). Nothing else is said.
    warnings = re.findall(r"^\[WARNING\]: (.*)$", listed.stderr, re.MULTILINE)
    assert set(warnings) == {"Found variable using reserved name 'port'."}, listed.stderr
    inventory = json.loads(listed.stdout)
    assert sorted(inventory["staging"]["hosts"]) == ["web1", "web2"]
    hostvars = inventory["_meta"]["hostvars"]
    assert hostvars["web2"]["port"] == 8001 and hostvars["web1"]["project"] == hostvars["web2"]["project"]
    assert hostvars["web1"]["ansible_user"] == "deploy"
    hosts = ansible.run("ansible", ["staging", "-i", str(path), "--list-hosts"])
    assert hosts.returncode == 0 and hosts.stdout.split()[-2:] == ["web1", "web2"]
