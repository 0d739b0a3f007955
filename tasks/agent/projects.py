"""One project directory on this host and fabserve's own record of it: what
sync wrote there and whether sync created the directory, what setup installed,
the branch and commit last sent. The record lives in the user's state
directory, never in the project, so nothing the project's tree holds can
forge or overwrite it.
"""

import json
import os
import re

from .protocol import AgentError
from .identity import given_path
from .state import check_levels, lock_dir, read_state, remove, sha256, write_atomic

RECORD = "project.json"  # the record's file in the project's state directory


def project_name(project):
    """A directory name unique per resolved project path, readable by humans."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(project)).strip("._") or "project"
    return f"{slug[:40]}-{sha256(project.encode()).hexdigest()[:10]}"


class Project(object):
    """A project directory (which may not exist yet: sync creates it) and its record."""

    def __init__(self, host, req):
        self.host, self.req = host, req
        self.given = given_path(req.project)
        self.dir = os.path.realpath(self.given)
        self.state_dir = os.path.join(host.dir, "projects", project_name(self.dir))
        self.record_path = os.path.join(self.state_dir, RECORD)

    def lock(self):
        """Serialise sync, setup and destroy of this project across agents."""
        return lock_dir(self.host.base, self.state_dir)

    def record(self):
        """The record (a dict; empty when there is none yet)."""
        if not os.path.lexists(self.record_path):
            return {}
        check_levels(self.host.base, self.state_dir)
        try:
            record = json.loads(read_state(self.record_path, "project record"))
        except ValueError:
            raise AgentError(f"project record {self.record_path} is unreadable; destroy the project to start over")
        return record if isinstance(record, dict) else {}

    def save(self, record):
        write_atomic(self.record_path, json.dumps(record, sort_keys=True))

    def source(self):
        """(branch, commit) of the tree sync last sent here; None for each it did not record."""
        try:
            record = self.record()
        except (AgentError, OSError):
            return None, None
        return tuple(value if isinstance(value, str) else None
                     for value in (record.get("branch"), record.get("commit")))

    def forget(self):
        """Remove the record and the project's state directory (destroy)."""
        for name in (RECORD, "lock"):
            remove(os.path.join(self.state_dir, name))
        for directory in (self.state_dir, os.path.dirname(self.state_dir)):  # `projects`, once it is empty
            try:
                os.rmdir(directory)
            except OSError:
                return
