"""CI step outputs: the lines a started preview writes for a GitHub Actions job's
next steps, the file they go to, and none for a start that failed."""

from tasks import outputs


def test_the_lines_name_the_public_url_when_exposed_else_the_servers():
    result = {"ok": True, "host": "web1", "url": "http://127.0.0.1:8004/", "port": 8004,
              "public_url": "https://pr-4.preview.example.com/", "expires_at": "2026-12-08T10:00:00Z"}
    assert outputs.output_lines(result) == ["url=https://pr-4.preview.example.com/", "host=web1", "port=8004",
                                            "expires_at=2026-12-08T10:00:00Z"]
    assert outputs.output_lines(dict(result, public_url=None, expires_at=None))[::3] == [
        "url=http://127.0.0.1:8004/", "expires_at="]


def test_the_file_is_the_flags_else_githubs_with_ci_output_only(monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "job"))
    assert outputs.output_file(str(tmp_path / "mine"), False) == tmp_path / "mine"
    assert outputs.output_file(None, True) == tmp_path / "job"
    assert outputs.output_file(None, False) is None
    monkeypatch.delenv("GITHUB_OUTPUT")
    assert outputs.output_file(None, True) is None  # not in a GitHub Actions job: nothing to write


def test_lines_are_appended_and_a_failed_start_writes_none(tmp_path):
    path = tmp_path / "out"
    path.write_text("earlier=1\n")
    outputs.write_outputs(path, {"ok": False, "host": "web1", "url": None, "port": None})
    outputs.write_outputs(path, {"ok": True, "host": "web1", "url": "http://127.0.0.1:8000/", "port": 8000})
    assert path.read_text().splitlines() == ["earlier=1", "url=http://127.0.0.1:8000/", "host=web1", "port=8000",
                                             "expires_at="]
