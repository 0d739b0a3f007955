"""The input contract, pure parts: every bad value is a UsageError (exit 2) that
names the setting and where it was given, before anything connects; the
request's size limit; the output's closed-pipe handling; the stop hint's flags;
human status notes; each login shell's missing-interpreter wording."""

import errno
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from fabric import Config
from invoke.exceptions import Exit

from helpers import skip_or_fail
from tasks import executor, ns, remote, report, settings, verbs
from tasks.config import host_values, merged, setting

#: The project of the requests below: a local run's default is the caller's (tasks/entrypoints.py).
PROJECT = "/srv/site"


def values(**flags):
    return merged({}, {"project": PROJECT, **flags})


def refused(action="start", env=(), **flags):
    with pytest.raises(settings.UsageError) as caught:
        settings.request(action, values(**flags), list(env))
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("port", ["²", "٣", "８０", True, [8000], {"a": 1}, 80.0, -1, 0, 65536])
def test_ports_are_ascii_numbers_in_range(port):
    assert refused(port=port).startswith("--port must be a number from 1 to 65535, not ")


@pytest.mark.parametrize("port,parsed", [(8000, 8000), ("8000", 8000), (" 8001 ", 8001)])
def test_ports_from_yaml_flags_and_variables(port, parsed):
    assert settings.request("status", values(port=port), [])["port"] == parsed


@pytest.mark.parametrize("lines", ["³", "٣", "-1", -1, True, [5], "5.0"])
def test_lines_are_ascii_whole_numbers(lines):
    assert refused("logs", lines=lines).startswith("--lines must be a whole number, not ")


def test_lines_accept_numbers_and_digits():
    assert settings.request("logs", values(lines="0"), [])["lines"] == 0
    assert settings.request("logs", values(lines=7), [])["lines"] == 7


@pytest.mark.parametrize("seconds", ["١", "²", True, [1], {"a": 1}, "nan", "inf", "-1", "soon"])
def test_timeouts_are_ascii_numbers_of_seconds(seconds):
    assert refused(timeout=seconds).startswith("--timeout must be ")


def test_timeouts_take_fractions_from_every_source():
    assert settings.request("stop", values(timeout="1.5"), [])["stop_timeout"] == 1.5
    assert settings.request("start", values(timeout=2), [])["start_timeout"] == 2.0


@pytest.mark.parametrize("project", [{"a": 1}, ["/srv"], 5, "", "/srv/a\nb", "/tmp/\udcff"])
def test_project_paths_are_text_in_utf8_without_newlines(project):
    assert refused(project=project).startswith("--project must be ")


def test_a_path_that_is_not_utf8_is_shown_as_its_bytes():
    assert refused(project="/tmp/\udcff") == r"--project must be valid UTF-8, not b'/tmp/\xff'"


@pytest.mark.parametrize("python", ["", "\udcff", {"a": 1}, "py\nthon"])
def test_python_given_empty_or_bad_is_refused_not_ignored(python):
    assert refused(python=python).startswith("--python must be ")


def test_python_unset_means_the_projects_own():
    assert settings.request("start", values(), [])["python"] is None


@pytest.mark.parametrize("agent_python", ["", "python3!", "py\nthon", "py\rthon", "py\0", "\udcff", {"a": 1}, 3])
def test_agent_python_is_refused_where_a_login_shell_would_mangle_it(agent_python):
    with pytest.raises(settings.UsageError) as caught:
        settings.checked(merged({"agent_python": agent_python}, {}), "agent_python")
    assert str(caught.value).startswith("fabserve.agent_python must be ")


def test_agent_python_takes_names_and_paths_with_spaces():
    assert settings.checked(merged({"agent_python": "/opt/my py/bin/python3"}, {}), "agent_python") == \
        "/opt/my py/bin/python3"


@pytest.mark.parametrize("env", [[1], "A=1 oops", "A='open", 5, {"A": {"b": 1}}, {"A": [1]}, {"A": None},
                                 {"A\n": "x"}, {"1A": "x"}, {5: "x"}, {"A": "\udcff"}, {"A": "x\0"}])
def test_env_must_be_a_mapping_of_names_to_text(env):
    with pytest.raises(settings.UsageError) as caught:
        settings.request("start", merged({"env": env}, {"project": PROJECT}), [])
    assert str(caught.value).startswith("fabserve.env ")


def test_env_as_words_is_split_with_shell_rules_and_flags_add_to_it():
    req = settings.request("start", merged({"env": "A=1 'B=two words'"}, {"project": PROJECT}), ["A=2"])
    assert req["env"] == {"A": "2", "B": "two words"}


def test_env_values_from_yaml_numbers_become_text():
    req = settings.request("start", merged({"env": {"A": 1, "B": "x"}}, {"project": PROJECT}), ["C=2"])
    assert req["env"] == {"A": "1", "B": "x", "C": "2"}


def test_a_bad_env_flag_is_named_as_the_flag():
    assert refused(env=["1X=a"]).startswith("--env names an environment variable that is not valid")


