"""The sync cases: `fab sync` of a 2,000-file tree into a directory that does not
exist on the host, against `rsync -a` over ssh and `tar c | ssh host tar x` of the
same tree (same ssh_config); then, after one file changed, `fab sync` again
against `rsync -a` again. bench/ratios.py compares them pair by pair.

The tree (2,000 files of 1 to 4 KB of text, in 20 x 10 nested directories) is
generated once per run, outside git, so every client ships the same files.
Before each repetition's first syncs the three destinations are removed on the
host (untimed; fabserve's also with `fab destroy`, which forgets its record).
"""

from __future__ import annotations

import atexit
import json
import random
import shlex
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from bench.layout import FAB, REPO
from bench.runner import Check, Runner, execute
from bench.samples import Sample

GROUP = "sync"
FILES = 2000
DIRS = (20, 10)  # top-level directories, and directories in each
WORDS = ("def", "return", "self", "import", "class", "value", "request", "model", "field", "None", "for", "in",
         "if", "else", "user", "name", "data", "list", "dict", "view", "url", "path", "template", "query")
DESTS = {"fabserve": "~/sync-fabserve", "rsync": "~/sync-rsync", "tar": "~/sync-tar"}
CHANGED = "d00/s0/f0000.py"  # the file the re-sync sends


@lru_cache(maxsize=1)
def tree() -> Path:
    """The tree, generated once per run: code-like text, as compressible as source files."""
    root = Path(tempfile.mkdtemp(prefix="fabserve-bench-sync-"))
    atexit.register(shutil.rmtree, root, True)
    chance = random.Random(21)
    for index in range(FILES):
        top, sub = index % DIRS[0], (index // DIRS[0]) % DIRS[1]
        path = root / f"d{top:02d}" / f"s{sub}" / f"f{index:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = chance.randint(1024, 4096)
        words: list[str] = []
        length = 0
        while length < size:
            word = chance.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        path.write_text(" ".join(words)[:size - 1] + "\n")
    return root


def sync_argv(runner: Runner, *words: str) -> list[str]:
    return [str(FAB), "-r", str(REPO), "-S", str(runner.bed.ssh_config), "-H", runner.host.alias, *words,
            "--project", DESTS["fabserve"]]


def files_sent(count: int) -> Check:
    def check(sample: Sample) -> str | None:
        try:
            sent = json.loads(sample.output.strip().splitlines()[-1])["files_sent"]
        except (ValueError, KeyError, IndexError):
            return "no sync result"
        return None if sent == count else f"{sent} files sent, not {count}"
    return check


def sync_cases(runner: Runner) -> None:
    """Remove the destinations (untimed), time the three first syncs, change one
    file, time the two re-syncs."""
    host, one, src = runner.host, [runner.host], tree()
    # destroy forgets fabserve's record; rm also takes a directory an earlier run left
    # whose record is gone (the bed's state is new each run, the accounts' homes are not).
    cleared = [execute(sync_argv(runner, "destroy", "--json")),
               execute(runner.ssh(host, "rm -rf " + " ".join(DESTS.values())))]
    for sample in cleared:
        if sample.rc != 0:
            runner.fail(runner.case("sync_first", "fab sync, 2,000 files, first", GROUP), "sync: clearing",
                        sample.output[-500:])
            return
    # The removals' writeback must not land on whichever first sync runs next.
    execute(["sync"])
    source = f"{src}/"
    runner.measure("sync_first", f"fab sync, {FILES:,} files, first", GROUP,
                   sync_argv(runner, "sync", "--src", str(src), "--json"), one, check=files_sent(FILES))
    runner.measure("rsync_first", f"rsync -a over ssh, {FILES:,} files, first", GROUP,
                   ["rsync", "-a", "-e", f"ssh -F {shlex.quote(str(runner.bed.ssh_config))}", source,
                    f"{host.alias}:{DESTS['rsync']}/"], one)
    runner.measure("tar_first", f"tar c | ssh host tar x, {FILES:,} files", GROUP,
                   ["sh", "-c", 'tar c -C "$1" . | ssh -F "$2" "$3" "mkdir -p $4 && tar x -C $4"', "sh", str(src),
                    str(runner.bed.ssh_config), host.alias, DESTS["tar"]], one)
    changed = src / CHANGED
    changed.write_text(changed.read_text() + f"# changed in rep {runner.rep_name()}\n")
    runner.measure("sync_one", "fab sync, one file changed", GROUP,
                   sync_argv(runner, "sync", "--src", str(src), "--json"), one, check=files_sent(1))
    runner.measure("rsync_one", "rsync -a over ssh, one file changed", GROUP,
                   ["rsync", "-a", "-e", f"ssh -F {shlex.quote(str(runner.bed.ssh_config))}", source,
                    f"{host.alias}:{DESTS['rsync']}/"], one)
