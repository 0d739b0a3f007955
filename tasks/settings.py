"""fabserve's settings: the value parsers, the one table of settings, and the
agent request built from merged values.

Every setting is declared once, in SETTINGS: its default, its parser, the tasks
that take it as a flag, whether an inventory may set it per host and whether it
travels to the agent. How flags, inventory and Fabric's config sources merge
into values is the client's (tasks/config.py). docs/options.md's table
is checked against SETTINGS by tests/test_options_unit.py.

This module also runs on Ansible targets: the fabserve.django collection ships
it beside the agent (plugins/module_utils/settings.py), and its module checks
its options with these parsers and builds its request with `request`. So it
imports only the standard library and the agent, and keeps to Python 3.6 like
the agent (no dataclasses, no str.isascii); tests/test_collection_unit.py checks.
"""

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Set, Tuple, Union

from .agent.protocol import (AUTO, DEFAULT_PORT, DEFAULT_PORT_RANGE, HOST_VERBS, INSTANCE_VERBS, PORT_DEFAULTED,
                             STARTS, VERBS, port_range)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SETTINGS_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: Every task: the agent's verbs (protocol.VERBS), and the client's own: tunnel,
#: and up, which runs the verbs sync, setup, manage and start in turn.
TASKS = VERBS + ("tunnel", "up")
#: The tasks that take start's flags.
STARTING = STARTS + ("up",)
#: The tasks that name one server instance by its port.
NAMING = INSTANCE_VERBS + ("tunnel", "up")
#: The tasks that take --project.
PROJECT_TASKS = tuple(name for name in TASKS if name not in HOST_VERBS)


class UsageError(Exception):
    """A bad option, caught before anything connects (exit 2)."""


class Invalid(ValueError):
    """What is wrong with a value, e.g. "must be ..., not 'x'"; the caller names
    the setting and where it was given."""


