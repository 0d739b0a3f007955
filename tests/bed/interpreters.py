"""The CPythons on this machine that a target may run fabserve's code under.

pyenv keeps them in root's home (mode 0700): for any other user the directory
holds nothing they can run, which is no error, so a test module may call this
at collection (the unit tier as `nobody` does, bed.unprivileged).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Where pyenv keeps this machine's CPythons.
PYENV_VERSIONS = Path("/root/.pyenv/versions")
#: The oldest Python a target may have: the agent's and the settings' floor.
OLDEST = (3, 6)


def target_interpreters(versions: Path = PYENV_VERSIONS) -> dict[str, str]:
    """/usr/bin/python3 and every pyenv CPython 3.6 or newer (x.y.z releases) that
    whoever runs the tests can execute, by version ("system" for the first)."""
    found = {"system": "/usr/bin/python3"}
    try:
        names = os.listdir(versions)
    except OSError:
        return found
    for version in sorted(names):
        python = versions / version / "bin" / "python3"
        release = re.fullmatch(r"(\d+)\.(\d+)\.\d+", version)
        if release and (int(release.group(1)), int(release.group(2))) >= OLDEST and os.access(python, os.X_OK):
            found[version] = str(python)
    return found
