"""`up` and `destroy` over the real sshd, as the unprivileged test user, from a
git work tree of a real Django project whose requirements install from a local
wheelhouse: the first up serves the branch's preview, a change is one file sent
and served after runserver reloads, each failing step ends the chain with its
own exit code and says which step it was, and destroy leaves the user's
processes and state as they were before up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from bed.caddy import HOST_SITE_PORT, SITE_TEXT, route_ids, running_caddy, through
from bed.ci import Runner
from bed.fab import fab_on_hosts
from bed.trees import example_repo, git
from bed.wheels import django_wheelhouse
from helpers import REPO, alive, wait_for
from tasks.agent.projects import project_name
from tasks.agent.state import instance_name

DJANGO_PIN = (REPO / "example" / "requirements.txt").read_text().strip()
HELLO_URLS = """from django.contrib import admin
from django.http import HttpResponse
from django.urls import path

GREETING = "v1"

urlpatterns = [
    path('admin/', admin.site.urls),
    path('hello/', lambda request: HttpResponse(GREETING)),
]
"""


@pytest.fixture(scope="module")
def django_wheels() -> Path:
    return django_wheelhouse(DJANGO_PIN)


@pytest.fixture
def preview_src(make_project, target, as_user, django_wheels, uv_on_host) -> Path:
    """A git work tree (owned by root, who runs fab) of the example project with
    a /hello/ view, and requirements that install offline; with uv on the host,
    which installs Django in a second where pip takes ten (tests/test_setup.py
    runs pip's way)."""
    root = make_project("unused").parent
    src = root / "src"

    def add_files(tree: Path) -> None:
        (tree / "example" / "urls.py").write_text(HELLO_URLS)
        (tree / "requirements.txt").write_text(f"--no-index\n--find-links {django_wheels}\n{DJANGO_PIN}\n")

    example_repo(src, (0, 0), lambda argv: subprocess.run(argv, capture_output=True, text=True))
    add_files(src)
    git(src, "commit", "-q", "-am", "hello")
    return src


def body(url: str) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def state_of(target, project: Path, port: int) -> list[str]:
    """The paths under the test user's fabserve state directory that are the
    project's (its record) or its instance's on `port` (pidfile, log, lock)."""
    base = target.home / ".local" / "state" / "fabserve"
    names = (instance_name(str(project), port), project_name(str(project)))
    return sorted(str(path) for path in base.rglob("*") if any(name in path.parts for name in names))


def test_up_serves_the_branch_a_change_is_one_file_and_destroy_leaves_nothing(fab, preview_src, target, as_user):
    previews = preview_src.parent / "previews"
    template = f"{previews}/{{branch}}"
    up = ["up", "--src", str(preview_src), "--project", template, "--port", "auto", "--check", "/hello/",
          "--ttl", "1h"]
    first = fab(*up, "--json", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    result = first.json
    commit = subprocess.run(["git", "-C", str(preview_src), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert result["action"] == "up" and result["step"] == "start" and result["state"] == "running"
    assert (result["branch"], result["commit"]) == ("main", commit)
    assert result["project"] == str(previews / "main") and result["http_status"] == 200
    assert 3500 <= result["expires_in"] <= 3600
    assert body(result["url"] + "hello/") == "v1"
    assert os.readlink(previews / "main" / ".venv").startswith(".fabserve-venvs/")
    assert state_of(target, previews / "main", result["port"])  # what destroy must remove
    listed = fab("list", "--json").json
    rows = [row for row in (listed if isinstance(listed, list) else [listed]) if row.get("port") == result["port"]]
    assert [(row["branch"], row["commit"]) for row in rows] == [("main", commit)]

    urls = preview_src / "example" / "urls.py"
    urls.write_text(urls.read_text().replace('"v1"', '"v2"'))
    second = fab(*up, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    host = target.alias
    lines = second.stdout.splitlines()
    assert lines[0].startswith(f"{host}: synced 1 file (") and ", deleted 0, in " in lines[0], lines
    assert lines[1:3] == [f"{host}: setup: requirements unchanged", f"{host}: migrate: no migrations to apply"]
    assert lines[3].startswith(f"{host}: up: {result['url']} (port {result['port']}); expires in ") and len(lines) == 4
    wait_for(lambda: body(result["url"] + "hello/") == "v2", timeout=30)
    assert fab("status", "--project", str(previews / "main"), "--json").json["pid"] == result["pid"]

    as_user(["sh", "-c", f"echo uploaded > '{previews}/main/media.txt'"])
    gone = fab("destroy", "--project", template, "--branch", "main", "--json")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    # The reloader (the group's leader) is the one up started; its child is the one the change started.
    assert gone.json["removed"] is True and result["pid"] in gone.json["pids"] and len(gone.json["pids"]) == 2
    assert not (previews / "main").exists()
    assert not any(alive(pid) for pid in result["pids"] + gone.json["pids"])
    assert state_of(target, previews / "main", result["port"]) == []
    again = fab("destroy", "--project", template, "--branch", "main", "--json")
    assert again.returncode == 0 and again.json["changed"] is False


def test_each_failing_step_ends_up_with_its_own_exit_code_and_name(fab, preview_src, target):
    project = preview_src.parent / "failing"
    up = ["up", "--src", str(preview_src), "--project", str(project), "--port", "auto"]

    os.symlink("/etc", preview_src / "etc")
    refused = fab(*up)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith(f"{target.alias}: up failed at sync: refused: "), refused.stderr
    assert not project.exists()
    (preview_src / "etc").unlink()

    (preview_src / "requirements.txt").write_text("--no-index\nfabserve-no-such-package==1.0\n")
    failed = fab(*up, timeout=600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stdout.startswith(f"{target.alias}: synced ")
    assert failed.stderr.startswith(f"{target.alias}: up failed at setup: installing requirements.txt with uv ")
    assert f"{target.alias}: the install's last lines:" in failed.stderr

    # Nothing to install: a venv without Django, so Django's migrate cannot run, nor can runserver.
    (preview_src / "requirements.txt").write_text("")
    unmigrated = fab(*up, "--json", timeout=600)
    assert unmigrated.returncode == 1 and unmigrated.json["step"] == "migrate", unmigrated.stdout
    assert any("Couldn't import Django" in line for line in unmigrated.json["output_tail"])
    unstarted = fab(*up, "--no-migrate", "--json", timeout=600)
    assert unstarted.returncode == 1 and unstarted.json["step"] == "start", unstarted.stdout
    assert unstarted.json["state"] == "stopped" or unstarted.json["state"] == "failed"
    destroyed = fab("destroy", "--project", str(project), "--json")
    assert destroyed.returncode == 0 and destroyed.json["removed"] is True and not project.exists()


def test_the_fabserve_command_brings_a_preview_up_and_down(target, preview_src):
    project = preview_src.parent / "by-command"
    fabserve = [sys.executable, "-c", "import sys; sys.argv[0] = 'fabserve'; from tasks.program import program; "
                "program.run()", "-S", str(target.ssh_config), "-H", target.alias]

    def command(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*fabserve, *args], cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    shown = command("up", "--src", str(preview_src), "--project", str(project), "--port", "auto", "--no-migrate")
    last = shown.stdout.splitlines()[-1]
    assert last.startswith(f"{target.alias}: up: http://127.0.0.1:") and "expires" not in last
    assert command("destroy", "--project", str(project)).stdout.strip().endswith(f"removed {project}")
    assert not project.exists()
    shutil.rmtree(preview_src.parent / "unused", ignore_errors=True)


def ci_section() -> str:
    text = (REPO / "docs" / "ci.md").read_text()
    return text[text.index("## One preview per branch"):text.index("## Settings, host groups")]


def yaml_blocks(text: str) -> list[dict]:
    return [yaml.safe_load(block.split("\n```", 1)[0]) for block in text.split("```yaml\n")[1:]]


def test_the_documented_per_branch_jobs_bring_a_preview_up_and_tear_it_down(preview_src, target, tmp_path, as_user):
    """docs/ci.md's GitHub Actions and GitLab CI jobs, their steps run as scripts
    against the bed: GitHub's up, then GitLab's review of the same branch (up to
    date, still running), GitLab's stop, then GitHub's down (nothing left)."""
    github, gitlab = yaml_blocks(ci_section())
    branch = "feature/login"
    runner = Runner(tmp_path, target, workdir=preview_src)
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs"

    def github_step(job: str, name: str) -> subprocess.CompletedProcess:
        step = next(step for step in github["jobs"][job]["steps"] if step.get("name", "").startswith(name))
        env = {key: value.replace("${{ github.ref_name }}", branch).replace("${{ github.event.ref }}", branch)
               for key, value in github["jobs"][job]["env"].items()}
        return runner.step(step["run"], {**env, "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs)},
                           timeout=600)

    def gitlab_job(name: str) -> subprocess.CompletedProcess:
        job = {**gitlab[".fabserve"], **gitlab[name]}
        ci = {"CI_COMMIT_REF_NAME": branch}
        env = {key: value.replace("$CI_COMMIT_REF_NAME", branch)
               for key, value in {**gitlab[".fabserve"]["variables"], **job.get("variables", {})}.items()}
        return runner.step("\n".join(job["script"]), {**ci, **env}, timeout=600)

    up = github_step("up", "Bring the branch's preview up")
    assert up.returncode == 0, up.stdout + up.stderr
    result = json.loads((preview_src / "up.json").read_text())
    project = target.home / "previews" / "feature-login"
    assert result["project"] == str(project) and result["state"] == "running" and result["http_status"] == 404
    assert summary.read_text() == (f"Preview of {branch} at {result['url']} on {target.user}@preview.example.com "
                                   f"until {result['expires_at']}\n")
    assert outputs.read_text().splitlines() == [f"url={result['url']}", f"host={result['host']}",
                                                f"port={result['port']}", f"expires_at={result['expires_at']}"]
    (preview_src / "up.json").unlink()

    review = gitlab_job("review")
    assert review.returncode == 0, review.stdout + review.stderr
    again = json.loads(review.stdout)
    assert again["port"] == result["port"] and again["pid"] == result["pid"] and again["changed"] is True  # its ttl
    (preview_src / "up.json").unlink()

    stop = gitlab_job("stop_review")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert json.loads(stop.stdout)["removed"] is True and not project.exists()
    assert not any(alive(pid) for pid in result["pids"])
    down = github_step("down", "Tear the branch's preview down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert json.loads(down.stdout)["changed"] is False
    (target.home / "previews").rmdir()  # sync made it as the project's parent; it holds nothing now


def test_up_and_destroy_on_many_hosts_each_with_its_own_preview(bed_hosts, preview_src, tmp_path):
    """Every namespaced host (its own /tmp, state, processes and Caddy) gets the
    branch's preview from one `up --expose`, each serving its check path under the
    branch's name through its own Caddy, and one `destroy` removes them all, routes
    included."""
    template = f"/tmp/up-{uuid.uuid4().hex[:8]}/{{branch}}"

    def fab(*words: str) -> dict[str, dict]:
        return fab_on_hosts(bed_hosts, tmp_path, *words, "--project", template, timeout=600)

    with contextlib.ExitStack() as caddies:
        for host in bed_hosts:
            caddies.enter_context(running_caddy(tmp_path / f"caddy-{host.name}", HOST_SITE_PORT,
                                                host.netns_path))
        up = fab("up", "--src", str(preview_src), "--port", "auto", "--check", "/hello/", "--expose",
                 "--host-template", "{branch}.preview.test")
        expected = ("running", 200, template.replace("{branch}", "main"), "start",
                    f"http://main.preview.test:{HOST_SITE_PORT}/")
        assert {host: (result["state"], result["http_status"], result["project"], result["step"], result["public_url"])
                for host, result in up.items()} == {host: expected for host in up}
        for host in bed_hosts:
            hello = through(HOST_SITE_PORT, "main.preview.test", address=host.address, path="/hello/")
            assert hello == (200, "v1"), (host.name, hello)  # HELLO_URLS' greeting
        gone = fab("destroy", "--branch", "main")
        assert all(result["removed"] is True and result["pid"] == up[host]["pid"]
                   for host, result in gone.items()), gone
        for host in bed_hosts:
            assert route_ids(host.netns_path) == [None]
            assert through(HOST_SITE_PORT, "main.preview.test", address=host.address) == (404, SITE_TEXT)
