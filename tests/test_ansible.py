"""fabserve.django.runserver through real ansible-core, over the real sshd as the
test user: playbook and ad-hoc runs, check mode (also with port=auto), diff mode,
every result field in every state, status failing when asked, restarted's changed,
the fallback search, a broken project, cross-tool with fab, ansible-doc, the
module's raw stdout, and the collection built with ansible-galaxy."""

import ast
import json
import os
import re
import signal
import socket
import tarfile
import time

from bed.ansible import save
from helpers import alive, free_port, group_members, http_status, port_listening, wait_for, where

MODULE = "fabserve.django.runserver"


def args(project, port, state, *extra):
    return " ".join([f"project={project}", f"port={port}", f"state={state}", *extra])


def assert_gone(result, port):
    assert result["pids"] and not any(alive(pid) for pid in result["pids"]), result
    assert group_members(result["pid"]) == []
    assert not port_listening(port)


def test_playbook_start_is_idempotent_check_mode_acts_on_nothing_and_stop_leaves_nothing(ansible, site, fab,
                                                                                         target):
    port = 14801
    checked = ansible.module(target.alias, args(site, port, "started"), "--check")
    assert checked.returncode == 0, checked
    result = checked.results[target.alias]
    assert result["changed"] is True and result["state"] == "stopped" and result["pids"] == []
    assert not port_listening(port) and not os.path.exists(result["pidfile"])

    task = {MODULE: {"project": str(site), "port": port, "state": "started", "env": {"DJANGO_DEBUG": "1"},
                     "timeout": 60}}
    play = {"hosts": "all", "gather_facts": False, "tasks": [
        {**task, "register": "first"}, {**task, "register": "second"}, save(["first", "second"])]}
    played = ansible.playbook([play])
    assert played.returncode == 0, played
    first, second = played.results[target.alias]["first"], played.results[target.alias]["second"]
    assert first["changed"] is True and first["state"] == "running" and first["msg"].startswith("started on")
    assert second["changed"] is False and second["pid"] == first["pid"]
    assert http_status(first["url"]) == 200
    environ = open(f"/proc/{first['pid']}/environ").read().split("\0")
    assert "DJANGO_DEBUG=1" in environ
    # Nothing of the module's own run reaches the server (AnsiballZ's payload is gone once it exits).
    assert not [entry for entry in environ if entry.startswith(("PYTHONPATH=", "ANSIBLE_MODULE"))]

    # fab finds the very server, through the same pidfile.
    status = fab("status", *where(site, port), "--json")
    assert status.returncode == 0 and status.json["managed"] is True and status.json["pid"] == first["pid"]

    still = ansible.module(target.alias, args(site, port, "stopped"), "--check")
    assert still.returncode == 0 and still.results[target.alias]["changed"] is True
    assert http_status(first["url"]) == 200

    stopped = ansible.module(target.alias, args(site, port, "stopped"))
    assert stopped.returncode == 0, stopped
    result = stopped.results[target.alias]
    assert result["changed"] is True and sorted(result["pids"]) == sorted(first["pids"])
    assert_gone(first, port)
    again = ansible.module(target.alias, args(site, port, "stopped"))
    assert again.returncode == 0 and again.results[target.alias]["changed"] is False
    status = ansible.module(target.alias, args(site, port, "status"))
    assert status.returncode == 0 and status.results[target.alias]["state"] == "stopped"
    assert status.results[target.alias]["changed"] is False


def test_fab_start_then_module_status_and_stop(ansible, site, fab, target):
    port = 14802
    started = fab("start", *where(site, port), "--json")
    assert started.returncode == 0, started.stderr
    status = ansible.module(target.alias, args(site, port, "status"))
    result = status.results[target.alias]
    assert status.returncode == 0 and result["changed"] is False
    assert result["state"] == "running" and result["managed"] is True and result["pid"] == started.json["pid"]
    stopped = ansible.module(target.alias, args(site, port, "stopped"))
    assert stopped.returncode == 0 and stopped.results[target.alias]["changed"] is True
    # Every declared field, whatever the state: null where it does not apply.
    assert stopped.results[target.alias]["http_status"] is None and result["killed"] is None
    assert_gone(started.json, port)
    assert fab("status", *where(site, port)).returncode == 3


