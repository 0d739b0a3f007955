"""Scratch file systems of the kinds a test must cover (root only): a tmpfs, and
ext4 or btrfs made on a loop device over a sparse image, each mounted under the
bed's state directory and gone again after use."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import BedUnavailable
from .run import run_checked
from .state import STATE_DIR, ensure_dir

# How each kind is made; bin/setup --test installs the tools (e2fsprogs, btrfs-progs).
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}
KINDS = ("tmpfs", *MKFS)
IMAGE_SIZE = 160 << 20  # btrfs needs about 114 MiB at least; the image is sparse, so it costs what is written


@contextlib.contextmanager
def scratch_filesystem(kind: str) -> Iterator[Path]:
    """A fresh, empty file system of `kind` (one of KINDS), mounted; its mount point."""
    if os.geteuid() != 0:
        raise BedUnavailable(f"making a {kind} file system needs root")
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=ensure_dir(STATE_DIR)))
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    try:
        if kind == "tmpfs":
            source = ["-t", "tmpfs", "-o", "size=64m", "fabserve-test"]
        else:
            if shutil.which(MKFS[kind][0]) is None:
                raise BedUnavailable(f"{MKFS[kind][0]} is missing (bin/setup --test installs it)")
            image = work / "image"
            with open(image, "wb") as handle:
                handle.truncate(IMAGE_SIZE)
            run_checked([*MKFS[kind], image])
            source = ["-o", "loop", str(image)]  # the loop device goes with the umount
        mounted = subprocess.run(["mount", *source, str(mountpoint)], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            raise BedUnavailable(f"cannot mount a {kind} file system: {mounted.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            run_checked(["umount", mountpoint])
    finally:
        shutil.rmtree(work)
