"""The documentation holds together: README.md is a front page of at most 200
lines, every relative link of it, CONTRIBUTING.md, bench/README.md and docs/
reaches an existing file and, with a #fragment, a heading there (as GitHub
makes anchors), and the blocks the front page repeats from docs/ are the same."""

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from helpers import REPO

FRONT_PAGE = REPO / "README.md"
#: The front page's limit: the rest is reference that belongs in docs/.
FRONT_PAGE_LINES = 200
PAGES = sorted([FRONT_PAGE, REPO / "CONTRIBUTING.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
# Link targets with a scheme lead off the repository; only relative ones are checked.
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose(text: str) -> str:
    """Markdown without its fenced blocks and code spans, where no link or heading lives."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation but - and
    _ dropped, each space a -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    """Every heading anchor of a Markdown file; a repeated one gets -1, -2, … as on GitHub."""
    seen: Dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> List[Tuple[Path, str, str]]:
    """(file it names, its #fragment or "", the link as written) for each relative link."""
    links = []
    for target in LINK.findall(prose(path.read_text())):
        if EXTERNAL.match(target):
            continue
        file, _, fragment = target.partition("#")
        links.append(((path.parent / file).resolve() if file else path, fragment, target))
    return links


def code_block(text: str, after: str, language: str) -> str:
    """The first fenced block of that language after a line of the text."""
    rest = f"\n{text}".split(f"\n{after}\n", 1)[1]
    return rest.split(f"```{language}\n", 1)[1].split("\n```", 1)[0]


def test_the_front_page_stays_within_its_lines():
    lines = FRONT_PAGE.read_text().splitlines()
    assert len(lines) <= FRONT_PAGE_LINES, f"README.md has {len(lines)} lines; move reference text into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(page):
    links = relative_links(page)
    broken = [written for file, _, written in links if not file.exists()]
    assert broken == [], f"{page.relative_to(REPO)} links to missing files"
    unanchored = [written for file, fragment, written in links
                  if fragment and file.suffix == ".md" and fragment not in anchors(file)]
    assert unanchored == [], f"{page.relative_to(REPO)} links to missing headings"


def test_every_docs_page_is_in_the_front_pages_index_and_links_back():
    index = {file for file, _, _ in relative_links(FRONT_PAGE)}
    for page in (REPO / "docs").glob("*.md"):
        assert page in index, page.name
        title, _, back = page.read_text().splitlines()[:3]
        assert title.startswith("# "), page.name
        assert "](../README.md" in back, page.name


def test_the_slugs_follow_githubs_rules():
    assert slug("Two commands (fresh Debian 12)") == "two-commands-fresh-debian-12"
    assert slug("`list` shows only this user's servers, and a chosen port is free") == \
        "list-shows-only-this-users-servers-and-a-chosen-port-is-free"
    assert slug("`--check`: an HTTP check on the host") == "--check-an-http-check-on-the-host"
    assert slug("Hosts with pam_namespace (a `/tmp` per user) work as any other") == \
        "hosts-with-pam_namespace-a-tmp-per-user-work-as-any-other"


def test_the_links_and_headings_of_code_are_not_read_as_markdown(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```sh\n# a comment\necho '[x](missing.md)'\n```\n\n"
                    "`[y](gone.md)` and [z](page.md#title), [w](#title), [v](https://example.com/)\n")
    assert anchors(page) == {"title"}
    assert relative_links(page) == [(page, "title", "page.md#title"), (page, "title", "#title")]


def test_the_front_pages_commands_and_ci_job_are_those_of_their_pages():
    front = FRONT_PAGE.read_text()
    assert code_block(front, "## Install", "sh") == \
        code_block((REPO / "docs" / "install.md").read_text(), "## As a package", "sh")
    assert code_block(front, "## Use", "sh") == code_block((REPO / "docs" / "usage.md").read_text(), "# Use", "sh")
    assert code_block(front, "## Use in CI", "yaml") == \
        code_block((REPO / "docs" / "ci.md").read_text(), "## GitHub Actions", "yaml")
