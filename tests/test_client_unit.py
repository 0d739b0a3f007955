"""Unit tests of the client's pure parts: option merging, validation, command building."""

import json
import marshal
import os
import shlex
import subprocess
import sys

import pytest

from invoke import Config, Context

from tasks import payload, remote, report, runners, settings
from tasks.agent.protocol import MARKER
from tasks.config import merged

#: The project of the requests below: a local run's default is the caller's (tasks/entrypoints.py).
PROJECT = "/srv/site"


def values(**flags):
    return merged({}, {"project": PROJECT, **flags})


def test_flags_beat_config_beat_defaults():
    given = merged({"port": 9000, "addr": "0.0.0.0", "unknown": 1}, {"port": "9100", "addr": None})
    assert given["port"] == "9100"
    assert given["addr"] == "0.0.0.0"
    assert given["stop_timeout"] == settings.DEFAULTS["stop_timeout"]
    assert "unknown" not in given


@pytest.mark.parametrize("port", ["abc", "0", "65536", "8000;id", "-1", "", " ", "80.0"])
def test_bad_ports_are_usage_errors(port):
    with pytest.raises(settings.UsageError, match="--port"):
        settings.request("start", values(port=port), [])


@pytest.mark.parametrize("addr", ["localhost", "1.2.3", "127.0.0.1;id", "::g"])
def test_bad_addresses_are_usage_errors(addr):
    with pytest.raises(settings.UsageError, match="--addr"):
        settings.request("start", values(addr=addr), [])


def test_a_remote_host_needs_a_project():
    # Locally the task fills in its default first (tests/test_entrypoints_unit.py).
    with pytest.raises(settings.UsageError, match="--project is required"):
        settings.request("status", merged({}, {}), [])
    assert settings.request("status", values(), [])["project"] == PROJECT


def test_timeout_flag_overrides_the_setting_of_its_verb():
    req = settings.request("stop", values(timeout="2.5"), [])
    assert req["stop_timeout"] == 2.5
    assert req["start_timeout"] == settings.DEFAULTS["start_timeout"]
    for verb in ("start", "restart"):
        req = settings.request(verb, values(timeout="7"), [])
        assert req["start_timeout"] == 7 and req["stop_timeout"] == settings.DEFAULTS["stop_timeout"]
    for bad in ("0", "-3", "soon", "100000"):
        with pytest.raises(settings.UsageError, match="--timeout"):
            settings.request("stop", values(timeout=bad), [])


def test_env_pairs_merge_over_config_and_are_validated():
    config = merged({"env": {"A": "1", "B": "2"}}, {"project": PROJECT})
    req = settings.request("start", config, ["B=x=y", "C="])
    assert req["env"] == {"A": "1", "B": "x=y", "C": ""}
    for bad in (["NOEQUALS"], ["1X=a"], ["A B=c"], ["A=\0"]):
        with pytest.raises(settings.UsageError):
            settings.request("start", config, bad)


def test_settings_and_paths_are_validated():
    with pytest.raises(settings.UsageError, match="--settings"):
        settings.request("start", values(settings="x;id"), [])
    with pytest.raises(settings.UsageError, match="--project"):
        settings.request("start", values(project="a\nb"), [])
    assert settings.request("start", values(settings="site.settings_dev"), [])["settings"] == \
        "site.settings_dev"


def test_the_command_holds_no_request_and_its_line_round_trips():
    req = settings.request("status", values(project="/srv/it's $(touch PWNED) `id`; \"x\"\t"), [])
    words = shlex.split(remote.command("python3"))
    assert words[:4] == ["python3", "-E", "-S", "-c"] and words[4] == payload.BOOTSTRAP
    assert (words[5], words[6]) == payload.payload() and len(words) == 8  # and the loader: no request
    line = remote.request_line(req)
    assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
    assert json.loads(line)["project"] == "/srv/it's $(touch PWNED) `id`; \"x\"\t"


def test_the_request_stream_gives_invoke_the_whole_request_at_once():
    stream = runners.RequestStream("{}\n")
    assert stream.read(1) == "{}\n" and stream.read(1) == ""  # invoke's own loop asks one byte at a time


def test_a_local_run_writes_the_request_and_closes_stdin_at_once():
    c = Context(Config(overrides={"runners": runners.RUNNERS}))
    done = c.run("cat; echo EOF", in_stream=runners.RequestStream("one line\n"), hide=True)
    assert done.stdout == "one line\nEOF\n"


def test_command_runs_the_shipped_agent_through_a_real_shell(tmp_path):
    marker = tmp_path / "PWNED"
    project = f"{tmp_path}/a b'c$(touch {marker})"
    req = settings.request("status", values(project=project, state_dir=str(tmp_path / "state")), [])
    done = subprocess.run(["sh", "-c", remote.command(sys.executable)], input=remote.request_line(req),
                          capture_output=True, text=True)
    result = remote.parse_result(done.stdout)
    assert result["action"] == "status" and result["state"] == "stopped"
    assert result["project"] == project
    assert done.returncode == 3
    assert not marker.exists()