def shown(value: Any) -> str:
    """`value` for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def ascii_text(value: Any) -> bool:
    """Whether `value` is a string of ASCII characters only (str.isascii, which
    Python 3.6 on a target lacks)."""
    return isinstance(value, str) and all(ord(char) < 128 for char in value)


def text_of(value: Any, what: str) -> str:
    """`value` as a string that encodes to UTF-8 (the request is JSON), else Invalid."""
    if not isinstance(value, str):
        raise Invalid(f"must be {what}, not {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes from argv that are not UTF-8, as surrogate escapes
        raw = value.encode("utf-8", "surrogateescape")
        raise Invalid(f"must be valid UTF-8, not {shown(raw)}") from None
    return value


def whole(value: Any) -> Optional[int]:
    """A whole number given as one (YAML's 8000) or in ASCII digits, else None.

    str.isdigit alone also takes "²" and other digits int() refuses; past 18
    digits a number is out of every range, and int() refuses very long ones.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if ascii_text(value) and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def parse_port(value: Any) -> Union[int, str]:
    """A port number, or `auto`: the agent chooses a free one from port_range."""
    if isinstance(value, str) and value.strip() == AUTO:
        return AUTO
    port = whole(value.strip() if isinstance(value, str) else value)
    if port is None or not 1 <= port <= 65535:
        raise Invalid(f"must be a number from 1 to 65535, not {shown(value)}")
    return port


def parse_port_range(value: Any) -> str:
    try:
        low, high = port_range(text_of(value, "a port range LOW-HIGH"))
    except ValueError as exc:
        raise Invalid(f"{exc}, not {shown(value)}") from None
    return f"{low}-{high}"


def parse_addr(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(text_of(value, "an IPv4 or IPv6 address")))
    except ValueError:
        raise Invalid(f"must be an IPv4 or IPv6 address, not {shown(value)}") from None


def parse_seconds(value: Any) -> float:
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif ascii_text(value):  # float() also reads other scripts' digits
        try:
            seconds = float(value)
        except ValueError:
            pass
    if seconds is None:
        raise Invalid(f"must be a number of seconds, not {shown(value)}")
    if not 0 < seconds <= 86400:  # also false for NaN
        raise Invalid(f"must be between 0 and 86400 seconds, not {shown(value)}")
    return seconds


DURATION = re.compile(r"^([0-9]{1,9})([smhd]?)$")
UNIT_SECONDS = {"": 1, "S": 1, "M": 60, "H": 3600, "D": 86400}
TTL_MAX = 366 * 86400  # a year: longer is no lifetime for a development server


def with_unit(value: Any, pattern: "re.Pattern[str]", units: Mapping[str, int], expected: str) -> int:
    """A whole number as given, or text `pattern` matches as digits and a unit
    (a key of `units`, upper case), times that unit; else Invalid: `expected`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = pattern.match(value.strip()) if ascii_text(value) else None
    if not found:
        raise Invalid(f"{expected}, not {shown(value)}")
    return int(found.group(1)) * units[found.group(2).upper()]


def parse_duration(value: Any) -> int:
    """Whole seconds of `30m`, `2h`, `1d`, `3s` or a bare number of seconds."""
    seconds = with_unit(value, DURATION, UNIT_SECONDS,
                        "must be a duration such as 30m, 2h or 1d (a bare number is seconds)")
    if not 0 < seconds <= TTL_MAX:
        raise Invalid(f"must be more than 0 seconds and at most 366d, not {shown(value)}")
    return seconds


SIZE = re.compile(r"^([0-9]{1,15})([KMG]?)$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
LOG_MIN = 4096  # below a few lines' worth a cut would keep next to nothing


def parse_size(value: Any) -> int:
    """Bytes of a byte count or of `512K`, `50M`, `1G` (binary units)."""
    size = with_unit(value, SIZE, SIZE_UNITS, "must be a size in bytes, or with K, M or G, such as 50M")
    if size < LOG_MIN:
        raise Invalid(f"must be at least {LOG_MIN} bytes (4K), not {shown(value)}")
    return size


def parse_path(value: Any) -> str:
    text = text_of(value, "a path")
    if not text or "\0" in text or "\n" in text:
        raise Invalid(f"must be a path without NUL bytes or newlines, not {shown(value)}")
    return text


def parse_src(value: Any) -> Path:
    """A local directory: the tree sync sends."""
    text = text_of(value, "a local directory")
    path = Path(text).expanduser() if text and "\0" not in text else None
    if path is None or not path.is_dir():
        raise Invalid(f"must be an existing local directory, not {shown(value)}")
    return path


def parse_agent_python(value: Any) -> str:
    # It reaches the command line as a quoted word, which csh and tcsh cannot
    # take with a newline in it, and in which they expand `!` even inside quotes.
    text = text_of(value, "an interpreter")
    if not text or any(char in text for char in "!\n\r\0"):
        raise Invalid(f"must be an interpreter without '!', newlines or NUL bytes, not {shown(value)}")
    return text


def parse_settings_module(value: Any) -> Optional[str]:
    if value is not None and not (isinstance(value, str) and SETTINGS_MODULE.fullmatch(value)):
        raise Invalid(f"must be a dotted module name, not {shown(value)}")
    return value


def env_words(text: str) -> Dict[str, str]:
    """`env` given as text, such as FABRIC_FABSERVE_ENV: KEY=VALUE words split with shell rules."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise Invalid(f"cannot be split into KEY=VALUE words ({exc}): {shown(text)}") from None
    return key_values(words, lambda word: Invalid(f"must be KEY=VALUE words, not {shown(word)}"))


def key_values(words: Iterable[str], refusal: Callable[[str], Exception]) -> Dict[str, str]:
    """KEY=VALUE words as a mapping; `refusal(word)` is raised for a word without `=`."""
    pairs: Dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise refusal(word)
        pairs[key] = value
    return pairs


def parse_env(env: Any) -> Dict[str, str]:
    if isinstance(env, str):
        env = env_words(env)
    if not isinstance(env, Mapping):
        raise Invalid(f"must be a mapping of variable names to values, not {shown(env)}")
    checked: Dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise Invalid(f"names an environment variable that is not valid: {shown(key)}")
        if isinstance(value, (Mapping, list, tuple)) or value is None:
            raise Invalid(f"must give {key} a text value, not {shown(value)}")
        text = text_of(str(value), "text")
        if "\0" in text:
            raise Invalid(f"gives environment variable {key} a NUL byte")
        checked[key] = text
    return checked


def parse_lines(value: Any) -> int:
    lines = whole(value)
    if lines is None or lines < 0:
        raise Invalid(f"must be a whole number, not {shown(value)}")
    return lines


def parse_concurrency(value: Any) -> int:
    limit = whole(value.strip() if isinstance(value, str) else value)
    if limit is None or limit < 1:
        raise Invalid(f"must be a whole number of at least 1, not {shown(value)}")
    return limit


def parse_switch(value: Any) -> bool:
    # Invoke's rule for booleans from the environment: anything but "0" or "" is on.
    if value is None or isinstance(value, (bool, int)):
        return bool(value)
    if isinstance(value, str):
        return value not in ("0", "")
    raise Invalid(f"must be true or false, not {shown(value)}")


def parse_inventory(value: Any) -> Optional[Path]:
    if not value:
        return None
    if not isinstance(value, str):
        raise Invalid(f"must be a path, not {shown(value)}")
    return Path(value).expanduser()


def parse_check(value: Any) -> str:
    # It reaches the server as the request line's target: a space or a control
    # character there would make another request, or none.
    text = text_of(value, "a path")
    if not text.startswith("/") or any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in text):
        raise Invalid(f"must be a path starting with / without spaces or control characters, not {shown(value)}")
    return text


