"""destroy over the real sshd and locally: every instance of the project is
stopped and forgotten, another project's server keeps running, the files of a
directory fabserve's sync did not create are kept, and a second destroy is a no-op."""

from __future__ import annotations

from helpers import alive, free_port, port_listening, where


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.json


def rows_of(result, project):
    listed = result.json if isinstance(result.json, list) else [result.json] if result.json else []
    return [row for row in listed if row.get("project") == str(project)]


def test_destroy_stops_every_instance_of_the_project_and_forgets_them(run, make_project):
    site, other = make_project("doomed"), make_project("bystander")
    ports = [free_port(), free_port()]
    started = [ok(run("start", *where(site, port), "--noreload")) for port in ports]
    stopped_one = ok(run("start", *where(site, free_port()), "--noreload"))
    ok(run("stop", "--project", str(site), "--port", str(stopped_one["port"])))
    bystander = ok(run("start", *where(other, free_port()), "--noreload"))
    (site / "uploaded.txt").write_text("the app's own file\n")

    result = ok(run("destroy", "--project", str(site)))
    assert result["changed"] is True and result["removed"] is False
    assert sorted(result["pids"]) == sorted(pid for each in started for pid in each["pids"])
    assert result["message"] == (f"stopped pids {' '.join(map(str, result['pids']))}; forgot 3 instances; "
                                 f"kept {site}: fabserve's sync did not create it")
    assert not any(alive(pid) for each in started for pid in each["pids"])
    assert not any(port_listening(port) for port in ports)
    assert rows_of(run("list", "--all"), site) == []
    assert (site / "uploaded.txt").read_text() == "the app's own file\n" and (site / "manage.py").exists()
    assert all(alive(pid) for pid in bystander["pids"])

    again = run("destroy", "--project", str(site), json=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(f"nothing to destroy for {site}")
    ok(run("stop", *where(other, bystander["port"])))
