"""The pure parts of companion processes: a Procfile and the processes setting
read into a table (web first, $PORT spaced as foreman spaces it), an env file
read as honcho reads `.env`, the wrapper's exit line and the status it gives,
--only's choice, and how results read for people (process lines, PROCS)."""

import signal
import subprocess

import pytest

from tasks import listing, report, settings
from tasks.agent import procfile
from tasks.agent.protocol import AgentError, WEB


def entries(text):
    return procfile.parse_procfile(text)


def test_a_procfile_is_name_command_lines_with_comments_and_blank_lines_skipped():
    text = "# the app\nweb: gunicorn app:wsgi --bind 127.0.0.1:$PORT\n\n  worker:celery -A proj worker  \nwatch-css: npm run watch\n"
    assert entries(text) == [("web", "gunicorn app:wsgi --bind 127.0.0.1:$PORT"),
                             ("worker", "celery -A proj worker"), ("watch-css", "npm run watch")]


@pytest.mark.parametrize("text, said", [
    ("worker celery -A proj worker\n", "line 1 is not `name: command`"),
    ("ok: true\nbad name: x\n", "line 2 is not `name: command`"),
    ("worker:\n", "line 1 is not `name: command`"),
    ("worker: a\nworker: b\n", "line 2 names process worker a second time"),
])
def test_a_line_that_is_no_process_or_a_name_given_twice_is_refused_by_its_number(text, said):
    with pytest.raises(AgentError, match=said):
        entries(text)


def test_web_comes_first_on_the_instance_port_and_the_others_are_spaced_by_100_in_order():
    table = procfile.table_of([("worker", "w"), ("web", "daphne"), ("beat", "b")], 8000)
    assert [process.row() for process in table] == [["web", "daphne", 8000], ["worker", "w", 8100],
                                                    ["beat", "b", 8200]]
    without_web = procfile.table_of([("worker", "w")], 8123)
    assert [process.row() for process in without_web] == [["web", None, 8123], ["worker", "w", 8223]]


def test_a_recorded_table_keeps_well_formed_rows_only():
    record = {"processes": [["web", None, 8000], ["worker", "w", 8100], ["../x", "y", 1], ["z", 3, 4], "junk"]}
    assert [process.row() for process in procfile.recorded_table(record)] == [["web", None, 8000],
                                                                              ["worker", "w", 8100]]
    assert procfile.recorded_table({"processes": "web"}) is None and procfile.recorded_table(None) is None


def test_only_picks_processes_in_table_order_and_names_the_unknown_ones():
    table = procfile.table_of([("worker", "w"), ("watch", "v")], 8000)
    assert [process.name for process in procfile.selected(table, ["watch", "web"])] == ["web", "watch"]
    assert len(procfile.selected(table, None)) == 3
    with pytest.raises(AgentError, match="no process celery, beat in this instance: it has web, worker, watch"):
        procfile.selected(table, ["celery", "worker", "beat"])


def test_an_env_file_reads_as_honcho_reads_dot_env_and_never_through_a_shell():
    text = ("# settings\nexport DEBUG=1\nNAME='it''s $HOME'\nQUOTED=\"a\\nb \\\"c\\\"\"\n"
            "PLAIN = value with spaces   # a comment\nEMPTY=\nSUB=$(id)\nNOTED=\"two\\nlines\" # a comment\n"
            "HASHED='a # b' # c\n")
    assert procfile.parse_env_file(text, ".env") == {
        "DEBUG": "1", "NAME": "it''s $HOME", "QUOTED": 'a\nb "c"', "PLAIN": "value with spaces", "EMPTY": "",
        "SUB": "$(id)", "NOTED": "two\nlines", "HASHED": "a # b"}
    with pytest.raises(AgentError, match=r"\.env line 2 is not KEY=VALUE"):
        procfile.parse_env_file("A=1\n1BAD=2\n", ".env")


def run_wrapped(command):
    process = procfile.Process("worker", command, 8100)
    return subprocess.run(procfile.command_argv(process), capture_output=True, text=True, timeout=30)


def test_the_wrapper_runs_the_command_through_sh_and_writes_its_exit_status_last():
    ran = run_wrapped("echo $0 started; exit 3")  # a shell of its own: $0 is no name of ours
    assert ran.returncode == 3
    lines = ran.stdout.splitlines()
    assert lines[0] == "/bin/sh started" and procfile.exit_status(lines[-1], "worker") == 3
    assert procfile.exit_status(lines[-1], "watch") is None  # another process's line says nothing of this one


def test_a_command_killed_by_a_signal_reads_as_minus_the_signal():
    ran = run_wrapped(f"kill -{signal.SIGKILL} $$")
    assert ran.returncode == 128 + signal.SIGKILL
    assert procfile.exit_status(ran.stdout.splitlines()[-1], "worker") == -signal.SIGKILL
    assert procfile.exit_status("--- fabserve 2026-12-07 10:00:00 worker exited with status x", "worker") is None


def test_the_settings_parse_processes_only_and_process_names():
    assert settings.parse_processes({"web": " daphne proj.asgi:app ", "worker": "celery -A proj worker"}) == {
        "web": "daphne proj.asgi:app", "worker": "celery -A proj worker"}
    assert settings.parse_only("web, worker") == ["web", "worker"] and settings.parse_only(["beat"]) == ["beat"]
    assert settings.parse_processes({}) == {}  # none given: the project's Procfile counts
    for bad in ({"a b": "x"}, {"worker": ""}, {"worker": "a\nb"}, ["web"], None):
        with pytest.raises(settings.Invalid):
            settings.parse_processes(bad)
    for bad in ("", "web,,worker", "../x", 3):
        with pytest.raises(settings.Invalid):
            settings.parse_only(bad)
    assert settings.parse_process_name(WEB) == WEB


ROW = {"name": "worker", "command": "python worker.py", "port": 8100, "state": "running", "pid": 40,
       "pids": [40, 41], "uptime": 75, "exit_status": None, "log": "/s/proc.worker.log", "log_tail": None}


def test_each_process_reads_as_one_aligned_line_and_an_exited_one_with_its_status_and_last_lines():
    exited = dict(ROW, name="watch", state="exited", pid=None, pids=[], uptime=None, exit_status=-9,
                  log="/s/proc.watch.log", log_tail=[f"line {n}" for n in range(8)])
    lines = report.process_lines({"host": "web1", "processes": [ROW, exited]})
    assert lines[0] == "web1:   worker  running  pids 40 41  up 1m15s  log /s/proc.worker.log"
    assert lines[1] == "web1:   watch   exited (status -9)  log /s/proc.watch.log"
    assert lines[2:] == [f"web1:       line {n}" for n in range(3, 8)]
    assert report.process_lines({"host": "web1", "processes": [ROW, exited]}, told="/s/proc.watch.log") == lines[:2]
    assert report.process_lines({"host": "web1", "processes": None}) == []


def test_list_shows_how_many_processes_run_of_how_many():
    rows = [dict(ROW, name=WEB, state="failed"), ROW, dict(ROW, state="exited")]
    assert listing.procs_of({"processes": rows}) == "2/3" and listing.procs_of({}) == "-"

