"""fabserve.django.runserver with companion processes (a Procfile, or the `processes`
option), through real ansible-core over the real sshd as the test user: idempotent
per process, check mode on a degraded instance, `only`, `env_file`, diff mode, fab
seeing what the module started, and decoys with a companion's command line (the test
user's and another user's) surviving."""

import os
import signal

from bed.ansible import save
from bed.procfiles import PYTHON
from bed.procs import cmdline
from helpers import alive, group_members, port_listening, wait_for, where

MODULE = "fabserve.django.runserver"
# Prints what fabserve gave it, then waits to be stopped.
SHOW_ENV = ("import os, time\n"
            "print('PORT', os.environ['PORT'], 'GREETING', os.environ.get('GREETING'), flush=True)\n"
            "while True:\n    time.sleep(1)\n")


def write_as_user(target, path, text):
    path.write_text(text)
    os.chown(path, target.uid, -1)


def args(project, port, state, *extra):
    return " ".join([f"project={project}", f"port={port}", f"state={state}", *extra])


def by_name(result):
    return {process["name"]: process for process in result["processes"]}


def all_pids(result):
    return [pid for process in result["processes"] for pid in process["pids"] or ()]


def test_the_module_starts_each_stopped_process_once_and_stops_them_all_but_never_a_decoy(
        ansible, make_procfile_project, target, fab, spawn_as_user, spawn_as_other):
    site = make_procfile_project()  # worker and watch; web: fabserve's runserver
    port = 14840
    # The worker's command line, in the project, started by hand by the test user and by another user
    # (runuser leads each group; the python it runs is the decoy).
    decoys = [spawn([PYTHON, "worker.py"], cwd=site) for spawn in (spawn_as_user, spawn_as_other)]
    assert wait_for(lambda: all(any(cmdline(pid) == f"{PYTHON} worker.py " for pid in group_members(decoy.pid))
                                for decoy in decoys), timeout=20)
    bystanders = [pid for decoy in decoys for pid in group_members(decoy.pid)]

    # `only` naming a process the Procfile lacks fails the task, in check mode as in the real run.
    for extra in (("--check",), ()):
        refused = ansible.module(target.alias, args(site, port, "started", "only=worker,nope"), *extra)
        assert refused.statuses[target.alias] == "FAILED", refused
        assert refused.results[target.alias]["msg"] == \
            "start failed: no process nope in this instance: it has web, worker, watch", refused

    started = ansible.module(target.alias, args(site, port, "started"))
    assert started.returncode == 0, started
    result = started.results[target.alias]
    assert result["changed"] is True and result["state"] == "running", result
    processes = by_name(result)
    assert sorted(processes) == ["watch", "web", "worker"]
    assert {process["state"] for process in processes.values()} == {"running"}
    assert processes["worker"]["port"] == port + 100 and processes["watch"]["port"] == port + 200

    # fab sees the very processes the module started.
    status = fab("status", *where(site, port), "--json")
    assert status.returncode == 0 and status.json["state"] == "running", status.json
    assert {process["name"]: process["pids"] for process in status.json["processes"]} == \
        {name: process["pids"] for name, process in processes.items()}

    # The worker killed by hand: the instance is degraded, and check mode says a start would change it.
    worker = processes["worker"]
    os.killpg(worker["pid"], signal.SIGKILL)
    assert wait_for(lambda: fab("status", *where(site, port), "--json").json["state"] == "degraded")
    checked = ansible.module(target.alias, args(site, port, "started"), "--check")
    assert checked.returncode == 0, checked
    predicted = checked.results[target.alias]
    assert predicted["changed"] is True and predicted["msg"] == "would be started: worker", predicted
    assert by_name(predicted)["worker"]["state"] == "exited"
    assert fab("status", *where(site, port), "--json").json["state"] == "degraded"  # check mode started nothing
    status = ansible.module(target.alias, args(site, port, "status"))
    assert status.statuses[target.alias] == "SUCCESS" and status.results[target.alias]["state"] == "degraded", status
    failing = ansible.module(target.alias, args(site, port, "status", "fail_if_not_running=true"))
    assert failing.statuses[target.alias] == "FAILED", failing
    assert failing.results[target.alias]["msg"].startswith("status failed: worker exited"), failing

    restarted = ansible.module(target.alias, args(site, port, "started"))
    assert restarted.returncode == 0 and restarted.results[target.alias]["changed"] is True, restarted
    again = by_name(restarted.results[target.alias])
    assert again["worker"]["state"] == "running" and again["worker"]["pid"] != worker["pid"]
    assert again["web"]["pids"] == processes["web"]["pids"] and again["watch"]["pids"] == processes["watch"]["pids"]
    idle = ansible.module(target.alias, args(site, port, "started"))
    assert idle.returncode == 0 and idle.results[target.alias]["changed"] is False, idle
    unchanged = ansible.module(target.alias, args(site, port, "started"), "--check")
    assert unchanged.returncode == 0 and unchanged.results[target.alias]["changed"] is False, unchanged

    stopped = ansible.module(target.alias, args(site, port, "stopped", "timeout=5"))
    assert stopped.returncode == 0, stopped
    result = stopped.results[target.alias]
    assert result["changed"] is True
    ended = all_pids(restarted.results[target.alias])
    assert set(ended) <= set(result["pids"])
    assert wait_for(lambda: not any(alive(pid) for pid in ended))
    assert all(group_members(process["pid"]) == [] for process in again.values())
    assert not port_listening(port)
    assert [pid for pid in bystanders if not alive(pid)] == []
    gone = ansible.module(target.alias, args(site, port, "stopped"))
    assert gone.returncode == 0 and gone.results[target.alias]["changed"] is False, gone