def test_port_auto_chooses_from_the_range_and_a_portless_stop_finds_the_instance(ansible, site, target):
    low = 14810
    module_args = f"project={site} port=auto port_range={low}-{low + 9} state=started"
    with socket.create_server(("127.0.0.1", low)):  # the range's first port is taken
        chosen = ansible.module(target.alias, module_args)
        assert chosen.returncode == 0, chosen
        result = chosen.results[target.alias]
        assert result["changed"] is True and result["state"] == "running", result
        assert low < result["port"] <= low + 9 and result["url"] == f"http://127.0.0.1:{result['port']}/"
        assert http_status(result["url"]) == 200
    again = ansible.module(target.alias, module_args)  # the project runs: that instance, nothing started
    assert again.returncode == 0 and again.results[target.alias]["changed"] is False, again
    assert again.results[target.alias]["port"] == result["port"]
    stopped = ansible.module(target.alias, f"project={site} state=stopped")  # no port: its one instance
    assert stopped.returncode == 0 and stopped.results[target.alias]["changed"] is True, stopped
    assert stopped.results[target.alias]["port"] == result["port"]
    assert_gone(result, result["port"])


def test_the_fallback_finds_and_stops_a_hand_started_runserver(ansible, site, spawn_as_user, target):
    port = 14803
    spawned = spawn_as_user([str(site / ".venv" / "bin" / "python"), "manage.py", "runserver", str(port)], cwd=site)
    assert wait_for(lambda: port_listening(port), timeout=30)
    stopped = ansible.module(target.alias, args(site, port, "stopped"))
    assert stopped.returncode == 0, stopped
    result = stopped.results[target.alias]
    assert result["changed"] is True and result["managed"] is False and result["pids"]
    assert wait_for(lambda: not any(alive(pid) for pid in result["pids"]))
    assert not port_listening(port)
    assert spawned.wait(timeout=10) is not None


def test_a_broken_project_fails_with_the_log_tail_and_leaves_nothing(ansible, site, target):
    urls = site / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + "\ndef (\n")
    port = 14804
    failed = ansible.module(target.alias, args(site, port, "started", "timeout=4"))
    assert failed.returncode == 2, failed
    result = failed.results[target.alias]
    assert failed.statuses[target.alias] == "FAILED" and result["changed"] is False, str(failed)
    assert result["msg"].startswith("start failed: nothing answered on port 14804")
    assert "\n" not in result["msg"]
    assert any("SyntaxError" in line for line in result["log_tail"])
    assert not os.path.exists(result["pidfile"]) and not port_listening(port)


def test_bad_values_fail_with_the_settings_own_message(ansible, site, target):
    failed = ansible.module(target.alias, args(site, 70000, "status"))
    assert failed.returncode == 2
    assert failed.results[target.alias]["msg"] == "port must be a number from 1 to 65535, not '70000'"  # key=value text, as fab's --port is
    env = ansible.module(target.alias, f"project={site} state=status env='{{\"1BAD\": \"x\"}}'")
    assert env.results[target.alias]["msg"] == "env names an environment variable that is not valid: '1BAD'"
    missing = ansible.module(target.alias, args(site / "gone", 14806, "started"), "--check")
    assert missing.statuses[target.alias] == "FAILED"
    assert missing.results[target.alias]["msg"] == f"start failed: project directory {site}/gone does not exist"


def test_the_module_prints_exactly_one_json_object_and_a_started_server_keeps_no_pipe(ansible, site, target):
    port = 14805
    # -vvv shows each command's raw (exit, stdout, stderr); with pipelining, the
    # module's own stdout is the one command's. The run ending at all shows the
    # detached server holds none of the session's pipes.
    raw = ansible.module(target.alias, args(site, port, "started"), "-vvv", env={"ANSIBLE_PIPELINING": "1"})
    assert raw.returncode == 0, raw
    outputs = [ast.literal_eval(match.group(1)) for match in
               re.finditer(r"^<[^>]+> (\(0, b'.*', b'.*'\))$", raw.stdout, re.MULTILINE)]
    module_out = [stdout for _, stdout, _ in outputs if b'"invocation"' in stdout]
    assert len(module_out) == 1
    decoder = json.JSONDecoder()
    text = module_out[0].decode().strip()
    parsed, end = decoder.raw_decode(text)
    assert end == len(text) and parsed["changed"] is True and parsed["state"] == "running"
    stopped = ansible.module(target.alias, args(site, port, "stopped"))
    assert stopped.returncode == 0 and stopped.results[target.alias]["changed"] is True
    assert not port_listening(port)