@pytest.mark.parametrize("name,value", [("addr", 5), ("addr", ""), ("settings", 5), ("settings", ""),
                                        ("settings", "a..b"), ("noreload", {"a": 1}), ("state_dir", ""),
                                        ("state_dir", ["x"])])
def test_other_request_settings_refuse_wrong_types(name, value):
    with pytest.raises(settings.UsageError) as caught:
        settings.request("start", merged({name: value}, {"project": PROJECT}), [])
    assert str(caught.value).startswith(f"fabserve.{name} must be ")


@pytest.mark.parametrize("value", ["³", 2.5, True, [3], "٣"])
def test_concurrency_refuses_digits_int_would_take(value):
    with pytest.raises(Exit) as caught:
        executor.concurrency(Config(overrides={"fabserve": {"concurrency": value}}))
    assert caught.value.code == 2 and "fabserve.concurrency must be a whole number" in caught.value.message


def test_inventory_must_be_a_path():
    with pytest.raises(settings.UsageError, match=r"fabserve.inventory must be a path, not \{'a': 1\}"):
        setting(Config(overrides={"fabserve": {"inventory": {"a": 1}}}), "inventory")


def test_long_values_are_cut_short_in_messages():
    message = refused(port="9" * 100_000)
    assert len(message) < 200 and message.endswith("...")


def collection_config(monkeypatch, variables=(), runtime=None):
    """The config as fab builds it: the collection's defaults, then FABRIC_* variables and a -f file."""
    for name, value in variables:
        monkeypatch.setenv(name, value)
    config = Config()
    if runtime is not None:
        config.set_runtime_path(str(runtime))
        config.load_runtime()
    return config


def loaded(config):
    """`config` with the collection loaded by fabserve's executor (its Exit, if any)."""
    executor.ConcurrentExecutor(ns, config=config).load_settings()
    return config


@pytest.mark.parametrize("name,value,expected", [
    ("FABRIC_FABSERVE_START_TIMEOUT", "1.5", ("start_timeout", 1.5)),
    ("FABRIC_FABSERVE_PORT", "8001", ("port", 8001)),
    ("FABRIC_FABSERVE_CONCURRENCY", "3", ("concurrency", 3)),
    ("FABRIC_FABSERVE_LINES", "7", ("lines", 7)),
    ("FABRIC_FABSERVE_STRICT_HOST_KEYS", "1", ("strict_host_keys", True)),
    ("FABRIC_FABSERVE_STRICT_HOST_KEYS", "0", ("strict_host_keys", False)),
    ("FABRIC_FABSERVE_NORELOAD", "1", ("noreload", True)),
])
def test_variables_reach_the_parsers_as_given(monkeypatch, name, value, expected):
    config = loaded(collection_config(monkeypatch, [(name, value)]))
    name, parsed = expected
    assert setting(config, name) == parsed


@pytest.mark.parametrize("name", ["PORT", "START_TIMEOUT", "STOP_TIMEOUT", "CONCURRENCY", "LINES"])
def test_a_bad_variable_names_itself(monkeypatch, name):
    config = loaded(collection_config(monkeypatch, [(f"FABRIC_FABSERVE_{name}", "abc")]))
    with pytest.raises(settings.UsageError) as caught:
        setting(config, name.lower())
    assert str(caught.value).startswith(f"fabserve.{name.lower()} must be ")
    assert str(caught.value).endswith(f", not 'abc' (from FABRIC_FABSERVE_{name})")


