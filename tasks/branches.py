"""prune's --keep-branches list: read once on this machine (a file, or stdin
for `-`) and sent in the request as branch names.

A list is one branch a line, or what `git ls-remote --heads` prints
(`SHA<TAB>refs/heads/NAME`), so a scheduled CI job can pipe the remote's
branches in as they are.
"""

import sys
import threading
from pathlib import Path
from typing import Dict, List

HEADS = "refs/heads/"

_lock = threading.Lock()
_read: Dict[str, List[str]] = {}


def branch_names(text: str) -> List[str]:
    """The branch names of a list, in order, each once: a line's last
    whitespace-separated word, without `refs/heads/`; blank lines and `#`
    comments skipped, and other refs (`refs/tags/...`, `HEAD`) of ls-remote's
    output too."""
    names: List[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        ref = words[-1]
        if len(words) > 1 or ref.startswith("refs/"):  # ls-remote's SHA and ref: heads only
            if not ref.startswith(HEADS):
                continue
            ref = ref[len(HEADS):]
        if ref and ref not in names:
            names.append(ref)
    return names


def keep_branches(source: str) -> List[str]:
    """The branch names of `source`, a file or `-` for stdin; read once per run
    whatever the number of hosts (stdin can be read only once). OSError when
    the file cannot be read."""
    with _lock:
        if source not in _read:
            text = sys.stdin.read() if source == "-" else Path(source).expanduser().read_text(encoding="utf-8")
            _read[source] = branch_names(text)
        return _read[source]