def parse_manage_args(value: Any) -> List[str]:
    """The manage.py command as argv words, split with shell rules: it travels
    as a list and never meets a shell."""
    text = text_of(value, "a manage.py command")
    try:
        words = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise Invalid(f"cannot be split into words ({exc}): {shown(value)}") from None
    if not words:
        raise Invalid(f"must name a manage.py command, not {shown(value)}")
    if any("\0" in word for word in words):
        raise Invalid("must not hold NUL bytes")
    return words


PROCESS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a Procfile's process names, as foreman and honcho take them


def parse_process_name(value: Any) -> str:
    text = text_of(value, "a process name")
    if not PROCESS_NAME.fullmatch(text):
        raise Invalid(f"must be a process name of letters, digits, _ and -, not {shown(value)}")
    return text


def parse_only(value: Any) -> List[str]:
    """Process names, given as `web,worker` or as a list."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise Invalid(f"must name processes, as web,worker, not {shown(value)}")
    return [parse_process_name(name.strip() if isinstance(name, str) else name) for name in names]


def parse_processes(value: Any) -> Dict[str, str]:
    """A mapping of process names to the commands that run them (a Procfile as
    YAML); empty: none given, the project's Procfile counts."""
    if not isinstance(value, Mapping):
        raise Invalid(f"must be a mapping of process names to commands, not {shown(value)}")
    table: Dict[str, str] = {}
    for name, command in value.items():
        name = parse_process_name(name)
        text = text_of(command, f"the command of process {name}")
        if not text.strip() or "\0" in text or "\n" in text:
            raise Invalid(f"must give process {name} a one-line command, not {shown(command)}")
        table[name] = text.strip()
    return table


HOST_TEMPLATE = re.compile(r"^[A-Za-z0-9.{}-]{1,253}$")


def parse_host_template(value: Any) -> str:
    text = text_of(value, "a host name template")
    if not HOST_TEMPLATE.fullmatch(text):
        raise Invalid(f"must be a host name, with {{branch}}, {{sha}} or {{port}} in it if need be, not {shown(value)}")
    return text


def parse_basic_auth(value: Any) -> str:
    text = text_of(value, "USER:HASH")
    user, sep, hashed = text.partition(":")
    if not sep or not user or not hashed.startswith("$2") or any(char.isspace() for char in text):
        raise Invalid(f"must be USER:HASH with a bcrypt hash (caddy hash-password), not {shown(value)}")
    return text


def parse_caddy_admin(value: Any) -> str:
    text = text_of(value, "HOST:PORT")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in host:
        raise Invalid(f"must be HOST:PORT, such as localhost:2019, not {shown(value)}")
    return text


def parse_local_port(value: Any) -> int:
    port = whole(value.strip() if isinstance(value, str) else value)
    if port is None or not 0 <= port <= 65535:
        raise Invalid(f"must be a number from 0 (one the OS chooses) to 65535, not {shown(value)}")
    return port