@pytest.mark.parametrize("text,message", [
    ("fabserve:\n  project: {a: 1}\n", "fabserve.project must be a path, not {'a': 1} (from FILE)"),
    ("fabserve:\n  port: {a: 1}\n", "fabserve.port must be a number from 1 to 65535, not {'a': 1} (from FILE)"),
    ("fabserve:\n  env: 5\n", "fabserve.env must be a mapping of variable names to values, not 5 (from FILE)"),
    ("fabserve: [1]\n", "the fabserve config section must be a mapping, not [1] (from FILE)"),
])
def test_config_invoke_cannot_merge_is_one_line_naming_the_key_and_file(monkeypatch, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(Exit) as caught:
        loaded(collection_config(monkeypatch, runtime=path))
    assert caught.value.code == 2
    assert caught.value.message == message.replace("FILE", str(path))


def test_a_bad_value_in_a_config_file_names_the_file(monkeypatch, tmp_path):
    path = tmp_path / "fab.yaml"
    path.write_text("fabserve:\n  lines: [5]\n")
    config = loaded(collection_config(monkeypatch, runtime=path))
    values_ = host_values(config, {}, {"project": PROJECT})
    with pytest.raises(settings.UsageError) as caught:
        settings.request("logs", values_, [])
    assert str(caught.value) == f"fabserve.lines must be a whole number, not [5] (from {path})"


def test_a_bad_inventory_value_says_so():
    values_ = host_values({}, {"port": "x"}, {"project": PROJECT})
    with pytest.raises(settings.UsageError) as caught:
        settings.request("status", values_, [])
    assert str(caught.value) == "port must be a number from 1 to 65535, not 'x' (from the inventory)"


def padded_request(tmp_path, size):
    """A status request for a missing project whose JSON is exactly `size` bytes."""
    req = settings.request("status", values(project=str(tmp_path / "p"), state_dir=str(tmp_path / "s")), [])
    req["env"] = {"PAD": ""}
    req["env"]["PAD"] = "a" * (size - len(json.dumps(req)))
    assert len(json.dumps(req)) == size
    return req


def test_a_request_bigger_than_one_argument_travels_on_stdin(tmp_path):
    """In argv it would fail exec with E2BIG (Linux's MAX_ARG_STRLEN, 128 KiB for one argument)."""
    req = padded_request(tmp_path, 200 * 1024)
    with pytest.raises(OSError) as exec_error:
        subprocess.run(["/bin/sh", "-c", ": " + remote.request_line(req)], capture_output=True)
    assert exec_error.value.errno == errno.E2BIG
    done = subprocess.run(["/bin/sh", "-c", remote.command(sys.executable)], input=remote.request_line(req),
                          capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    assert remote.parse_result(done.stdout)["state"] == "stopped", done.stderr


def test_say_to_a_reader_that_went_away_drops_the_output_quietly():
    read_end, write_end = os.pipe()
    saved = os.dup(write_end)
    stream = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8")
    try:
        report.say("first", stream)
        assert os.read(read_end, 100) == b"first\n"
        os.close(read_end)
        report.say("second", stream)  # EPIPE: no exception
        report.say("third", stream)
        assert os.path.samefile(f"/proc/self/fd/{stream.fileno()}", os.devnull)
        stream.close()  # the last flush goes to /dev/null too
    finally:
        os.close(saved)


@pytest.mark.parametrize("argv,kept", [
    (["-S", "my config", "-H", "web1", "start"], ["-S", "my config"]),
    (["--ssh-config=a", "-ikey", "--identity", "k2", "-t", "5", "-H", "w", "start", "-t", "9"],
     ["--ssh-config", "a", "-i", "key", "--identity", "k2", "-t", "5"]),
    (["-f", "c.yaml", "-r", "/r", "-c", "col", "-d", "--prompt-for-passphrase", "status"],
     ["-f", "c.yaml", "-r", "/r", "-c", "col"]),
    (["--prompt-for-login-password", "-T", "5", "-e", "start", "-S", "x"], []),
    (["start"], []),
])
def test_the_stop_hint_repeats_fabs_connection_flags_only(argv, kept):
    assert verbs.connection_flags(argv) == kept


def running(**fields):
    result = {"host": "web1", "state": "running", "url": "http://127.0.0.1:8000/", "pids": [5, 6], "uptime": 61,
              "log": "/s/server.log", "pidfile": "/s/server.pid", "managed": True,
              "message": "running on http://127.0.0.1:8000/"}
    result.update(fields)
    return result


def test_human_status_keeps_the_agents_notes_and_names_only_its_own_pidfile():
    assert verbs.show_status(running()) == ("web1: running on http://127.0.0.1:8000/, pids 5 6, up 1m1s; "
                                            "log /s/server.log; pidfile /s/server.pid")
    adopted = running(managed=False, message="running on http://127.0.0.1:8000/; not started by fabserve; "
                                             "stale pidfile: process 4 is gone")
    assert verbs.show_status(adopted) == ("web1: running on http://127.0.0.1:8000/, pids 5 6, up 1m1s; "
                                          "log /s/server.log; not started by fabserve; "
                                          "stale pidfile: process 4 is gone")


def test_human_status_of_a_server_failing_its_check_says_failed_first_and_so_does_the_summary():
    failing = running(state="failed", message="GET /healthz answered HTTP 500 on http://127.0.0.1:8000/",
                      http_status=500, action="status", ok=False, error=None)
    assert verbs.show_status(failing) == ("web1: failed: GET /healthz answered HTTP 500 on http://127.0.0.1:8000/; "
                                          "log /s/server.log")
    fine = running(host="web2", action="status", ok=True, error=None)
    assert report.summary([fine, failing]) == \
        "1 running, 1 failed: web1 (GET /healthz answered HTTP 500 on http://127.0.0.1:8000/)"


SHELLS = ("sh", "bash", "dash", "zsh", "fish", "tcsh", "csh")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("interpreter", ["nosuchpython9", "/no/such/python9"])
def test_a_missing_interpreter_is_named_under_every_login_shell(shell, interpreter, tmp_path):
    if shutil.which(shell) is None:
        skip_or_fail(f"{shell} is not installed (bin/setup --test installs it)")
    req = settings.request("status", values(project="/srv/p"), [])
    done = subprocess.run([shell, "-c", remote.command(interpreter)], input=remote.request_line(req),
                          capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode in (1, 127), (done.returncode, done.stderr)
    assert remote.agent_failure(done.returncode, done.stderr, interpreter) == \
        f"interpreter {interpreter!r} not found on the host; set fabserve.agent_python"


def test_a_failing_agent_is_not_taken_for_a_missing_interpreter():
    assert remote.agent_failure(1, "Traceback\nValueError: x\n", "python3") == "agent failed (exit 1): ValueError: x"
    assert remote.agent_failure(1, "other: Command not found.\n", "python3").startswith("agent failed (exit 1)")
