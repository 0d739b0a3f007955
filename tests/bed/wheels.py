"""Wheelhouses for setup's tests, so nothing is installed from the network: a
tiny hand-made package (a wheel is a zip with the package, METADATA, WHEEL and
RECORD) and Django's wheels, downloaded once per pin and kept in STATE_DIR."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .state import STATE_DIR, ensure_dir, state_lock

PROBE = "fabserve_probe"


def probe_wheel(directory: Path, version: str) -> Path:
    """A pure-Python wheel of PROBE at `version` in `directory`, readable by every account."""
    info = f"{PROBE}-{version}.dist-info"
    files = {f"{PROBE}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: fabserve-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    path = directory / f"{PROBE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    path.chmod(0o644)
    return path


def django_wheelhouse(pin: str) -> Path:
    """A directory in STATE_DIR every account can read holding the wheels of `pin`
    (e.g. Django==5.2.8) and its dependencies, fetched once through pip's configured
    index and kept across runs."""
    directory = STATE_DIR / f"wheels-{hashlib.sha256(pin.encode()).hexdigest()[:12]}"
    done = directory / ".complete"
    if done.exists():
        return directory
    with state_lock():
        if not done.exists():
            ensure_dir()
            shutil.rmtree(directory, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                            "--disable-pip-version-check", "--dest", str(directory), pin],
                           check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
            subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
            done.write_text("ok\n")
    return directory
