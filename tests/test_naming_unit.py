"""{branch} and {sha} in --project: the slug of a branch, and the messages
when the tree cannot fill a placeholder."""

import pytest

from tasks.naming import expand, slug, templated
from tasks.settings import SETTINGS, UsageError


@pytest.mark.parametrize("branch, expected", [
    ("main", "main"),
    ("feature/login-form", "feature-login-form"),
    ("fix: the ünïcode bug", "fix-the-n-code-bug"),
    ("../../etc", "etc"),
    ("..", None),
    ("-rf", "rf"),
    (".hidden", "hidden"),
    ("release_1.2", "release_1.2"),
    ("a" * 80, "a" * 63),
    ("x" + "/" * 70 + "y", "x-y"),
])
def test_a_branch_becomes_one_safe_path_component(branch, expected):
    if expected is None:
        with pytest.raises(UsageError, match="leaves nothing to name a directory with"):
            slug(branch)
    else:
        assert slug(branch) == expected


def test_placeholders_are_filled_from_the_facts_asked_only_when_needed():
    asked = []

    def facts():
        asked.append(1)
        return "feature/x", "0123456789abcdef0123456789abcdef01234567"

    assert expand("/srv/previews/site", facts, ".") == "/srv/previews/site" and asked == []
    assert expand("/srv/previews/{branch}", facts, ".") == "/srv/previews/feature-x"
    assert expand("/srv/{branch}/{sha}", facts, ".") == "/srv/feature-x/0123456789ab"
    assert templated("/srv/{branch}") and not templated("/srv/site") and not templated(None)


def test_an_unknown_placeholder_or_one_the_tree_cannot_fill_is_a_usage_error():
    with pytest.raises(UsageError, match=r"not \{tag\}"):
        expand("/srv/{tag}", lambda: ("main", "abc"), ".")
    with pytest.raises(UsageError, match=r"uses \{branch\}, but /src is on no git branch .*--branch NAME"):
        expand("/srv/{branch}", lambda: (None, "abc"), "/src")
    with pytest.raises(UsageError, match=r"uses \{sha\}, but /src is not a git work tree"):
        expand("/srv/{sha}", lambda: ("main", None), "/src")


def test_every_task_that_fills_in_a_branch_takes_the_branch_flag_its_error_names():
    """A CI checkout's detached HEAD has no branch: wherever {branch} is filled in,
    --branch NAME must be there to give, as the error above says."""
    verbs_of = {setting.name: set(setting.verbs) for setting in SETTINGS}
    assert verbs_of["project"] | verbs_of["host_template"] <= verbs_of["branch"]