def test_processes_env_file_and_only_through_a_playbook_with_diff(ansible, make_procfile_project, target, fab):
    site = make_procfile_project()  # the option's table wins over this Procfile
    write_as_user(target, site / "show_env.py", SHOW_ENV)
    write_as_user(target, site / ".env", "# from the env file\nexport GREETING='hello there'\n")
    port = 14850
    rerun = {"project": str(site), "port": port}
    task = {**rerun, "env_file": ".env",
            "processes": {"first": f"{PYTHON} show_env.py", "second": f"{PYTHON} show_env.py"}}
    play = {"hosts": "all", "gather_facts": False, "tasks": [
        {MODULE: {**task, "state": "started"}, "register": "started"},
        {MODULE: {**task, "state": "stopped", "only": ["second"]}, "check_mode": True, "register": "would_stop"},
        {MODULE: {**task, "state": "stopped", "only": ["second"]}, "register": "stopped_one"},
        {MODULE: {**task, "state": "started"}, "check_mode": True, "register": "would_start"},
        {MODULE: {**task, "state": "started", "only": "second"}, "register": "started_one"},
        # Without processes and env_file: a restart reruns what the last start was given.
        {MODULE: {**rerun, "state": "restarted", "only": "first"}, "check_mode": True, "register": "would_restart"},
        {MODULE: {**rerun, "state": "restarted", "only": "first"}, "register": "restarted"},
        {MODULE: {**task, "state": "stopped"}, "register": "stopped"},
        save(["started", "would_stop", "stopped_one", "would_start", "started_one", "would_restart", "restarted",
              "stopped"])]}
    played = ansible.playbook([play], "--diff")
    assert played.returncode == 0, played
    results = played.results[target.alias]

    started = results["started"]
    assert started["changed"] is True and sorted(by_name(started)) == ["first", "second", "web"], started
    for name, n in (("first", 1), ("second", 2)):
        log = by_name(started)[name]["log"]
        assert wait_for(lambda: f"PORT {port + 100 * n} GREETING hello there" in open(log).read()), name

    # Diff mode: web's pids and each process's state, before and after; check mode predicts the real run.
    web_pids = by_name(started)["web"]["pids"]

    def server(state, pids, **states):
        return {"state": state, "port": port, "pids": pids, "processes": states}

    running = server("running", web_pids, web="running", first="running", second="running")
    one_stopped = server("running", web_pids, web="running", first="running", second="stopped")
    assert started["diff"] == {"before": {"state": "stopped", "port": port, "pids": []}, "after": running}
    for name, before, after in (("would_stop", running, one_stopped), ("would_start", one_stopped, running),
                                ("started_one", one_stopped, running)):
        assert results[name]["changed"] is True and results[name]["diff"] == {"before": before, "after": after}, name
    assert results["would_stop"]["msg"] == "would be stopped: second"
    assert results["would_start"]["msg"] == "would be started: second"
    assert by_name(results["stopped_one"])["first"]["pids"] == by_name(started)["first"]["pids"]
    assert by_name(results["started_one"])["first"]["pids"] == by_name(started)["first"]["pids"]
    restarted = by_name(results["restarted"])
    assert results["restarted"]["changed"] is True and restarted["first"]["pids"] != by_name(started)["first"]["pids"]
    assert restarted["second"]["pids"] == by_name(results["started_one"])["second"]["pids"]
    assert wait_for(lambda: f"PORT {port + 100} GREETING hello there" in open(restarted["first"]["log"]).read())
    assert results["would_restart"]["changed"] is True
    assert results["would_restart"]["diff"] == {"before": running, "after": running}
    assert results["restarted"]["diff"] == {"before": running, "after": running}
    assert results["stopped"]["changed"] is True
    assert results["stopped"]["diff"] == {"before": running, "after": server(
        "stopped", [], web="stopped", first="stopped", second="stopped")}
    ended = all_pids(started) + all_pids(results["started_one"]) + all_pids(results["restarted"])
    assert wait_for(lambda: not any(alive(pid) for pid in ended))
    assert fab("status", *where(site, port)).returncode == 3
    # The real stop of `second` alone leaves web as it was, as check mode said.
    assert results["stopped_one"]["changed"] is True
    assert results["stopped_one"]["diff"] == {"before": running, "after": one_stopped}
