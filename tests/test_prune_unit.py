"""prune's --keep-branches list as the client reads it, and how the agent
decides an instance is a candidate, from its state files alone."""

import io
import json
import os
import time

import pytest

from tasks import branches, listing
from tasks.agent import pruning
from tasks.agent.state import Host, Instance, Request

LS_REMOTE = ("3f1c0d2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d\tHEAD\n"
             "3f1c0d2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d\trefs/heads/main\n"
             "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3f1c0d2e\trefs/heads/feature/login\n"
             "0d9e8f7a6b5c4d3f1c0d2e9a8b7c6d5e4f3a2b1c\trefs/tags/v1.0\n"
             "1c0d9e8f7a6b5c4d3f1c0d2e9a8b7c6d5e4f3a2b\trefs/pull/7/head\n")


def test_ls_remote_heads_output_gives_the_branch_names_and_skips_other_refs():
    assert branches.branch_names(LS_REMOTE) == ["main", "feature/login"]


def test_a_plain_list_is_one_branch_a_line_blank_lines_and_comments_skipped():
    text = "# kept previews\nmain\n\n  feature/login  \nrefs/heads/fix-1\nmain\n"
    assert branches.branch_names(text) == ["main", "feature/login", "fix-1"]


def test_an_empty_list_keeps_no_branch():
    assert branches.branch_names("") == [] and branches.branch_names("\n# none\n") == []


def test_stdin_is_read_once_for_every_host(monkeypatch):
    monkeypatch.setattr(branches, "_read", {})
    monkeypatch.setattr("sys.stdin", io.StringIO("main\nrelease\n"))
    assert branches.keep_branches("-") == ["main", "release"]
    assert branches.keep_branches("-") == ["main", "release"]  # stdin is empty by now: the first read counts


def test_a_file_is_read_as_the_same_format(tmp_path, monkeypatch):
    monkeypatch.setattr(branches, "_read", {})
    listed = tmp_path / "heads.txt"
    listed.write_text(LS_REMOTE)
    assert branches.keep_branches(str(listed)) == ["main", "feature/login"]
    with pytest.raises(OSError):
        branches.keep_branches(str(tmp_path / "missing"))


def instance(tmp_path, **req):
    data = dict(action="prune", project=str(tmp_path / "site"), port=8001, state_dir=str(tmp_path / "state"), **req)
    inst = Instance(Host(Request(data)), Request(data))
    os.makedirs(inst.dir)
    return inst


def written(inst, name, record):
    with open(os.path.join(inst.dir, name), "w") as handle:
        json.dump(record, handle)
    os.chmod(os.path.join(inst.dir, name), 0o600)


def reasons(inst, now, branch):
    """The reasons prune's candidate() finds for `inst`, from its files as they are."""
    meta = pruning.server_meta(inst.dir)
    return pruning.reasons_of(inst, now, branch, meta, pruning.started_at(inst, meta))


def test_the_reasons_follow_expiry_age_and_branch(tmp_path):
    now = time.time()
    inst = instance(tmp_path, older_than=3600, keep_branches=["main"])
    written(inst, "instance.json", {"project": inst.given, "port": 8001, "started": now - 7200})
    assert reasons(inst, now, "gone") == ["older than 1h", "branch gone"]
    assert reasons(inst, now, "main") == ["older than 1h"]
    assert reasons(inst, now, None) == ["older than 1h"]  # no known branch: never by the list


def test_an_expiry_line_last_in_the_log_makes_it_expired(tmp_path):
    inst = instance(tmp_path)
    with open(inst.log, "w") as handle:
        handle.write("--- fabserve 2026-12-07 10:00:00 expired: the ttl ended at 2026-12-07T10:00:00Z, "
                     "so the server was stopped\n")
    assert reasons(inst, time.time(), None) == ["expired"]


def test_without_a_record_its_age_is_its_log_s_mtime(tmp_path):
    inst = instance(tmp_path, older_than=60)
    with open(inst.log, "w") as handle:
        handle.write("started\n")
    assert reasons(inst, time.time(), None) == []
    os.utime(inst.log, (time.time() - 120, time.time() - 120))
    assert reasons(inst, time.time(), None) == ["older than 1m"]


@pytest.mark.parametrize("seconds, shown", [(604800, "7d"), (7200, "2h"), (90, "90s"), (120, "2m")])
def test_durations_read_as_given(seconds, shown):
    assert pruning.duration(seconds) == shown


def test_the_human_table_names_each_instance_and_its_reasons():
    row = dict(project="/srv/previews/old", port=8003, state="running", branch="feature-old",
               started_at="2026-11-28T09:12:40Z", removed=True, reasons=["older than 7d", "branch gone"])
    shown = listing.show_prune({"host": "web1", "message": "pruned 1 instance", "rows": [row]}).splitlines()
    assert shown[0] == "web1: pruned 1 instance"
    assert shown[1].split() == ["PROJECT", "PORT", "WAS", "BRANCH", "STARTED", "REMOVED", "REASONS"]
    assert shown[2].split("  ")[-1] == "older than 7d, branch gone" and "project dir" in shown[2]
    assert listing.show_prune({"host": "web1", "message": "nothing to prune", "rows": []}) == "web1: nothing to prune"