def parse_command(value: Any) -> str:
    text = text_of(value, "a command")
    if not text.strip() or "\0" in text:
        raise Invalid(f"must be a command without NUL bytes, not {shown(value)}")
    return text


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`parse` for a setting whose unset value (None) stands for a default elsewhere."""
    return lambda value: None if value is None else parse(value)


def dashed(flag: str) -> str:
    """A flag's name as invoke spells it on the command line: `local_port` is --local-port."""
    return flag.replace("_", "-")


class Setting(NamedTuple):
    """One fabserve setting: its default, how its value is checked, and where it may be given.
    (A NamedTuple rather than a frozen dataclass, which Python 3.6 lacks.)"""

    name: str
    default: Any
    parse: Callable[[Any], Any]  # the checked value, or Invalid
    help: str  # the flag's help; `{default}` is filled in
    verbs: Tuple[str, ...] = ()  # tasks that take it as a flag
    flag: str = ""  # the flag's name where it is not the setting's
    per_host: bool = False  # an inventory group or host may set it
    request: bool = False  # it travels to the agent
    config: bool = True  # the `fabserve` config section may set it
    repeatable: bool = False  # the flag may be given several times
    positional: bool = False  # the flag's value may also be given without the flag
    placeholder: str = ""  # the value --help shows for a repeatable flag (invoke shows none)

    @property
    def flag_name(self) -> str:
        return self.flag or self.name

    def check(self, value: Any, origin: Optional["Origin"] = None) -> Any:
        """`value` through the parser; UsageError naming the setting and where it was given."""
        try:
            return self.parse(value)
        except Invalid as exc:
            label, where = origin or (f"--{dashed(self.flag_name)}" if self.verbs else f"fabserve.{self.name}", "")
            raise UsageError(f"{label} {exc}{where}") from None