def agent_status(home, cwd=None):
    """`status` of a missing project, sent through a real shell as remote.call
    sends it, with `home` as HOME; asserts the agent answered."""
    req = settings.request("status", values(project=str(home / "p"), state_dir=str(home / "state")), [])
    done = subprocess.run(["sh", "-c", remote.command(sys.executable)], input=remote.request_line(req),
                          capture_output=True, text=True, cwd=cwd, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert remote.parse_result(done.stdout)["state"] == "stopped", done.stderr


def test_a_json_py_in_the_login_directory_is_not_imported(tmp_path):
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    agent_status(tmp_path, cwd=tmp_path)


def test_compiled_agent_is_cached_per_source_and_interpreter(tmp_path):
    agent_status(tmp_path)
    tag = sys.implementation.cache_tag
    [cache] = (tmp_path / ".cache" / "fabserve").iterdir()
    assert cache.name == f"agent-{payload.payload()[0]}-{tag}" and cache.stat().st_size > 1000
    assert (tmp_path / ".cache" / "fabserve").stat().st_mode & 0o777 == 0o700
    cached = cache.read_bytes()
    agent_status(tmp_path)
    assert cache.read_bytes() == cached
    cache.write_bytes(b"garbage")  # a torn or foreign file is recompiled over, never trusted
    agent_status(tmp_path)
    assert cache.read_bytes() == cached
    older = cache.with_name(f"agent-0123456789abcdef-{tag}")
    other = cache.with_name("agent-0123456789abcdef-cpython-36")
    older.write_bytes(cached)
    other.write_bytes(cached)
    cache.unlink()
    agent_status(tmp_path)  # a new entry replaces older versions' entries for this interpreter only
    assert sorted(path.name for path in cache.parent.iterdir()) == sorted([cache.name, other.name])


def test_a_fifo_as_the_cache_entry_is_compiled_over_not_waited_on(tmp_path):
    folder = tmp_path / ".cache" / "fabserve"
    folder.mkdir(parents=True, mode=0o700)
    entry = folder / f"agent-{payload.payload()[0]}-{sys.implementation.cache_tag}"
    os.mkfifo(entry)  # opened without O_NONBLOCK, it would block the loader until a writer came
    agent_status(tmp_path)
    assert entry.is_file() and entry.stat().st_size > 1000


def test_agent_cache_others_can_write_is_never_loaded(tmp_path):
    folder = tmp_path / ".cache" / "fabserve"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    marker = tmp_path / "PLANTED"
    # What the loader would run first, were the entry trusted: the package's boot.
    planted = {"boot": compile(f"open({str(marker)!r}, 'w').close()", "fabserve_agent/boot.py", "exec")}
    entry = folder / f"agent-{payload.payload()[0]}-{sys.implementation.cache_tag}"
    entry.write_bytes(marshal.dumps(planted))
    agent_status(tmp_path)
    assert not marker.exists()
    assert entry.read_bytes() == marshal.dumps(planted)  # nor written to: the agent ran uncached


def test_parse_result_ignores_login_chatter():
    out = "Welcome!\nmotd line\n\n" + MARKER + json.dumps({"ok": True}) + "\n"
    assert remote.parse_result(out) == {"ok": True}
    assert remote.parse_result("bash: python3: command not found\n") is None


def test_host_label_shows_only_the_parts_given_in_the_shorthand(tmp_path):
    from fabric import Config, Connection
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host web1\n  HostName 10.0.0.5\n  User deploy\n  Port 2222\n")
    config = Config(runtime_ssh_path=str(ssh_config))
    config.load_ssh_config()
    label = lambda host: remote.host_label(Connection(host, config=config))
    assert label("web1") == "web1"
    assert label("ops@web1:2200") == "ops@web1:2200"
    assert label("other") == "other"
    assert label("ops@other:2200") == "ops@other:2200"
    assert label("other:22") == "other"
    assert remote.shorthand("::1", "ops", 2200) == "ops@::1"


def test_agent_failure_messages():
    assert "not found on the host" in remote.agent_failure(127, "sh: python9: not found", "python9")
    assert remote.agent_failure(1, "x\nfabserve: the target needs Python 3.6\n", "python3").endswith(
        "fabserve: the target needs Python 3.6")


def test_human_output_names_the_host_and_failure_carries_the_log_tail():
    result = report.failure("web1", "start", "cannot connect: Connection refused")
    assert report.human(result) == "web1: start failed: cannot connect: Connection refused"
    result.update(error="start failed: server exited with status 1", log="/x/server.log",
                  log_tail=["Error: That port is already in use."])
    assert report.human(result).splitlines()[-1] == "    Error: That port is already in use."


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59, "59s"), (61, "1m1s"), (3600, "1h"),
                                          (90061, "1d1h"), (None, "?")])
def test_duration(seconds, text):
    assert report.duration(seconds) == text


def test_ending_runs_after_a_sigint_survives_a_run_that_ended_by_itself_meanwhile():
    """A follow that ends as the SIGINT arrives closes its transport: closing its channel
    then raises, in the interrupting thread, where a traceback would reach stderr."""
    from paramiko.ssh_exception import SSHException

    ended = []

    class Gone:
        def __init__(self, error):
            self.error = error

        def kill(self):
            ended.append(self)
            raise self.error

    runs = [Gone(SSHException("SSH session not active")), Gone(EOFError()), Gone(OSError("closed"))]
    runners.end_runs(runs)
    assert ended == runs
