"""Host key checking the way OpenSSH does it, for Fabric connections.

Fabric 3 gives every connection paramiko's AutoAddPolicy and never reads
known_hosts, so any key, even a changed one, is accepted. `verified` puts the
checks back: keys are verified against the known_hosts files ssh_config names,
an unknown host is handled as StrictHostKeyChecking says (default accept-new),
and a changed key is always refused.
"""

import base64
import hashlib
import os
import shlex
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from fabric import Connection
from paramiko.client import MissingHostKeyPolicy, SSHClient
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey
from paramiko.pkey import PKey
from paramiko.ssh_exception import BadHostKeyException, SSHException

# OpenSSH's defaults for the two options.
USER_FILES = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
GLOBAL_FILES = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
MODES = {"yes": "yes", "true": "yes", "ask": "yes", "accept-new": "accept-new",
         "no": "no", "false": "no", "off": "no"}


class HostKeyError(Exception):
    """A host key was refused, or could not be recorded; the message is one line."""


@dataclass(frozen=True)
class Rules:
    """How to treat one host's key, from ssh_config and fabserve's setting."""

    mode: str                # "yes": refuse unknown hosts; "accept-new": record them; "no": check nothing
    why: str                 # what chose the mode, for messages
    known: Tuple[str, ...]   # known_hosts files to verify against, in order
    record: Optional[str]    # where accept-new appends a new key; None: nowhere
    hashed: bool             # HashKnownHosts: record `|1|salt|hash` instead of the name


def rules_for(ssh_config: Mapping[str, Any], strict: bool) -> Rules:
    """The Rules for a host's ssh_config values (paramiko's lowercase keys).

    `strict` (fabserve.strict_host_keys) means `yes` whatever ssh_config says.
    No StrictHostKeyChecking means accept-new, not OpenSSH's `ask`: fabserve never prompts.
    """
    setting = str(ssh_config.get("stricthostkeychecking", "accept-new")).lower()
    if setting not in MODES:
        raise HostKeyError(f"StrictHostKeyChecking {setting!r} is not one of yes, ask, accept-new, no")
    mode, why = MODES[setting], "StrictHostKeyChecking " + setting
    if strict:
        mode, why = "yes", "fabserve.strict_host_keys"
    if mode == "no":
        return Rules(mode, why, (), None, False)
    user = paths(ssh_config.get("userknownhostsfile", USER_FILES))
    known = tuple(path for path in user + paths(ssh_config.get("globalknownhostsfile", GLOBAL_FILES))
                  if path != os.devnull)
    record = user[0] if user and user[0] != os.devnull else None
    hashed = str(ssh_config.get("hashknownhosts", "no")).lower() == "yes"
    return Rules(mode, why, known, record, hashed)


