"""CI step outputs: where a started preview answers, as `name=value` lines
appended to GitHub Actions' `$GITHUB_OUTPUT` file, for the job's next steps
(`steps.<id>.outputs.url`), as PullPreview's action gives them."""

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

#: The outputs, in the order they are written.
OUTPUTS = ("url", "host", "port", "expires_at")


def output_lines(result: Dict[str, Any]) -> List[str]:
    """The outputs of one host's result: the public URL where it is exposed, else the server's."""
    values = {"url": result.get("public_url") or result.get("url"), "host": result.get("host"),
              "port": result.get("port"), "expires_at": result.get("expires_at")}
    return [f"{name}={'' if values[name] is None else values[name]}" for name in OUTPUTS]


def output_file(github_output: Optional[str], ci_output: bool) -> Optional[Path]:
    """Where to write: --github-output's file, else with --ci-output the one
    $GITHUB_OUTPUT names (None: not in a GitHub Actions job, or not asked)."""
    if github_output:
        return Path(github_output)
    named = os.environ.get("GITHUB_OUTPUT") if ci_output else None
    return Path(named) if named else None


def write_outputs(path: Path, result: Dict[str, Any]) -> None:
    """Append the outputs of a result that succeeded (a failed start has none)."""
    if not result.get("ok"):
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in output_lines(result)))
