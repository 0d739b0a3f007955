"""prune over the real sshd and locally, as the unprivileged test user, in a
state directory of the test's own (other tests' instances of the same user are
not its to prune): --dry-run changes nothing, prune stops and removes exactly
the expired, the old and the unlisted instances, while a fresh one, one of a
listed branch, one without a known branch, a hand-started runserver and
another user's server all survive; --keep-branches from a file and from
stdin in `git ls-remote --heads` format, in one SSH command per host."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bed.run import run_in_group
from helpers import alive, free_port, http_status, port_listening, wait_for, where

DAY = 86400


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.json


def rows(result):
    listed = result.json if isinstance(result.json, list) else [result.json] if result.json else []
    return listed


def aged(data, seconds):
    """Make the instance of start's result `data` look started `seconds` ago:
    its record's `started`, rewritten in place (owner and mode kept)."""
    path = Path(data["state_dir"]) / "instance.json"
    record = json.loads(path.read_text())
    record["started"] = time.time() - seconds
    with open(path, "r+") as handle:
        handle.truncate()
        handle.write(json.dumps(record))


def snapshot(state: Path):
    """Every path under the state directory with its size and mtime: what a dry run must leave as it is."""
    return sorted((str(path.relative_to(state)), path.lstat().st_size, path.lstat().st_mtime_ns)
                  for path in state.rglob("*"))


def synced(run, env, src: Path, dest: Path, branch: str, port: int, python: str):
    """dest made by sync from `src` as branch `branch` (so sync created it), started on `port`."""
    ok(run("sync", "--src", str(src), "--project", str(dest), "--branch", branch, env=env))
    return ok(run("start", *where(dest, port), "--noreload", "--python", python, env=env))


def test_dry_run_changes_nothing_and_prune_removes_exactly_the_expired_old_and_unlisted(
        run, mode, make_project, spawn_as_user, spawn_as_other, target, own_state, own_state_dir):
    env, state = own_state, own_state_dir
    python = str(target.python)
    expired, old, fresh = make_project("expired"), make_project("old"), make_project("fresh")
    src = make_project("tree")
    gone, kept = src.parent / "gone", src.parent / "kept"
    short = ok(run("start", *where(expired, free_port()), "--noreload", "--ttl", "6s", env=env))
    old_data = ok(run("start", *where(old, free_port()), "--noreload", env=env))
    aged(old_data, 3 * DAY)
    fresh_data = ok(run("start", *where(fresh, free_port()), "--noreload", env=env))
    gone_data = synced(run, env, src, gone, "feature/gone", free_port(), python)
    kept_data = synced(run, env, src, kept, "main", free_port(), python)
    hand_port = free_port()
    hand = spawn_as_user([python, "manage.py", "runserver", f"127.0.0.1:{hand_port}", "--noreload"], cwd=old)
    theirs = spawn_as_other.sleeping_runserver(python, old, free_port())
    keep = src.parent / "branches"  # where the test user, in local mode, reads it too
    keep.write_text("main\nrelease\n")
    keep.chmod(0o644)
    try:
        assert wait_for(lambda: not os.path.exists(short["pidfile"]), timeout=30)  # its ttl ended it
        assert wait_for(lambda: http_status(f"http://127.0.0.1:{hand_port}/") == 200, timeout=30)
        running = [old_data, fresh_data, gone_data, kept_data]
        flags = ["--older-than", "2d", "--keep-branches", str(keep)]

        before = snapshot(state)
        dry = run("prune", *flags, "--dry-run", env=env)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        would = {row["project"]: row for row in dry.json["rows"]}
        assert dry.json["dry_run"] is True and dry.json["changed"] is False
        assert {project: row["reasons"] for project, row in would.items()} == {
            str(expired): ["expired"], str(old): ["older than 2d"], str(gone): ["branch gone"]}
        assert would[str(gone)]["branch"] == "feature/gone" and would[str(old)]["state"] == "running"
        assert would[str(expired)]["state"] == "stopped" and not any(row["removed"] for row in would.values())
        assert dry.json["message"] == "would prune 3 instances"
        assert snapshot(state) == before
        assert all(alive(pid) for data in running for pid in data["pids"]) and gone.is_dir()

        pruned = run("prune", *flags, env=env)
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        done = {row["project"]: row for row in pruned.json["rows"]}
        assert sorted(done) == sorted([str(expired), str(old), str(gone)]) and pruned.json["changed"] is True
        assert sorted(done[str(old)]["pids"]) == sorted(old_data["pids"]) and done[str(expired)]["pids"] == []
        assert done[str(gone)]["removed"] is True and not gone.exists()  # sync created it
        assert done[str(old)]["removed"] is False and (old / "manage.py").exists()  # sync did not
        assert not any(alive(pid) for data in (old_data, gone_data) for pid in data["pids"])
        assert not any(Path(data["state_dir"]).exists() for data in (short, old_data, gone_data))
        assert all(alive(pid) for data in (fresh_data, kept_data) for pid in data["pids"])
        assert hand.poll() is None and port_listening(hand_port) and theirs.poll() is None
        ours = {str(path) for path in (expired, old, fresh, gone, kept)}  # list also shows other tests' runservers
        left = {row["project"] for row in rows(run("list", "--all", env=env))} & ours
        assert left == {str(fresh), str(kept), str(old)}  # old: the hand-started runserver, managed false

        again = run("prune", *flags, env=env)
        assert again.returncode == 0 and again.json["rows"] == [] and again.json["message"] == "nothing to prune"
    finally:
        for data in (fresh_data, kept_data, old_data, gone_data):
            run("stop", *where(data["project"], data["port"]), env=env)


def test_keep_branches_from_stdin_in_ls_remote_format_in_one_ssh_command(fab, make_project, target, own_state):
    env = own_state
    python = str(target.python)
    src = make_project("tree")
    gone, kept = src.parent / "gone", src.parent / "kept"
    gone_data = synced(fab_json(fab), env, src, gone, "feature/gone", free_port(), python)
    kept_data = synced(fab_json(fab), env, src, kept, "feature/login", free_port(), python)
    heads = ("3f1c0d2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d\trefs/heads/main\n"
             "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3f1c0d2e\trefs/heads/feature/login\n")

    def commands() -> int:
        return target.sshd_log.read_text().count(f"Starting session: command for {target.user} from")

    try:
        before = commands()
        argv, cwd, full_env = fab.command(("prune", "--keep-branches", "-", "--json"), False, env)
        done = run_in_group(argv, cwd=cwd, env=full_env, timeout=120, input=heads,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert commands() - before == 1
        result = json.loads(done.stdout)
        assert [(row["project"], row["reasons"]) for row in result["rows"]] == [(str(gone), ["branch gone"])]
        assert not gone.exists() and not any(alive(pid) for pid in gone_data["pids"])
        assert all(alive(pid) for pid in kept_data["pids"])
    finally:
        fab("stop", *where(kept, kept_data["port"]), env=env)
        fab("stop", *where(gone, gone_data["port"]), env=env)


def fab_json(fab):
    """fab over SSH with --json, as the `run` fixture calls it."""
    return lambda *args, env=None: fab(*args, "--json", env=env)
