"""fabserve.django.runserver on the multi-host bed (tests/bed/hosts.py): one play
over every host with forks 5, inventory vars (spelled as the bundled inventory
spells them, which Ansible reads without a warning) feeding the module's options,
and one host down; a play exposing two hosts' servers, each through its own Caddy."""

import contextlib
import re

import yaml

from bed.ansible import Ansible, save
from bed.caddy import (BY_HAND, HOST_SITE_PORT, SITE_TEXT, add_route_by_hand, allow_exposed_names, route_ids,
                       running_caddy, through)
from tasks import entrypoints, settings

PORT = 14810


def recap(stdout):
    """PLAY RECAP's counters per host."""
    return {found.group(1): dict(re.findall(r"(\w+)=(\d+)", found.group(2)))
            for found in re.finditer(r"^(\S+)\s+: (ok=.*)$", stdout, re.MULTILINE)}


def bundled_variable(setting):
    """The variable inventory/hosts.yml gives `setting` as, in its group `all`."""
    variables = yaml.safe_load(entrypoints.DEFAULT_INVENTORY.read_text())["all"]["vars"]
    return next(variable for variable in variables if settings.inventory_setting(variable) == setting)


def test_one_play_over_five_hosts_with_one_down(bed_hosts, target, make_project, tmp_path):
    site = make_project("site")
    hosts = {host.name: {"ansible_host": host.address, "ansible_user": host.user,
                         "ansible_ssh_private_key_file": str(host.key)} for host in bed_hosts}
    # The settings' variables spelled as the bundled inventory spells them.
    project, port = (bundled_variable(name) for name in ("project", "port"))
    ansible = Ansible(tmp_path / "ansible", hosts, group_vars={project: str(site), port: PORT})

    def play(state):
        return [{"hosts": "all", "gather_facts": False, "tasks": [
            {"fabserve.django.runserver": {"project": f"{{{{ {project} }}}}", "port": f"{{{{ {port} }}}}",
                                           "state": state},
             "register": "server"},
            save(["server"])]}]

    names = sorted(hosts)
    down = next(host for host in bed_hosts if host.name == names[2])
    down.stop_sshd()
    try:
        started = ansible.playbook(play("started"), "--forks", "5")
        assert started.returncode == 4, started  # 4: a host was unreachable
        counts = recap(started.stdout)
        assert counts[down.name]["unreachable"] == "1"
        assert sorted(started.results) == [name for name in names if name != down.name]
        for host in bed_hosts:
            if host is down:
                continue
            result = started.results[host.name]["server"]
            assert result["changed"] is True and result["state"] == "running", host.name
            assert result["project"] == str(site) and result["port"] == PORT
            assert host.http_status(PORT) == 200, host.name
            assert counts[host.name]["changed"] == "1" and counts[host.name]["failed"] == "0"
    finally:
        down.start_sshd()
    stopped = ansible.playbook(play("stopped"), "--forks", "5")
    assert stopped.returncode == 0, stopped
    for run in (started, stopped):  # a normal run says nothing about reserved names
        assert "reserved name" not in run.stderr + run.stdout, run
    for host in bed_hosts:
        assert stopped.results[host.name]["server"]["changed"] is (host is not down), host.name
        assert host.http_status(PORT) is None, host.name


def test_an_exposed_play_publishes_each_hosts_server_through_its_own_caddy(bed_hosts, make_project, tmp_path):
    """`expose: true` through the module on two hosts, each with a Caddy of its own:
    each host answers the name with its server, a second run changes nothing, and
    `state: stopped` withdraws both routes and leaves the one added by hand."""
    site = make_project("site")
    allow_exposed_names(site)
    exposing = sorted(bed_hosts, key=lambda host: host.name)[:2]
    hosts = {host.name: {"ansible_host": host.address, "ansible_user": host.user,
                         "ansible_ssh_private_key_file": str(host.key)} for host in exposing}
    ansible = Ansible(tmp_path / "ansible", hosts, group_vars={})
    public = f"ansible-{PORT}.preview.test"

    def play(state):
        options = {"project": str(site), "port": PORT, "state": state, "expose": True,
                   "host_template": "ansible-{port}.preview.test"}
        return [{"hosts": "all", "gather_facts": False, "tasks": [
            {"fabserve.django.runserver": options, "register": "server"}, save(["server"])]}]

    with contextlib.ExitStack() as caddies:
        for host in exposing:
            caddies.enter_context(running_caddy(tmp_path / f"caddy-{host.name}", HOST_SITE_PORT, host.netns_path))
            add_route_by_hand(host.netns_path)
        try:
            started = ansible.playbook(play("started"))
            assert started.returncode == 0, started
            for host in exposing:
                result = started.results[host.name]["server"]
                assert result["public_url"] == f"http://{public}:{HOST_SITE_PORT}/", result
                status, body = through(HOST_SITE_PORT, public, address=host.address)
                assert status == 200 and "django" in body.lower(), (host.name, status, body[:200])
            again = ansible.playbook(play("started"))
            assert again.returncode == 0 and not any(again.results[host.name]["server"]["changed"]
                                                     for host in exposing), again
        finally:
            stopped = ansible.playbook(play("stopped"))
        assert stopped.returncode == 0, stopped
        for host in exposing:
            assert route_ids(host.netns_path) == [BY_HAND, None]
            assert through(HOST_SITE_PORT, public, address=host.address) == (404, SITE_TEXT)
