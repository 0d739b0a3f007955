"""An instance's processes: its table (the `processes` setting, else the
project's Procfile, in foreman's and honcho's format), each process's port and
command line, and the variables of an env file as honcho reads `.env`.
"""

import os
import re

from .protocol import AgentError, WEB
from .state import open_regular

PROCFILE = "Procfile"
PROCESS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):[ \t]*(.+)$")
PORT_STEP = 100  # foreman's spacing of the processes' $PORT


class Process(object):
    """One process of an instance: its name, its command (None: web as
    fabserve's own runserver) and the port its $PORT holds."""

    __slots__ = ("name", "command", "port")

    def __init__(self, name, command, port):
        self.name, self.command, self.port = name, command, port

    def row(self):
        return [self.name, self.command, self.port]


def content_lines(text):
    """(number, line stripped) of each line of a Procfile's or an env file's
    `text` that is neither blank nor a `#` comment."""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def parse_procfile(text, where=PROCFILE):
    """(name, command) of each line of a Procfile's `text`, in order; blank lines
    and `#` comments skipped. AgentError naming the line that is neither, or a
    name given twice."""
    entries, seen = [], set()
    for number, stripped in content_lines(text):
        match = PROCFILE_LINE.match(stripped)
        if not match:
            raise AgentError(f"{where} line {number} is not `name: command` (names: letters, digits, _ and -)")
        name, command = match.group(1), match.group(2).strip()
        if name in seen:
            raise AgentError(f"{where} line {number} names process {name} a second time")
        seen.add(name)
        entries.append((name, command))
    return entries


def table_of(entries, port):
    """The instance's processes from (name, command) `entries`: web first (the
    entries' own, else fabserve's runserver) on `port`, then the others in
    order, the n-th on port + PORT_STEP * n."""
    commands = dict(entries)
    table = [Process(WEB, commands.get(WEB), port)]
    others = [(name, command) for name, command in entries if name != WEB]
    for index, (name, command) in enumerate(others, 1):
        table.append(Process(name, command, port + PORT_STEP * index))
    return table


def process_table(inst):
    """The table a start runs: the request's `processes` (a mapping), else the
    project's Procfile; None when there is neither, and nothing changes."""
    given = inst.req.processes
    if isinstance(given, dict) and given:
        for name, command in given.items():
            if not PROCESS_NAME.match(name) or not isinstance(command, str) or not command.strip():
                raise AgentError(f"processes: {name!r} must name a command (names: letters, digits, _ and -)")
        return table_of([(name, command.strip()) for name, command in given.items()], inst.port)
    path = os.path.join(inst.project, PROCFILE)
    try:
        with open_regular(path, PROCFILE) as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    entries = parse_procfile(text, path)
    if not entries:
        raise AgentError(f"{path} names no process: remove it, or give it `name: command` lines")
    return table_of(entries, inst.port)


def recorded_table(record):
    """The table an instance record (instance.json) holds from its last start, or None."""
    rows = (record or {}).get("processes")
    if not isinstance(rows, list):
        return None
    table = []
    for row in rows:
        if (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and PROCESS_NAME.match(row[0])
                and (row[1] is None or isinstance(row[1], str)) and isinstance(row[2], int)):
            table.append(Process(*row))
    return table or None


def selected(table, only):
    """The processes of `table` that `only` (names, or None: all) picks, in table order."""
    if not only:
        return list(table)
    names = [process.name for process in table]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise AgentError(f"no process {', '.join(unknown)} in this instance: it has {', '.join(names)}")
    return [process for process in table if process.name in only]


# The program the companion's /bin/sh runs: the command through a shell of its
# own (`sh -c`, as foreman and honcho run it), then its exit status as the log's
# last line, where status reads it once the process is gone (nothing of fabserve
# stays to wait for it). $0 is the process's name, $1 its command.
WRAPPER = ('/bin/sh -c "$1"; status=$?; '
           'echo "--- fabserve $(date \'+%Y-%m-%d %H:%M:%S\') $0 exited with status $status"; exit $status')
EXIT_LINE = re.compile(r"^--- fabserve [0-9-]+ [0-9:]+ ([A-Za-z0-9_-]+) exited with status ([0-9]+)$")


def command_argv(process):
    """The argv that runs `process`'s command (see WRAPPER)."""
    return ["/bin/sh", "-c", WRAPPER, process.name, process.command]


def exit_status(line, name):
    """The exit status a WRAPPER line says process `name` ended with (-N: killed
    by signal N, as the shell reports 128 + N), or None when `line` is not one."""
    match = EXIT_LINE.match(line)
    if not match or match.group(1) != name:
        return None
    status = int(match.group(2))
    return 128 - status if status > 128 else status


ENV_LINE = re.compile(r"^(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*)$")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


QUOTED = re.compile(r"""^(?:'([^']*)'|"((?:[^"\\]|\\.)*)")(?:[ \t]+#.*)?$""")


def env_value(text):
    """A value as honcho reads it: single quotes literal, double quotes with
    backslash escapes (either may be followed by a ` #` comment), else the text
    up to a ` #` comment, stripped. Never a shell."""
    quoted = QUOTED.match(text)
    if quoted:
        single, double = quoted.groups()
    elif len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # quotes within quotes: the outer ones go
        single, double = (text[1:-1], None) if text[0] == "'" else (None, text[1:-1])
    else:
        return re.split(r"[ \t]+#", text, 1)[0].strip()
    if single is not None:
        return single
    return re.sub(r"\\(.)", lambda match: ESCAPES.get(match.group(1), "\\" + match.group(1)), double)


def parse_env_file(text, where):
    """The KEY=VALUE pairs of an env file's `text`; AgentError naming a line
    that is neither a pair, blank nor a `#` comment."""
    pairs = {}
    for number, stripped in content_lines(text):
        match = ENV_LINE.match(stripped)
        if not match:
            raise AgentError(f"{where} line {number} is not KEY=VALUE")
        pairs[match.group(1)] = env_value(match.group(2).strip())
    return pairs


def env_file_pairs(inst):
    """The pairs of the request's env file (relative to the project), {} without one."""
    given = inst.req.env_file
    if not given:
        return {}
    path = os.path.join(inst.project, os.path.expanduser(given))
    try:
        with open_regular(path, "env file") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        raise AgentError(f"cannot read the env file {path}: {exc.strerror}; nothing was started")
    return parse_env_file(text, path)
