"""`--check PATH` over the real sshd with a real Django project whose view can be
broken: a start whose view raises fails after a short run of 500s and leaves
nothing, one whose database lacks its migrations says so, a working one reports
its HTTP status, and status notices a view that broke afterwards."""

from __future__ import annotations

import os

from bed.net import free_port_between
from helpers import alive, http_status, port_listening, where

# A view that reads the database: HTTP 500 ("no such table") until `manage migrate` ran.
DATABASE_URLS = """\
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.urls import path


def home(request):
    return HttpResponse(f"{User.objects.count()} users")


urlpatterns = [path("", home)]
"""


def port_16k() -> int:
    """A port in 16000-16999 (the range these tests pick from) that was free a moment ago."""
    return free_port_between(16000, 16999)


def test_check_fails_a_start_whose_view_raises_and_passes_a_working_one(fab, make_project, as_user):
    project = make_project.breakable()
    flags = where(project, port_16k())
    assert fab("manage", "migrate --noinput", "--project", str(project)).returncode == 0  # no migration hint
    (project / "broken").touch()

    # A constant 500 fails after 10 of them in a row, not at the end of the timeout.
    failed = fab("start", *flags, "--check", "/", "--timeout", "60", "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    result = failed.json
    assert result["ok"] is False and result["state"] == "failed" and result["http_status"] == 500
    assert result["error"] == "GET / still HTTP 500 after 10 requests; the server was stopped"
    assert any("the view is broken on purpose" in line for line in result["log_tail"])
    # Django logs the error before it sends the 500, but the request's access line only
    # after: the tenth access line may be lost to the TERM that follows the tenth answer.
    with open(result["log"]) as log:
        assert sum(line.startswith("Internal Server Error: /") for line in log) == 10
    assert not port_listening(int(flags[3]))
    assert fab("status", *flags).returncode == 3

    human = fab("start", *flags, "--check", "/", "--timeout", "60")
    assert human.returncode == 1
    assert "start failed: GET / still HTTP 500 after 10 requests; the server was stopped" in human.stderr
    assert "last lines of" in human.stderr and "the view is broken on purpose" in human.stderr

    (project / "broken").unlink()
    started = fab("start", *flags, "--check", "/", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.json["http_status"] == 200 and started.json["state"] == "running"
    assert started.json["message"].startswith(f"started on {started.json['url']}; GET / answered HTTP 200")
    pids = started.json["pids"]
    try:
        plain = fab("status", *flags, "--json")
        assert plain.returncode == 0 and plain.json["http_status"] is None  # no check: as before
        checked = fab("status", *flags, "--check", "/", "--json")
        assert checked.returncode == 0 and checked.json["http_status"] == 200

        as_user(["touch", str(project / "broken")])
        assert http_status(started.json["url"]) == 500
        broken = fab("status", *flags, "--check", "/", "--json")
        assert broken.returncode == 1, broken.stdout
        assert broken.json["state"] == "failed" and broken.json["http_status"] == 500
        assert broken.json["message"] == f"GET / answered HTTP 500 on {started.json['url']}"
        human = fab("status", *flags, "--check", "/")
        assert human.returncode == 1 and human.stdout == ""
        assert human.stderr.splitlines()[0] == (f"fabserve-target: failed: GET / answered HTTP 500 on "
                                                f"{started.json['url']}; log {started.json['log']}")
        again = fab("start", *flags, "--check", "/", "--json")
        assert again.returncode == 1 and again.json["changed"] is False
        assert again.json["message"].startswith("already started but GET / answered HTTP 500")
        assert all(alive(pid) for pid in pids)  # a status never stops anything
    finally:
        stopped = fab("stop", *flags, "--json")
    assert stopped.returncode == 0 and stopped.json["port_free"] is True
    assert not any(alive(pid) for pid in pids)


def test_a_start_answering_500_for_want_of_migrations_shows_djangos_line_and_the_hint(fab, make_project):
    project = make_project()
    urls = project / "mysite" / "urls.py"
    urls.write_text(DATABASE_URLS)
    os.chown(urls, os.stat(project).st_uid, -1)
    flags = where(project, port_16k())

    failed = fab("start", *flags, "--check", "/", "--timeout", "60", "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    result = failed.json
    assert result["http_status"] == 500 and not port_listening(int(flags[3]))
    unapplied = next(line for line in result["log_tail"] if "unapplied migration(s)" in line)
    assert unapplied.startswith("You have ") and "apply the migrations for app(s): " in unapplied
    assert result["log_tail"][:2] == [unapplied, "..."]  # from start-up, before the tail's tracebacks
    assert result["error"] == (f"GET / still HTTP 500 after 10 requests; the server was stopped; "
                               f"the log says: {unapplied}; run `manage migrate` to apply them")
    human = fab("start", *flags, "--check", "/", "--timeout", "60")
    assert human.returncode == 1 and f"the log says: {unapplied}; run `manage migrate`" in human.stderr

    assert fab("manage", "migrate --noinput", "--project", str(project)).returncode == 0
    started = fab("start", *flags, "--check", "/", "--json")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert started.json["http_status"] == 200
    finally:
        assert fab("stop", *flags).returncode == 0


def test_check_paths_are_checked_before_connecting(fab, site):
    for bad in ("healthz", "/a b", "/x\ty", ""):
        result = fab("start", *where(site, port_16k()), "--check", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "--check must be a path starting with / without spaces or control characters" in result.stderr
