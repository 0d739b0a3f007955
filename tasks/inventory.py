"""Host inventories in Ansible's YAML schema, and turning -H names into hosts.

A file holds groups (`all` and any other top-level key); each group may have
`hosts` (name -> vars), `vars` and `children` (name -> group). Variables merge
from the outermost group to the innermost (children over parents, siblings of
one depth by name, as Ansible does), then the host's own vars on top. A
fabserve setting is a variable of its own name or of that name prefixed
`fabserve_` (settings.INVENTORY_PREFIX), which Ansible reads without a warning.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

import yaml

from .settings import INVENTORY_PREFIX, PER_HOST


class InventoryError(Exception):
    """A malformed inventory or an unknown name: exit 2, before any connection."""


@dataclass
class Host:
    """One target: how to reach it and the settings it brings along."""

    name: str
    connect: Dict[str, Any]
    settings: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    vars: Dict[str, Any] = field(default_factory=dict)
    hosts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    children: Set[str] = field(default_factory=set)


class Inventory:
    def __init__(self, groups: Dict[str, Group], source: str) -> None:
        self.groups = groups
        self.source = source
        self.depth = self._depths()

    @classmethod
    def parse(cls, text: str, source: str) -> "Inventory":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InventoryError(f"{where}: invalid YAML: {problem}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InventoryError(f"{source}: the top level must map group names to groups")
        groups: Dict[str, Group] = {"all": Group()}
        for name, body in data.items():
            _add_group(groups, str(name), body, source)
        # Top-level groups other than `all` are its children, as in Ansible.
        groups["all"].children |= {name for name in data if name != "all"}
        return cls(groups, source)

    @classmethod
    def load(cls, path: Path) -> "Inventory":
        try:
            text = path.read_text()
        except OSError as exc:
            raise InventoryError(f"cannot read inventory {path}: {exc.strerror}") from None
        return cls.parse(text, str(path))

    def _depths(self) -> Dict[str, int]:
        """Longest distance of each group from `all`, so children merge after parents."""
        depth = {"all": 0}
        frontier = ["all"]
        for _ in range(len(self.groups) + 1):
            following = []
            for parent in frontier:
                for child in self.groups[parent].children:
                    if depth.get(child, -1) < depth[parent] + 1:
                        depth[child] = depth[parent] + 1
                        following.append(child)
            if not following:
                return depth
            frontier = following
        raise InventoryError(f"{self.source}: groups contain each other in a cycle")

    def host_names(self) -> List[str]:
        return sorted({host for group in self.groups.values() for host in group.hosts})

    def members(self, group: str) -> List[str]:
        """Hosts of a group and of all groups below it, in file order."""
        seen: List[str] = []
        pending, visited = [group], set()
        while pending:
            name = pending.pop(0)
            if name in visited:
                continue
            visited.add(name)
            seen.extend(host for host in self.groups[name].hosts if host not in seen)
            pending.extend(sorted(self.groups[name].children))
        return seen

    def host(self, name: str) -> Host:
        containing = [group for group, body in self.groups.items() if name in body.hosts]
        chain = set(containing) | {group for group in self.groups
                                   if self._descendants(group) & set(containing)}
        merged: Dict[str, Any] = {}
        for group in sorted(chain | {"all"}, key=lambda g: (self.depth.get(g, 0), g)):
            merged.update(self.groups[group].vars)
        for group in sorted(containing, key=lambda g: (self.depth.get(g, 0), g)):
            merged.update(self.groups[group].hosts[name])
        return host_from_vars(name, merged, self.source)

    def _descendants(self, group: str) -> Set[str]:
        found: Set[str] = set()
        pending = list(self.groups[group].children)
        while pending:
            child = pending.pop()
            if child not in found:
                found.add(child)
                pending.extend(self.groups[child].children)
        return found


def _mapping(value: Any, what: str, source: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{source}: {what} must be a mapping, not {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def _add_group(groups: Dict[str, Group], name: str, body: Any, source: str) -> None:
    body = _mapping(body, f"group {name!r}", source)
    unknown = set(body) - {"hosts", "vars", "children"}
    if unknown:
        raise InventoryError(f"{source}: group {name!r} has unknown keys {sorted(unknown)}; "
                             f"expected hosts, vars, children")
    group = groups.setdefault(name, Group())
    group.vars.update(_mapping(body.get("vars"), f"vars of group {name!r}", source))
    for host, host_vars in _mapping(body.get("hosts"), f"hosts of group {name!r}", source).items():
        group.hosts.setdefault(host, {}).update(_mapping(host_vars, f"vars of host {host!r}", source))
    for child, child_body in _mapping(body.get("children"), f"children of group {name!r}", source).items():
        group.children.add(child)
        _add_group(groups, child, child_body, source)


def host_from_vars(name: str, merged: Dict[str, Any], source: str) -> Host:
    connect: Dict[str, Any] = {"host": str(merged.get("ansible_host") or name)}
    if merged.get("ansible_user") is not None:
        connect["user"] = str(merged["ansible_user"])
    if merged.get("ansible_port") is not None:
        try:
            connect["port"] = int(merged["ansible_port"])
        except (TypeError, ValueError):
            raise InventoryError(f"{source}: host {name!r}: ansible_port must be a number, "
                                 f"not {merged['ansible_port']!r}") from None
    key = merged.get("ansible_ssh_private_key_file")
    if key is not None:
        connect["connect_kwargs"] = {"key_filename": [str(Path(str(key)).expanduser())]}
    settings: Dict[str, Any] = {}
    for setting in PER_HOST:
        # Kept under the spelling given, for messages. To Ansible each spelling is
        # its own variable, merged with its precedence; the prefixed one wins
        # wherever it is set, as `{{ fabserve_port | default(port) }}` reads them.
        for variable in (INVENTORY_PREFIX + setting, setting):
            if variable in merged:
                settings[variable] = merged[variable]
                break
    return Host(name=name, connect=connect, settings=settings)


def looks_like_a_host(name: str, ssh_hosts: Iterable[str]) -> bool:
    """Names outside the inventory are hosts only if they say so: user@, :port, a
    dotted name or address, localhost, or an ssh_config Host entry. Anything else
    is most likely a mistyped group, and connecting to it would only hang in DNS."""
    return ("@" in name or ":" in name or "." in name or name == "localhost"
            or name in set(ssh_hosts))


def expand(names: Iterable[str], inventory: Optional[Inventory], ssh_hosts: Iterable[str]) -> List[Host]:
    """-H words to hosts: groups expand to their members, `all` to every inventory
    host, inventory hosts bring their vars, other names pass through; duplicates dropped."""
    hosts: List[Host] = []
    seen: Set[str] = set()
    ssh_hosts = set(ssh_hosts)
    known_hosts = set(inventory.host_names()) if inventory else set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if inventory and name in inventory.groups:
            picked = [inventory.host(member) for member in inventory.members(name)]
        elif name in known_hosts:
            picked = [inventory.host(name)]
        elif looks_like_a_host(name, ssh_hosts):
            picked = [Host(name=name, connect={"host": name})]
        else:
            where = f" in {inventory.source}" if inventory else " (no inventory file)"
            raise InventoryError(f"unknown host or group {name!r}{where}; a host outside the inventory "
                                 f"needs user@, a :port, a dotted name or an ssh_config entry")
        for host in picked:
            if host.name not in seen:
                seen.add(host.name)
                hosts.append(host)
    return hosts