SETTINGS: Tuple[Setting, ...] = (
    Setting("project", None, parse_path,
            "Django project directory (holding manage.py) on the target; "
            "default: fabserve.project; locally, the bundled example in fabserve's checkout, "
            "the current directory (holding manage.py) when installed",
            verbs=PROJECT_TASKS, per_host=True, request=True),
    Setting("port", DEFAULT_PORT, parse_port,
            "port runserver listens on, or auto: a free one from port_range (start's default {default}); "
            "with --project it names the instance, and without it the other verbs act on the project's one instance",
            verbs=NAMING, per_host=True, request=True),
    # Not given, it travels as null: the agent then uses the address recorded at
    # start, else 127.0.0.1, so a plain status or restart finds `--addr 127.0.0.2`.
    Setting("addr", None, optional(parse_addr),
            "IP address runserver binds to (default: the one it was started with, else 127.0.0.1)",
            verbs=STARTING + ("status",), per_host=True, request=True),
    Setting("python", None, optional(parse_path),
            "interpreter on the target, relative paths from the project "
            "(default: the project's .venv or venv, else python3)",
            verbs=STARTING + ("manage", "setup"), per_host=True, request=True),
    Setting("settings", None, parse_settings_module, "Django settings module, passed as --settings to runserver or the command",
            verbs=STARTING + ("manage",), per_host=True, request=True),
    Setting("env", {}, parse_env, "KEY=VALUE set in the server's (or the command's) environment (repeatable)",
            verbs=STARTING + ("manage",), per_host=True, request=True, repeatable=True, placeholder="KEY=VALUE"),
    Setting("env_file", None, optional(parse_path),
            "file of KEY=VALUE lines, relative to the project and read on the target, set in the environment of "
            "every process (--env wins)",
            verbs=STARTING + ("manage",), per_host=True, request=True),
    # A mapping by default, as env: config files merge a mapping into it.
    Setting("processes", {}, parse_processes,
            "the processes to run, a mapping of names to commands as a Procfile gives them (default: the "
            "project's Procfile on the target; neither: runserver alone)",
            per_host=True, request=True),
    Setting("only", None, optional(parse_only),
            "with a Procfile: act on these processes only, as web,worker (default: all)",
            verbs=STARTING + ("stop",), request=True, config=False),
    Setting("process", "web", parse_process_name, "with a Procfile: the process whose log to show (default {default})",
            verbs=("logs",), request=True, config=False),
    Setting("expose", False, parse_switch,
            "publish the server through the host's Caddy (admin API at caddy_admin) at the host name "
            "--host-template gives, with DJANGO_ALLOWED_HOSTS and CSRF_TRUSTED_ORIGINS set for it",
            verbs=STARTING, per_host=True, request=True),
    Setting("host_template", None, optional(parse_host_template),
            "the public host name of an exposed instance: {{branch}}, {{sha}} and {{port}} are filled in, "
            "e.g. {{branch}}.preview.example.com",
            verbs=STARTING, per_host=True, request=True),
    Setting("basic_auth", None, optional(parse_basic_auth),
            "USER:HASH (a bcrypt hash, as `caddy hash-password` prints it) that an exposed instance asks for",
            verbs=STARTING, per_host=True, request=True),
    Setting("github_output", None, optional(parse_path),
            "file to append url=, host=, port= and expires_at= lines to for a CI job's next steps",
            verbs=STARTING, config=False),
    Setting("ci_output", False, parse_switch, "write those lines to the file $GITHUB_OUTPUT names, when it is set",
            verbs=STARTING, config=False),
    Setting("caddy_admin", "localhost:2019", parse_caddy_admin, "where Caddy's admin API answers on the target",
            per_host=True, request=True),
    Setting("noreload", False, parse_switch, "run without Django's autoreloader (a single process)",
            verbs=STARTING, per_host=True, request=True),
    Setting("start_timeout", 30, parse_seconds,
            "seconds to wait for the port to answer (default {default})",
            verbs=STARTING, flag="timeout", per_host=True, request=True),
    Setting("stop_timeout", 10, parse_seconds,
            "seconds between TERM and KILL (default {default})",
            verbs=("stop", "destroy", "prune"), flag="timeout", per_host=True, request=True),
    Setting("lines", 50, parse_lines, "how many of the last lines to show (default {default})",
            verbs=("logs",), per_host=True, request=True),
    Setting("follow", False, parse_switch, "keep printing lines as they are appended, until interrupted",
            verbs=("logs",), request=True, config=False),
    Setting("json", False, parse_switch, "print JSON on stdout and nothing else: one object per host (list: one per server)",
            verbs=TASKS),
    Setting("all", False, parse_switch, "also list stopped instances whose log is kept",
            verbs=("list",), request=True, config=False),
    Setting("ttl", None, optional(parse_duration),
            "stop the server after this long, e.g. 30m, 2h, 1d (default: never; a restart starts it anew; "
            "extend: from now)",
            verbs=STARTING + ("extend",), per_host=True, request=True),
    Setting("idle_ttl", None, optional(parse_duration),
            "stop the server once this long passed without a request (its log unwritten), e.g. 30m "
            "(default: never; extend: a new window from now)",
            verbs=STARTING + ("extend",), per_host=True, request=True),
    Setting("log_keep", 5, parse_lines, "how many previous runs' logs each start keeps (server.log.1 ...)",
            per_host=True, request=True),
    Setting("log_max", "50M", parse_size,
            "size above which a running server's log is cut to its newest part, at the next call",
            per_host=True, request=True),
    Setting("previous", False, parse_switch, "show the log of the run before the current one (server.log.1)",
            verbs=("logs",), request=True, config=False),
    Setting("branch", None, optional(parse_path),
            "the branch {{branch}} in --project and --host-template stands for, and that list shows (default: "
            "the current git branch of --src, the current directory; a CI checkout's detached HEAD has none)",
            verbs=PROJECT_TASKS),
    Setting("migrate", True, parse_switch, "run `manage.py migrate --noinput` before the start (--no-migrate: skip it)",
            verbs=("up",), config=False),
    Setting("keep_files", False, parse_switch,
            "keep the project directory and its files even where fabserve's sync created it",
            verbs=("destroy",), request=True, config=False),
    Setting("older_than", None, optional(parse_duration),
            "also prune instances whose last start is older than this, e.g. 7d, 12h (default: age alone prunes none)",
            verbs=("prune",), per_host=True, request=True),
    # Given as FILE or `-`; the client reads it once and sends its branch names
    # (tasks/branches.py), so the list never reaches the host's argv.
    Setting("keep_branches", None, optional(parse_path),
            "also prune instances whose branch is not in this file (- reads stdin): one branch a line, or "
            "`git ls-remote --heads` output; instances without a known branch are kept (default: no list)",
            verbs=("prune",), request=True, config=False),
    Setting("dry_run", False, parse_switch, "change nothing: list what would be pruned, and why",
            verbs=("prune",), request=True, config=False),
    Setting("src", ".", parse_src,
            "local directory whose tree sync sends: its git work tree's files (tracked, and untracked "
            "ones git does not ignore), or outside git every file but .git, .venv, __pycache__ and "
            "node_modules (default: the current directory)",
            verbs=("sync", "up")),
    Setting("requirements", "requirements.txt", parse_path,
            "requirements file setup installs, relative to the project (default {default}); "
            "a file it names with -r or -c counts as part of it",
            verbs=("setup", "up"), per_host=True, request=True),
    Setting("setup_timeout", 900, parse_seconds,
            "seconds making the virtualenv and installing may take before the install is ended (default {default})",
            verbs=("setup",), flag="timeout", per_host=True, request=True),
    Setting("agent_python", "python3", parse_agent_python, "interpreter that runs fabserve's agent on the target",
            per_host=True),
    Setting("state_dir", None, optional(parse_path),
            "where pidfiles and logs live on the target", per_host=True, request=True),
    Setting("inventory", None, parse_inventory,
            "inventory file for -H group and host names; default: inventory/hosts.yml here"),
    Setting("concurrency", 10, parse_concurrency, "hosts worked on at the same time"),
    Setting("strict_host_keys", False, parse_switch,
            "refuse hosts that are not in known_hosts, whatever ssh_config says (for CI)"),
    Setting("port_range", DEFAULT_PORT_RANGE, parse_port_range,
            "ports --port auto chooses from, LOW-HIGH", per_host=True, request=True),
    Setting("check", None, optional(parse_check),
            "path the agent GETs on the host once the port answers: start and restart wait for an "
            "answer below 500, status and tunnel fail otherwise; tunnel's first request goes there "
            "(default: no check; tunnel's first request: the path the instance was started with, else /)",
            verbs=STARTING + ("status", "tunnel"), per_host=True, request=True),
    Setting("args", None, optional(parse_manage_args),
            "the manage.py command and its arguments as one string, split with shell rules",
            verbs=("manage",), request=True, config=False, positional=True),
    Setting("manage_timeout", None, optional(parse_seconds),
            "seconds the command may run before its processes are ended (default: no limit)",
            verbs=("manage",), flag="timeout", per_host=True, request=True),
    Setting("local_port", 0, parse_local_port,
            "port the tunnel listens on at 127.0.0.1 (default {default}: one the OS chooses)",
            verbs=("tunnel",)),
    Setting("run", None, optional(parse_command),
            "command run through your shell once the tunnel answers, with FABSERVE_URL, FABSERVE_HOST "
            "and FABSERVE_PORT set; the tunnel closes when it ends and fab exits with its status",
            verbs=("tunnel",), config=False),
)
SETTING: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