def paths(value: str) -> List[str]:
    """A space-separated known_hosts option as paths; `none` names no file."""
    return [os.path.expanduser(word) for word in value.split() if word.lower() != "none"]


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH (and paramiko's SSHClient.connect) files a host's key under."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(blob: bytes) -> str:
    """A public key's fingerprint as OpenSSH prints it: SHA256, base64 without padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def describe(key: PKey) -> str:
    return f"{key.get_name()} {fingerprint(key.asbytes())}"


def unknown_message(host: str, port: int, offered: str, why: str, known_hosts: str) -> str:
    port_flag = f"-p {port} " if port != 22 else ""
    return (f"unknown host key for {known_hosts_name(host, port)} ({offered}), refused by {why}; "
            f"if that is the host's key, add it with: "
            f"ssh-keyscan {port_flag}{shlex.quote(host)} >> {shlex.quote(known_hosts)}")


def changed_message(name: str, offered: str, known_hosts: Optional[str]) -> str:
    where = " in " + known_hosts if known_hosts else ""
    file_flag = " -f " + shlex.quote(known_hosts) if known_hosts else ""
    return (f"host key for {name} has CHANGED: it offered {offered}, not the key{where}; refused. "
            f"If the change is expected, remove the old key with: ssh-keygen -R {shlex.quote(name)}{file_flag}")


def load(path: str, into: HostKeys) -> None:
    """Add one known_hosts file's entries to `into`.

    Line by line, skipping what paramiko cannot use (as OpenSSH skips what it does
    not understand): HostKeys.load gives up on the first @cert-authority line.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith(("#", "@")):
                continue
            try:
                entry = HostKeyEntry.from_line(line)
            except (InvalidHostKey, SSHException, ValueError):
                continue
            if entry is None:  # too few fields, or a key type paramiko lacks
                continue
            for name in entry.hostnames:
                into.add(name, entry.key.get_name(), entry.key)


def holder(files: Iterable[str], name: str) -> Optional[str]:
    """The first of `files` that holds a key for `name`."""
    for path in files:
        keys = HostKeys()
        if os.path.isfile(path):
            load(path, keys)
        if keys.lookup(name) is not None:
            return path
    return None


def record(path: str, line: str) -> None:
    """Append `line` to a known_hosts file, creating it (and its directory, 0700) if needed."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell():  # never glue our entry onto a last line without a newline
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode("utf-8"))


class UnknownHost(MissingHostKeyPolicy):
    """paramiko calls this only for a host none of the loaded files lists."""

    def __init__(self, rules: Rules, host: str, port: int) -> None:
        self.rules, self.host, self.port = rules, host, port

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        if self.rules.mode == "yes":
            where = self.rules.record or os.path.expanduser("~/.ssh/known_hosts")
            raise HostKeyError(unknown_message(self.host, self.port, describe(key), self.rules.why, where))
        if self.rules.record is None:
            return
        name = HostKeys.hash_host(hostname) if self.rules.hashed else hostname
        try:
            record(self.rules.record, f"{name} {key.get_name()} {key.get_base64()}\n")
        except OSError as exc:
            raise HostKeyError(f"cannot record the host key of {hostname} in {self.rules.record}: "
                               f"{exc.strerror or exc}") from None


def install(client: SSHClient, rules: Rules, host: str, port: int) -> None:
    """Set up `client` before it connects: known keys loaded, our policy for unknown ones."""
    if rules.mode == "no":
        return  # Fabric's AutoAddPolicy accepts any key and records nothing
    # Loaded into the client itself, so that paramiko also asks the server for the
    # key type it knows, and raises BadHostKeyException for a different key.
    known = client.get_host_keys()
    name = known_hosts_name(host, port)  # the only name paramiko looks this host up by
    for path in rules.known:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            for keytype, key in (parsed(path, (info.st_ino, info.st_mtime_ns, info.st_size)).lookup(name)
                                 or {}).items():
                known.add(name, keytype, key)
    client.set_missing_host_key_policy(UnknownHost(rules, host, port))


@lru_cache(maxsize=16)
def parsed(path: str, version: Tuple[int, int, int]) -> HostKeys:
    """A known_hosts file's keys, parsed once per process and `version` (inode,
    mtime, size) of the file: each host of a fan-out takes its own entries from
    it, where loading the whole file for each made the client's work grow with
    the square of the hosts."""
    keys = HostKeys()
    load(path, keys)
    return keys


@contextmanager
def verified(c: Connection, strict: bool) -> Iterator[None]:
    """Check the host key of `c`, and of every ProxyJump hop, when the body connects.

    Refusals raise HostKeyError before anything is authenticated or run.
    """
    hops: Dict[str, Tuple[str, Rules]] = {}
    hop: Any = c
    while isinstance(hop, Connection):  # a ProxyCommand gateway is a string: nothing to set up
        rules = rules_for(hop.ssh_config, strict)
        install(hop.client, rules, hop.host, hop.port)
        hops.setdefault(hop.host, (known_hosts_name(hop.host, hop.port), rules))
        hop = hop.gateway
    try:
        yield
    except BadHostKeyException as exc:
        name, rules = hops[exc.hostname]
        raise HostKeyError(changed_message(name, describe(exc.key), holder(rules.known, name))) from None
