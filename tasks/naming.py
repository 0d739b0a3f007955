"""Per-branch previews: `--project` may hold `{branch}` and `{sha}`, filled in
on the client from the git tree being shipped, so each branch gets its own
project directory, state and instances on a shared host.
"""

import re
from typing import Callable, Optional, Tuple

from .settings import UsageError, shown

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("branch", "sha")
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
SLUG_MAX = 63  # GitLab's CI_COMMIT_REF_SLUG length, and a DNS label's
SHA_LENGTH = 12

#: The branch and the commit (full hash) of the tree, either None when unknown.
Facts = Tuple[Optional[str], Optional[str]]


def slug(branch: str) -> str:
    """A branch name as one safe path component: each run of characters outside
    [A-Za-z0-9._-] becomes `-`, and leading dots and dashes go, so no branch
    can name `..`, a hidden directory or an option."""
    text = UNSAFE.sub("-", branch).lstrip(".-")[:SLUG_MAX].rstrip("-")
    if not text:
        raise UsageError(f"branch {shown(branch)} leaves nothing to name a directory with")
    return text


def templated(project: Optional[str]) -> bool:
    return isinstance(project, str) and PLACEHOLDER.search(project) is not None


def label(branch: str) -> str:
    """A branch name as one DNS label: lower case, each run of characters
    outside [a-z0-9] a `-`, none first or last, at most 63."""
    text = re.sub(r"[^a-z0-9]+", "-", branch.lower()).strip("-")[:SLUG_MAX].strip("-")
    if not text:
        raise UsageError(f"branch {shown(branch)} leaves nothing to name a host with")
    return text


def expand(project: str, facts: Callable[[], Facts], source: str, what: str = "--project",
           kept: Tuple[str, ...] = ()) -> str:
    """`project` (or the setting `what` names) with `{branch}` and `{sha}` filled
    in, the placeholders in `kept` left for the host to fill; `facts` is asked
    only when one is present; `source` names the tree in messages. UsageError
    for an unknown placeholder, or one the tree cannot fill. A host name
    (`--host-template`) gets the branch as a DNS label."""
    names = [name for name in PLACEHOLDER.findall(project) if name not in kept]
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    if unknown:
        known = " and ".join(f"{{{name}}}" for name in PLACEHOLDERS + kept)
        raise UsageError(f"{what} knows {known}, not {{{unknown[0]}}}")
    if not names:
        return project
    branch, commit = facts()
    if "branch" in names and not branch:
        raise UsageError(f"{what} uses {{branch}}, but {source} is on no git branch (a detached HEAD, "
                         f"or not a git work tree): give --branch NAME or set fabserve.branch")
    if "sha" in names and not commit:
        raise UsageError(f"{what} uses {{sha}}, but {source} is not a git work tree with a commit")
    name = label if what == "--host-template" else slug
    values = {"branch": name(branch) if branch else "", "sha": (commit or "")[:SHA_LENGTH]}
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), project)
