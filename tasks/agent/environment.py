"""The handler of setup: the project's virtualenv with its requirements
installed, only when they changed since the last setup on this host.

Each install goes into a new venv beside the old ones (.fabserve-venvs/<hash>),
and .venv, a relative symlink, is switched to it only once the install
succeeded: a failed install leaves the previous environment serving. The venv
before the switch is kept (a server started on it may still load from it);
older ones are removed.
"""

import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import time

from .protocol import AgentError, SETUP_GRACE, join, result_of
from .state import remove, sha256
from .logfiles import TAIL_LINES, tail_text
from .launch import named_python
from .manage import run_ended

VENVS = ".fabserve-venvs"  # the venvs setup made, in the project
LINK = ".venv"  # what start and manage run with: a relative symlink to one of them
VENV_NAME = re.compile(r"^[0-9a-f]{12}$")  # a venv's name: its requirements' hash, cut
# Where uv lives when it is not on the PATH of a non-interactive SSH command: its installer's places.
UV_PLACES = ("~/.local/bin/uv", "~/.cargo/bin/uv")
# A requirements line's comment: `#` at the start or after whitespace, as pip reads it.
COMMENT = re.compile(r"(^|\s)#.*$")


def included(line):
    """The file a requirements line names with -r, -c, --requirement or
    --constraint, as written; None for any other line."""
    words = COMMENT.sub("", line).split()
    if not words:
        return None
    first = words[0]
    for option in ("--requirement", "--constraint"):
        if first == option:
            return words[1] if len(words) > 1 else None
        if first.startswith(option + "="):
            return first[len(option) + 1:]
    for option in ("-r", "-c"):
        if first == option:
            return words[1] if len(words) > 1 else None
        if first.startswith(option) and not first.startswith("--"):
            return first[len(option):]
    return None


def logical_lines(text):
    """The lines of a requirements file as pip reads them: a line ending in a
    backslash goes on on the next one."""
    return re.sub(r"\\\r?\n", "", text).splitlines()


def requirements_digest(path, shown, interpreter):
    """The hex SHA-256 of the requirements file at `path` (`shown`: as the user
    named it), of every file it includes with -r or -c, recursively (each
    relative to the file that names it; a URL is hashed as written), and of the
    `interpreter`, words saying which and its version. AgentError when one is missing."""
    digest = sha256()
    for word in interpreter:
        digest.update(f"{len(word)}:{word}\0".encode())
    seen = set()

    def visit(path, name, by):
        real = os.path.realpath(path)
        if real in seen:  # a file included twice, or including itself
            return
        seen.add(real)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise AgentError(f"requirements file {name}{by}: {exc.strerror}")
        digest.update(f"{len(name)}:{name}\0{len(data)}:".encode() + data)
        for line in logical_lines(data.decode("utf-8", "replace")):
            named = included(line)
            if named and "://" not in named:
                visit(os.path.join(os.path.dirname(path), os.path.expanduser(named)), named, f" (named in {name})")

    visit(path, shown, "")
    return digest.hexdigest()


def current_venv(project_dir):
    """The name of the venv in VENVS that .venv links to; None when there is no
    .venv. AgentError for a .venv fabserve did not make: it is never touched."""
    link = os.path.join(project_dir, LINK)
    try:
        info = os.lstat(link)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(link)
        parent, name = os.path.split(target)
        if parent == VENVS and VENV_NAME.match(name):
            return name
        kind = f"a symlink to {target}"
    else:
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a file"
    raise AgentError(f"{link} is not fabserve's ({kind}): remove it, or name the interpreter to install "
                     f"into with --python")


def venvs_dir(project_dir):
    """VENVS in the project, made if missing; only a real directory of this user."""
    path = os.path.join(project_dir, VENVS)
    try:
        os.mkdir(path, 0o755)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise AgentError(f"refusing {path}: not a directory of this user")
    return path


def remove_venv(path):
    """Remove a venv setup made (a planted symlink goes as a link, never followed)."""
    if os.path.islink(path) or not os.path.isdir(path):
        remove(path)
    else:
        shutil.rmtree(path)


def switch(project_dir, name):
    """Point .venv at VENVS/name in one step: a new symlink renamed over it, so
    no reader ever finds .venv missing."""
    link = os.path.join(project_dir, LINK)
    temporary = f"{link}.tmp{os.getpid()}"
    remove(temporary)
    os.symlink(os.path.join(VENVS, name), temporary)
    os.replace(temporary, link)


def prune(venvs, keep):
    """Remove the venvs in `venvs` but those named in `keep`."""
    for name in sorted(os.listdir(venvs)):
        if VENV_NAME.match(name) and name not in keep:
            remove_venv(os.path.join(venvs, name))