def test_ansible_doc_renders_the_module_without_warnings(ansible):
    shown = ansible.run("ansible-doc", [MODULE])
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == "" and "WARNING" not in shown.stdout
    for option in ("state", "project", "port", "env", "timeout", "start_timeout", "stop_timeout"):
        assert re.search(rf"^[-\s]*{option}\s", shown.stdout, re.MULTILINE), option
    for section in ("EXAMPLES:", "RETURN VALUES:"):
        assert section in shown.stdout


def test_the_built_collection_holds_the_agent_itself_installs_and_runs(ansible, site, fab, target):
    from tasks import agent
    from tools import module_spec

    built = ansible.run("ansible-galaxy", ["collection", "build", str(module_spec.COLLECTION),
                                           "--output-path", str(ansible.work / "dist"), "--force"])
    assert built.returncode == 0, built.stderr
    tarball = next((ansible.work / "dist").glob("fabserve-django-*.tar.gz"))
    with tarfile.open(tarball) as archive:
        shared = [("settings.py", "tasks/settings.py")] + [(f"agent/{name}.py", f"tasks/agent/{name}.py")
                                                           for name in agent.MODULES]
        for name, source in shared:
            member = archive.getmember(f"plugins/module_utils/{name}")
            assert member.isfile()
            assert archive.extractfile(member).read() == (module_spec.COLLECTION.parents[3] / source).read_bytes()
        # The client's config layering (tasks/config.py) is not shipped.
        utils = {name[len("plugins/module_utils/"):] for name in archive.getnames()
                 if name.startswith("plugins/module_utils/")}
        assert utils == {"agent", "spec.py", *(name for name, _ in shared)}
    installed = ansible.run("ansible-galaxy", ["collection", "install", "--force", str(tarball), "-p",
                                               str(ansible.work / "installed")])
    assert installed.returncode == 0, installed.stderr
    doc = ansible.run("ansible-doc", [MODULE], env={"ANSIBLE_COLLECTIONS_PATH": str(ansible.work / "installed")})
    assert doc.returncode == 0 and str(ansible.work / "installed") in doc.stdout
    # The installed copy runs: AnsiballZ ships its agent package, whose TTL watchdog
    # is fed the package's code as AnsiballZ loaded it, and ends the server on time.
    # (A start under load may take seconds of the TTL; more than 6 s would only slow the test.)
    port = 14812
    started = ansible.module(target.alias, args(site, port, "started", "ttl=6s"),
                             env={"ANSIBLE_COLLECTIONS_PATH": str(ansible.work / "installed")})
    assert started.returncode == 0, started
    result = started.results[target.alias]
    assert result["state"] == "running" and 0 < result["expires_in"] <= 6, result
    assert wait_for(lambda: not any(alive(pid) for pid in result["pids"]), timeout=30)
    status = fab("status", *where(site, port), "--json")
    assert status.returncode == 3 and "expired" in status.json["message"], status.json
    assert not port_listening(port)