#: The `fabserve` config section's defaults. `project: None` means the bundled
#: example project (or the current directory, installed: tasks/entrypoints.py)
#: when running locally, and is an error for a remote host (`request`).
DEFAULTS: Dict[str, Any] = {setting.name: setting.default for setting in SETTINGS if setting.config}
#: What an inventory may set per group or host; output format and the run's own
#: settings are the caller's.
PER_HOST: Tuple[str, ...] = tuple(setting.name for setting in SETTINGS if setting.per_host)
#: An inventory may also give each of them with this prefix (`fabserve_port`):
#: the spelling Ansible reads without a warning, as it reserves some bare names
#: (`port` is a play keyword) and warns about any variable using one.
INVENTORY_PREFIX = "fabserve_"


def inventory_setting(variable: str) -> Optional[str]:
    """The per-host setting an inventory variable gives (`port` or `fabserve_port`), else None."""
    name = variable[len(INVENTORY_PREFIX):] if variable.startswith(INVENTORY_PREFIX) else variable
    return name if name in PER_HOST else None


#: How a message names a given value, and where it was given (" (from FILE)", or "").
Origin = Tuple[str, str]


class Values(dict):
    """Merged settings (name -> value), and where each one that was given came
    from (`origin`). A plain dict subclass: Python 3.6's typing.Dict is not one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.origin: Dict[str, Origin] = {}
        #: Names whose config value is only the collection's registered default.
        self.defaulted: Set[str] = set()

    def give(self, name: str, value: Any, origin: Origin) -> None:
        self[name] = value
        self.origin[name] = origin
        self.defaulted.discard(name)

    def given(self, name: str) -> bool:
        """Whether setting `name` was given anywhere: a flag, the inventory or a config source."""
        return name in self.origin and name not in self.defaulted


def flags_of(verb: str) -> List[Setting]:
    """The settings that `verb`'s task takes as flags."""
    return [setting for setting in SETTINGS if verb in setting.verbs]