def find_uv():
    """uv's path when the host has it (PATH, then UV_PLACES), else None."""
    for path in (shutil.which("uv"),) + tuple(os.path.expanduser(place) for place in UV_PLACES):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class Steps(object):
    """The commands of one setup: run in the project, within one bound for them all."""

    def __init__(self, cwd, limit):
        self.cwd, self.limit = cwd, limit
        self.deadline = time.time() + limit
        self.uv = find_uv()  # the installer: uv when the host has it, else venv and pip

    def run(self, argv, what):
        """Run one command to its end, stdin /dev/null; its last bytes of output.
        AgentError (with `output_tail`) when it failed or ran past the bound; Gone
        when the client went away (the command was ended)."""
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", UV_PYTHON_DOWNLOADS="never")
        kept, why, code, escaped = run_ended(argv, self.cwd, env, self.deadline, None, SETUP_GRACE)
        if why == "gone":
            raise Gone()
        tail = tail_text(kept, TAIL_LINES)
        left = f"pids {' '.join(map(str, escaped))} had left its process group and were ended" if escaped else ""
        if why:
            raise AgentError(join(f"{what} did not end within {self.limit:g}s; it was ended", left), output_tail=tail)
        # Debian's venv without python3-venv says so across a line break.
        if code and b"ensurepip is not available" in b" ".join(kept.split()):
            raise AgentError(f"{argv[0]} cannot make a virtualenv: ensurepip is not available; install Debian's "
                             f"python3-venv package (or put uv on the host)", output_tail=tail)
        if code:
            raise AgentError(join(f"{what} exited with status {code}", left), output_tail=tail)
        return kept

    def version_of(self, python):
        """What `python` says of its version (sys.version), for the hash."""
        said = self.run([python, "-c", "import sys; print(sys.version)"], f"{python} -c 'import sys'")
        return said.decode("utf-8", "replace").strip()

    def install(self, python, requirements, shown):
        """Install `requirements` into `python`'s environment with uv, else pip."""
        if self.uv:
            argv = [self.uv, "pip", "install", "--python", python, "-r", requirements]
        else:
            argv = [python, "-m", "pip", "install", "--no-input", "-r", requirements]
        self.run(argv, f"installing {shown} with {'uv' if self.uv else 'pip'}")

    def venv(self, base, target):
        """A new venv at `target` of the interpreter `base`, with uv, else venv."""
        if self.uv:
            self.run([self.uv, "venv", "--python", base, target], "uv venv")
        else:
            self.run([base, "-m", "venv", target], f"{base} -m venv")


class Gone(Exception):
    """The client went away mid-setup: what this setup made is removed, nothing reported."""


def do_setup(project):
    """Make the project's venv and install its requirements into it, or into
    --python's interpreter; nothing when the hash says they are installed."""
    req = project.req
    if not os.path.isdir(project.dir):
        raise AgentError(f"project directory {project.dir} does not exist")
    requirements = os.path.join(project.dir, os.path.expanduser(req.requirements))
    if not os.path.isfile(requirements):
        raise AgentError(f"requirements file {req.requirements} not found in {project.dir}")
    started = time.time()
    steps = Steps(project.dir, req.setup_timeout)
    record = project.record()
    done = record.get("setup") if isinstance(record.get("setup"), dict) else {}
    try:
        if req.python:
            python, venv, digest, changed = in_place(steps, named_python(project.dir, req.python), requirements,
                                                     req.requirements, done)
        else:
            python, venv, digest, changed = in_venv(steps, project.dir, requirements, req.requirements)
    except Gone:
        return None
    fields = dict(ok=True, changed=changed, state=None, project=project.dir, port=None, state_dir=None,
                  managed=None, expires_at=None, expires_in=None, idle_expires_at=None, python=python, venv=venv)
    if not changed:
        # The installer the last setup of these requirements used, when the record says.
        installer = done.get("installer") if done.get("hash") == digest else None
        return result_of(installer=installer, message="requirements unchanged", **fields)
    installer = "uv" if steps.uv else "pip"
    record["setup"] = {"hash": digest, "venv": venv, "python": python, "installer": installer,
                       "requirements": req.requirements}
    project.save(record)
    return result_of(installer=installer, message=f"installed {req.requirements} with {installer} into "
                                                  f"{venv or python} in {time.time() - started:.1f}s", **fields)


def in_place(steps, python, requirements, shown, done):
    """--python: install into that interpreter's environment unless the record
    says these requirements went into it. (python, venv None, hash, changed)"""
    digest = requirements_digest(requirements, shown, ("python", python, steps.version_of(python)))
    if done.get("hash") == digest:
        return python, None, digest, False
    steps.install(python, requirements, shown)
    return python, None, digest, True


def in_venv(steps, project_dir, requirements, shown):
    """The project's venv of these requirements: the current one when its name
    is their hash, else a new one made and .venv switched to it. (python, venv, hash, changed)"""
    current = current_venv(project_dir)  # refuses a .venv that is not fabserve's
    base = sys.executable
    if not base:
        raise AgentError("this interpreter cannot name its own path (sys.executable): pass --python")
    digest = requirements_digest(requirements, shown, ("venv", base, sys.version))
    name = digest[:12]
    python = os.path.join(project_dir, LINK, "bin", "python")
    # A venv becomes current only once its install succeeded: one named by this hash is complete.
    if current == name and os.access(python, os.X_OK):
        return python, f"{VENVS}/{name}", digest, False
    venvs = venvs_dir(project_dir)
    # Hosts that share the project directory (an NFS home) each hold their own project
    # lock: this one keeps them from building the same venv at once.
    fd = os.open(os.path.join(venvs, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        current = current_venv(project_dir)  # another host may have switched it meanwhile
        if current == name and os.access(python, os.X_OK):
            return python, f"{VENVS}/{name}", digest, False
        built(steps, venvs, name, base, requirements, shown)
        switch(project_dir, name)
        prune(venvs, {name, current})
    finally:
        os.close(fd)
    return python, f"{VENVS}/{name}", digest, True


def built(steps, venvs, name, base, requirements, shown):
    """A new venv `venvs`/name of `base` with the requirements installed; on any
    failure it is removed again, and .venv, untouched, still names the previous one."""
    target = os.path.join(venvs, name)
    if os.path.lexists(target):  # an older venv of the same requirements, or one left half-built
        remove_venv(target)
    try:
        steps.venv(base, target)
        steps.install(os.path.join(target, "bin", "python"), requirements, shown)
    except AgentError as exc:
        remove_venv(target)
        raise AgentError(join(str(exc), f"{LINK} left as it was"), **exc.extra)
    except BaseException:
        remove_venv(target)
        raise