def test_every_state_returns_every_field_and_status_fails_when_asked(ansible, site, target):
    from tools import module_spec

    port = 14807
    task = {"project": str(site), "port": port}
    play = {"hosts": "all", "gather_facts": False, "tasks": [
        {MODULE: {**task, "state": "status", "fail_if_not_running": True}, "register": "absent",
         "ignore_errors": True},
        {MODULE: {**task, "state": "status"}, "register": "quiet"},
        {MODULE: {**task, "state": "started"}, "register": "started"},
        {MODULE: {**task, "state": "status", "fail_if_not_running": True}, "register": "running"},
        {MODULE: {**task, "state": "stopped"}, "register": "stopped"},
        # Fields of other states, read as a play would: an undefined one fails the task.
        {"ansible.builtin.debug": {"msg": "{{ stopped.http_status }} {{ started.killed }} {{ running.stopped_pids }}"}},
        save(["absent", "quiet", "started", "running", "stopped"])]}
    played = ansible.playbook([play])
    assert played.returncode == 0, played
    results = played.results[target.alias]
    fields = set(module_spec.return_fields()) - {"changed"}
    for name, result in results.items():
        assert fields <= set(result), (name, sorted(fields - set(result)))
    absent = results["absent"]
    assert absent["failed"] is True and absent["msg"] == "status failed: not running", absent
    assert absent["state"] == "stopped" and absent["changed"] is False
    assert results["quiet"].get("failed") is False and results["quiet"]["state"] == "stopped"
    assert results["running"].get("failed") is False and results["running"]["state"] == "running"
    assert results["stopped"]["http_status"] is None and results["started"]["killed"] is None
    assert results["stopped"]["changed"] is True and not port_listening(port)
    refused = ansible.module(target.alias, args(site, port, "started", "fail_if_not_running=true"))
    assert refused.statuses[target.alias] == "FAILED", refused
    assert refused.results[target.alias]["msg"] == "fail_if_not_running is for state=status only, not state=started"
    assert not port_listening(port)


def test_restarted_is_changed_as_the_service_module_says(ansible, site, target):
    port = 14808
    # A server that is not running is started, changed (ansible.builtin.service starts a stopped service).
    first = ansible.module(target.alias, args(site, port, "restarted"))
    assert first.returncode == 0 and first.statuses[target.alias] == "CHANGED", first
    started = first.results[target.alias]
    assert started["state"] == "running" and started["stopped_pids"] == []
    urls = site / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + "\ndef (\n")
    # The old server is stopped, the new one fails: the task failed, and it changed the host.
    broken = ansible.module(target.alias, args(site, port, "restarted", "timeout=4"))
    assert broken.statuses[target.alias] == "FAILED", broken
    result = broken.results[target.alias]
    # (the autoreloader replaced its child when urls.py changed: the group leader is the same)
    assert result["changed"] is True and started["pid"] in result["stopped_pids"], result
    assert_gone(started, port)
    # Nothing runs now and the start fails again: nothing changed.
    again = ansible.module(target.alias, args(site, port, "restarted", "timeout=4"))
    assert again.statuses[target.alias] == "FAILED", again
    assert again.results[target.alias]["changed"] is False and again.results[target.alias]["stopped_pids"] == []


def test_diff_mode_shows_state_port_and_pids_before_and_after(ansible, site, target):
    port = 14809
    task = {"project": str(site), "port": port}
    play = {"hosts": "all", "gather_facts": False, "tasks": [
        {MODULE: {**task, "state": "started"}, "check_mode": True, "register": "would_start"},
        {MODULE: {**task, "state": "started"}, "register": "started"},
        {MODULE: {**task, "state": "started"}, "register": "again"},
        {MODULE: {**task, "state": "stopped"}, "check_mode": True, "register": "would_stop"},
        {MODULE: {**task, "state": "stopped"}, "register": "stopped"},
        save(["would_start", "started", "again", "would_stop", "stopped"])]}
    played = ansible.playbook([play], "--diff")
    assert played.returncode == 0, played
    results = played.results[target.alias]
    pids = results["started"]["pids"]
    assert pids and results["stopped"]["changed"] is True
    stopped, running = {"state": "stopped", "port": port, "pids": []}, {"state": "running", "port": port, "pids": pids}
    assert results["would_start"]["diff"] == {"before": stopped, "after": {**running, "pids": None}}
    assert results["started"]["diff"] == {"before": stopped, "after": running}
    assert results["again"]["diff"] == {"before": running, "after": running}
    assert results["would_stop"]["diff"] == {"before": running, "after": stopped}
    assert results["stopped"]["diff"] == {"before": running, "after": stopped}
    # Ansible prints it as a diff of the two.
    assert re.search(r'^-\s+"state": "stopped"$', played.stdout, re.MULTILINE), played.stdout
    assert re.search(r'^\+\s+"state": "running"$', played.stdout, re.MULTILINE), played.stdout
    assert not port_listening(port)