def helps(verb: str) -> Dict[str, str]:
    """Help texts of `verb`'s flags, for its @task."""
    return {setting.flag_name: setting.help.format(default=setting.default) for setting in flags_of(verb)}


def repeatable(verb: str) -> List[str]:
    """`verb`'s flags that may be given several times, for its @task."""
    return [setting.flag_name for setting in flags_of(verb) if setting.repeatable]


def placeholder(flag: str) -> str:
    """The --help placeholder of the flag named `flag` (as Python names it), "" if none."""
    return next((setting.placeholder for setting in SETTINGS if setting.flag_name == flag), "")


def positional(verb: str) -> List[str]:
    """`verb`'s flags whose value may also be given without the flag, for its @task."""
    return [setting.flag_name for setting in flags_of(verb) if setting.positional]


def checked(values: Mapping[str, Any], name: str) -> Any:
    """Setting `name` of merged `values`, through its parser."""
    return SETTING[name].check(values[name], origin_of(values, name))


def origin_of(values: Mapping[str, Any], name: str) -> Optional[Origin]:
    return getattr(values, "origin", {}).get(name)


def request(action: str, values: Mapping[str, Any], env_flags: Optional[Iterable[str]]) -> Dict[str, Any]:
    """The agent request for `action`, every value through its setting's parser; UsageError on bad input.

    `values` are merged settings, plus the action's own flag names (`timeout`)
    where they differ from the settings they set. A local run's default project
    is the caller's to fill in (tasks/entrypoints.py's local_project): a project
    given nowhere is one a remote host needs.
    """
    origin = dict(getattr(values, "origin", {}))
    port_given = values.given("port") if isinstance(values, Values) else "port" in values
    values = dict(values)
    for each in flags_of(action):  # --timeout sets start_timeout or stop_timeout, by verb
        if each.flag and values.get(each.flag) is not None:
            values[each.name] = values[each.flag]
            origin[each.name] = origin.get(each.flag, (f"--{each.flag}", ""))
    if values["project"] is None and action not in HOST_VERBS:
        raise UsageError("--project is required for a remote host (or set fabserve.project)")
    if env_flags:  # the configured mapping is checked on its own, so a message names the right source
        SETTING["env"].check(values["env"], origin.get("env"))
        origin["env"] = ("--env", "")
    values["env"] = env_with(values["env"], env_flags or ())
    req: Dict[str, Any] = {"action": action}
    for each in SETTINGS:
        if each.request:
            if each.name == "project" and action in HOST_VERBS:
                req[each.name] = None
                continue
            req[each.name] = each.check(values.get(each.name, each.default), origin.get(each.name))
    if not port_given and action in INSTANCE_VERBS + ("manage",) and action not in PORT_DEFAULTED:
        req["port"] = None
    return req


def env_with(config_env: Any, pairs: Iterable[str]) -> Any:
    """Config's env mapping updated by repeated --env KEY=VALUE flags (a config
    value that is no mapping is left for the parser to refuse)."""
    if isinstance(config_env, str):
        try:
            config_env = env_words(config_env)
        except Invalid:
            return config_env
    if not isinstance(config_env, Mapping):
        return config_env
    return {**config_env, **key_values(pairs, lambda pair: UsageError(f"--env takes KEY=VALUE, not {shown(pair)}"))}
