"""The handler of destroy: stop every instance of a project, remove fabserve's
state of it, and remove the project directory itself only where sync created it.
"""

import os
import shutil
import stat

from .protocol import AgentError, STOPPED, join, result_of
from .identity import runservers
from .state import Instance, check_levels, instance_name
from .locate import project_instances
from .verbs import do_stop


def do_destroy(project):
    """Stop the project's servers, forget its instances and its record, and
    remove its directory when the record says sync created it (unless
    keep_files). Of what does not exist: ok, nothing changed."""
    host, req = project.host, project.req
    named = req.but(project=project.given)
    live, _ = project_instances(host, named, runservers())
    stopped = []
    for port in live:
        inst = Instance(host, named.but(port=port))
        fd = inst.lock()
        try:
            stopped += do_stop(inst)["pids"]
        finally:
            os.close(fd)
    forgotten = forget_instances(host, project.given)
    had_record, created, removed = clear_project(project, req.keep_files)
    if not (stopped or forgotten or had_record):
        return result_of(ok=True, changed=False, state=STOPPED, project=project.dir, port=None, removed=False,
                         message=f"nothing to destroy for {project.dir}")
    if removed:
        files = f"removed {project.dir}"
    elif created:
        files = f"kept {project.dir} (--keep-files)"
    elif os.path.isdir(project.dir):
        files = f"kept {project.dir}: fabserve's sync did not create it"
    else:
        files = ""
    pids = f"stopped pids {' '.join(map(str, stopped))}" if stopped else "no server was running"
    return result_of(ok=True, changed=True, state=STOPPED, project=project.dir, port=None, pids=stopped,
                     pid=stopped[0] if stopped else None, removed=removed,
                     message=join(pids, f"forgot {forgotten} instance{'s' if forgotten != 1 else ''}", files))


def clear_project(project, keep_files=False):
    """Forget the project's record and remove its directory where that record
    says sync created it (unless `keep_files`): (whether there was a record,
    whether sync created the directory, whether it was removed)."""
    record = project.record()
    created = record.get("created") is True and os.path.isdir(project.dir)
    removed = created and not keep_files
    if removed:
        remove_tree(project.dir)
    project.forget()
    return bool(record), created, removed


def forget_instances(host, given):
    """Remove the state directory of every instance of the project named `given`
    (its pidfile, record and logs); how many there were."""
    count = 0
    for name, port in host.instances():
        if name != instance_name(given, port):
            continue
        directory = os.path.join(host.dir, name)
        check_levels(host.base, directory)
        shutil.rmtree(directory)
        count += 1
    return count


def remove_tree(path):
    """Remove the project directory sync created: only a real directory of ours
    (rmtree itself never follows a symlink inside it)."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise AgentError(f"refusing to remove {path}: not a directory of this user")
    shutil.rmtree(path)