def test_check_mode_with_port_auto_claims_no_port_the_real_run_would_not_take(ansible, site, fab, target):
    low = 14820
    port_range = f"port_range={low}-{low + 9}"
    # An earlier instance of the project on the range's first port, stopped: its log stays.
    earlier = ansible.module(target.alias, args(site, low, "started"))
    assert earlier.returncode == 0, earlier
    assert ansible.module(target.alias, args(site, low, "stopped")).returncode == 0
    with socket.create_server(("127.0.0.1", low)):  # now another user's process holds that port
        checked = ansible.module(target.alias, args(site, "auto", "started", port_range), "--check")
        assert checked.returncode == 0, checked
        predicted = checked.results[target.alias]
        real = ansible.module(target.alias, args(site, "auto", "started", port_range))
        assert real.returncode == 0, real
        taken = real.results[target.alias]
        assert taken["changed"] is True and low < taken["port"] <= low + 9, taken
        assert http_status(taken["url"]) == 200
    assert predicted["changed"] is True and predicted["port"] in (None, taken["port"]), predicted
    assert predicted["port"] is None and predicted["url"] is None
    assert predicted["msg"] == f"would be started on a free port from {low}-{low + 9} (port_range), chosen at start"
    stopped = ansible.module(target.alias, args(site, taken["port"], "stopped"))
    assert stopped.returncode == 0 and stopped.results[target.alias]["changed"] is True
    assert_gone(taken, taken["port"])


def test_check_mode_of_a_start_without_a_port_asks_about_the_port_the_start_takes(ansible, site, target):
    # start's port given nowhere is 8000, whichever other instance of the project runs;
    # check mode asks about that one too (nothing here binds 8000: check mode starts nothing).
    port = 14830
    other = ansible.module(target.alias, args(site, port, "started"))
    assert other.returncode == 0, other
    checked = ansible.module(target.alias, f"project={site} state=started", "--check")
    assert checked.returncode == 0, checked
    result = checked.results[target.alias]
    assert result["changed"] is True and result["port"] == 8000 and result["msg"] == "would be started", result
    stopped = ansible.module(target.alias, args(site, port, "stopped"))
    assert stopped.returncode == 0 and stopped.results[target.alias]["changed"] is True


def test_check_mode_ends_no_server_past_its_ttl_and_says_a_start_would_change_it(ansible, site, fab, target):
    port = free_port()
    assert fab("start", *where(site, port)).returncode == 0
    given = ansible.module(target.alias, args(site, port, "started", "ttl=1h"), "--check")
    assert given.returncode == 0 and given.results[target.alias]["changed"] is True  # the ttl would be applied
    assert fab("status", *where(site, port), "--json").json["expires_at"] is None
    assert fab("stop", *where(site, port)).returncode == 0 and not port_listening(port)

    data = fab("start", *where(site, port), "--ttl", "3s", "--json").json
    meta = json.loads(open(os.path.join(os.path.dirname(data["pidfile"]), "server.json")).read())
    os.kill(meta["watchdog"]["pid"], signal.SIGKILL)
    assert wait_for(lambda: not alive(meta["watchdog"]["pid"]), timeout=10)
    time.sleep(data["expires_in"] + 1.5)
    for state in ("started", "stopped"):
        checked = ansible.module(target.alias, args(site, port, state), "--check")
        assert checked.returncode == 0 and checked.results[target.alias]["changed"] is True, checked
    assert all(alive(pid) for pid in data["pids"]) and port_listening(port)  # check mode ended nothing
    stopped = ansible.module(target.alias, args(site, port, "stopped"))
    assert stopped.returncode == 0 and stopped.results[target.alias]["changed"] is True, stopped
    assert stopped.results[target.alias]["msg"].startswith(f"expired at {data['expires_at']} (ttl)")
    assert_gone(data, port)
